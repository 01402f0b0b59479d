"""What the media port and a participant's transport know of each other, as protocols: the UDP
port (``udp.MediaPort``) and the ICE-TCP server (``tcp.TcpMediaServer``) hand packets to a
``DatagramPeer``; ``PeerTransport`` is one."""

from __future__ import annotations

from typing import Any, Protocol

from sfu.transport.ice import BindingCheck, IceCredentials

#: a UDP (host, port), or an ICE-TCP connection's pseudo-address (``tcp.is_tcp_address``)
Address = tuple[str, int]


class DatagramPeer(Protocol):
    """What the port needs of a participant's transport."""

    @property
    def ice(self) -> IceCredentials: ...

    @property
    def remote_ufrag(self) -> str | None: ...

    def on_ice_check(self, addr: Address, check: BindingCheck, now_ms: int) -> None: ...

    def on_dtls(self, data: bytes, now_ms: int) -> None: ...

    def on_srtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None: ...
