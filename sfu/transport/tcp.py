"""ICE-TCP (RFC 6544): the node's passive TCP candidate, frames as RFC 4571 (2-byte length).

Each accepted connection is one more "remote address" of the media port's demux: its address
is ``("tcp:<client ip>", <client port>)`` (never a UDP address), registered in the port's
``tcp_links`` while the connection is open.  A frame is classified like a datagram (RFC 7983):
a STUN Binding request with valid integrity binds a session to the connection exactly as it
binds a UDP address (``MediaPort.on_stun``); DTLS, SRTP and SRTCP then reach that session's
``PeerTransport``, which sends back through ``TcpLink.send_frame`` instead of the UDP port.

Bounds: ``max_connections`` in total and ``max_connections_per_ip`` per client address (more
are closed at once); a connection that is not bound to a session ``bind_timeout_s`` after it
opened (or no longer is: its session ended or moved) is closed; a frame of length 0 or over
``MAX_FRAME`` closes the connection; at most one partial frame is kept per connection; a
connection whose unsent bytes exceed ``send_buffer_bytes`` (a slow or stalled reader) gets no
more until it drains: its packets are dropped and counted (``DropReason.TCP_CONGESTED``), and
nobody else waits for it.

IPv6: on ``::`` the listening socket is dual-stack (``IPV6_V6ONLY`` off), on an IPv6 address
IPv6 only; a client's address is normalised (``mmsg.normalize_host``: a v4-mapped
``::ffff:a.b.c.d`` is ``a.b.c.d``), so the per-address cap and the session's address are the
same whichever socket family the connection came in on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pylibsrtp._binding import ffi

from sfu import clock
from sfu.counters import DropReason, MediaCounters
from sfu.transport.mmsg import SendRing, normalize_host
from sfu.transport.ports import Address, DatagramPeer

log = logging.getLogger(__name__)

#: the host part of a TCP connection's address starts with this
TCP_PREFIX = "tcp:"
#: the largest frame accepted (as the UDP port's receive buffer); 0 and larger close the connection
MAX_FRAME = 2048
SWEEP_S = 1.0
_LEN = struct.Struct("!H")


@dataclass(frozen=True)
class TcpLimits:
    max_connections: int = 8192
    max_connections_per_ip: int = 64
    bind_timeout_s: float = 5.0
    send_buffer_bytes: int = 131_072


class TcpLink(asyncio.Protocol):
    """One ICE-TCP connection."""

    def __init__(self, server: TcpMediaServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.remote: Address = ("0.0.0.0", 0)
        self.addr: Address = (TCP_PREFIX + "0.0.0.0", 0)
        self.opened_ms = clock.now_ms()
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        peer = t.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            try:
                host = normalize_host(str(peer[0]))
            except ValueError:  # pragma: no cover - the kernel hands out addresses
                host = str(peer[0])
            self.remote = (host, int(peer[1]))
        self.addr = (TCP_PREFIX + self.remote[0], self.remote[1])
        if not self._server.admit(self):
            self.closed = True
            t.abort()
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # the kernel's share of the bound too (no autotuning up to megabytes a connection)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._server.limits.send_buffer_bytes)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        t.set_write_buffer_limits(high=self._server.limits.send_buffer_bytes)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self._buf
        buf += data
        size = len(buf)
        pos = 0
        server = self._server
        port = server.port
        ring = port.out_ring
        ring.auto_flush = False  # forwarded media goes out in one batch after these frames
        try:
            while size - pos >= 2:
                n = (buf[pos] << 8) | buf[pos + 1]
                if n == 0 or n > MAX_FRAME:
                    port.counters.drops[DropReason.TCP_BAD_FRAME] += 1
                    self.close()
                    return
                end = pos + 2 + n
                if end > size:
                    break
                server.on_frame(self, bytes(buf[pos + 2 : end]))
                pos = end
                if self.closed:
                    return
            if pos:  # keep only the partial frame (a fresh buffer: a big read's capacity goes)
                self._buf = buf[pos:]
        finally:
            ring.auto_flush = True
            if ring.used:
                port.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def pause_writing(self) -> None:  # the transport's high-water mark: send_frame drops meanwhile
        pass

    def resume_writing(self) -> None:
        pass

    # -- sending ---------------------------------------------------------------------------------
    def send_frame(self, data: bytes | memoryview) -> bool:
        """Queue one framed packet; False (dropped and counted) when the connection is closed or
        holds more unsent bytes than its bound."""
        return self.send_framed(_LEN.pack(len(data)) + bytes(data))

    def send_framed(self, framed: bytes) -> bool:
        """As ``send_frame`` for bytes that already carry their length prefix."""
        transport = self._transport
        if self.closed or transport is None:
            return False
        if transport.get_write_buffer_size() > self._server.limits.send_buffer_bytes:
            self._server.port.counters.drops[DropReason.TCP_CONGESTED] += 1
            return False
        transport.write(framed)
        return True

    @property
    def queued(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        transport = self._transport
        return 0 if transport is None or self.closed else transport.get_write_buffer_size()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._forget()

    def _forget(self) -> None:
        self.closed = True
        self._buf = bytearray()
        self._server.forget(self)


class TcpPortHost(Protocol):
    """What the ICE-TCP server needs of the media port (``udp.MediaPort``): its counters, its send
    ring and batch flush, its address bindings and its STUN handling, shared with UDP."""

    counters: MediaCounters
    out_ring: SendRing
    tcp_links: dict[Address, TcpLink]

    def flush(self) -> int: ...

    def peer_at(self, addr: Address) -> DatagramPeer | None: ...

    def unbind_address(self, addr: Address, peer: DatagramPeer) -> None: ...

    def on_stun(self, data: bytes, addr: Address, now_ms: int, mapped: Address | None = None) -> None: ...


class TcpMediaServer:
    """The listening socket and its connections, feeding the media port's demux."""

    def __init__(self, port: TcpPortHost, host: str, tcp_port: int, limits: TcpLimits) -> None:
        self.port = port
        self.host = host
        self.requested_port = tcp_port
        self.limits = limits
        self.links: dict[Address, TcpLink] = port.tcp_links
        self._per_ip: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refused = 0  # connections closed at once (over a cap)
        self.timed_out = 0  # connections closed unbound
        # SRTP is unprotected in place here (one frame at a time: the loop is single-threaded)
        self._rx_cbuf: Any = ffi.new("unsigned char[]", MAX_FRAME + 64)
        self._rx_view = memoryview(ffi.buffer(self._rx_cbuf))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.host == "::":  # asyncio would set IPV6_V6ONLY: one dual-stack socket instead
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", self.requested_port))
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self._server = await loop.create_server(lambda: TcpLink(self), sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                lambda: TcpLink(self), self.host, self.requested_port, reuse_address=True, backlog=1024
            )
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        server, self._server = self._server, None
        if server is not None:
            self.requested_port = self.bound_port
            server.close()
        for link in list(self.links.values()):
            link.close()
        if server is not None:
            await server.wait_closed()

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self.links)

    @property
    def queued_bytes(self) -> int:
        """Bytes held for all connections (each at most ``send_buffer_bytes`` and one frame)."""
        return sum(link.queued for link in self.links.values())

    # -- connections -------------------------------------------------------------------------------
    def admit(self, link: TcpLink) -> bool:
        ip = link.remote[0]
        per_ip = self._per_ip.get(ip, 0)
        if len(self.links) >= self.limits.max_connections or per_ip >= self.limits.max_connections_per_ip:
            self.refused += 1
            return False
        old = self.links.get(link.addr)
        if old is not None:  # the same client address again: the old one is gone
            old.close()
            per_ip = self._per_ip.get(ip, 0)
        self.links[link.addr] = link
        self._per_ip[ip] = per_ip + 1
        return True

    def forget(self, link: TcpLink) -> None:
        if self.links.get(link.addr) is not link:
            return
        del self.links[link.addr]
        ip = link.remote[0]
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        peer = self.port.peer_at(link.addr)
        if peer is not None:
            self.port.unbind_address(link.addr, peer)

    def _sweep(self) -> None:
        """Close the connections that are not bound to a session past the bind timeout."""
        loop = self._loop
        if loop is None or self._server is None:
            return
        now = clock.now_ms()
        limit_ms = int(self.limits.bind_timeout_s * 1000)
        port = self.port
        for addr, link in list(self.links.items()):
            if now - link.opened_ms > limit_ms and port.peer_at(addr) is None:
                self.timed_out += 1
                link.close()
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    # -- demux -----------------------------------------------------------------------------------
    def on_frame(self, link: TcpLink, frame: bytes) -> None:
        """One frame from ``link``: as ``MediaPort._on_readable`` does with a datagram."""
        port = self.port
        counters = port.counters
        drops = counters.drops
        counters.datagrams_in += 1
        n = len(frame)
        if n < 4:
            drops[DropReason.TOO_SHORT] += 1
            return
        now_ms = clock.now_ms()
        b0 = frame[0]
        if 127 < b0 < 192:
            peer = port.peer_at(link.addr)
            if peer is None:
                drops[DropReason.SRTP_UNKNOWN_ADDRESS] += 1
                return
            self._rx_view[:n] = frame
            peer.on_srtp(self._rx_cbuf, self._rx_view, n, now_ms)
        elif b0 < 4:
            port.on_stun(frame, link.addr, now_ms, mapped=link.remote)
        elif 19 < b0 < 64:
            peer = port.peer_at(link.addr)
            if peer is None:
                drops[DropReason.DTLS_UNKNOWN_ADDRESS] += 1
                return
            peer.on_dtls(frame, now_ms)
        else:
            drops[DropReason.UNKNOWN_PROTOCOL] += 1


def is_tcp_address(addr: Address) -> bool:
    return addr[0].startswith(TCP_PREFIX)
