"""The node's one UDP media port: every participant's STUN, DTLS, SRTP and SRTCP share it.

Datagrams are read with ``recv_into`` a preallocated cffi buffer (SRTP is then unprotected in
place in that same memory), classified by their first byte (RFC 7983) and handed to the peer
that owns the source address.  STUN checks find their peer by ICE username instead, which is how
an address becomes known.  The reader drains at most ``budget`` datagrams per wakeup so that
signaling and timers still run under load.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Any, Protocol

from pylibsrtp._binding import ffi

from sfu import clock
from sfu.counters import DropReason, MediaCounters
from sfu.transport.ice import BindingCheck, IceCredentials, authenticate, binding_success, parse_check

log = logging.getLogger(__name__)

Address = tuple[str, int]
BUFFER_SIZE = 2048
RECV_BUDGET = 256
#: one SRTP datagram in this many is timed for the forward-latency histogram
LATENCY_SAMPLE = 64
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class DatagramPeer(Protocol):
    """What the port needs of a participant's transport."""

    @property
    def ice(self) -> IceCredentials: ...

    @property
    def remote_ufrag(self) -> str | None: ...

    def on_ice_check(self, addr: Address, check: BindingCheck, now_ms: int) -> None: ...

    def on_dtls(self, data: bytes, now_ms: int) -> None: ...

    def on_srtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None: ...


class MediaPort:
    def __init__(self, host: str, port: int, counters: MediaCounters) -> None:
        self.host = host
        self.requested_port = port
        self.counters = counters
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_ufrag: dict[str, DatagramPeer] = {}
        self._by_addr: dict[Address, DatagramPeer] = {}
        self._cbuf = ffi.new("unsigned char[]", BUFFER_SIZE)
        self._view = memoryview(ffi.buffer(self._cbuf))
        self.send_errors = 0
        self._latency_countdown = LATENCY_SAMPLE

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
            except OSError:  # pragma: no cover - kernel limits
                pass
        sock.bind((self.host, self.requested_port))
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._sock is not None:
            self.requested_port = self.port  # reopening binds the same port again
        if self._sock is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
            except (ValueError, OSError):
                pass
            self._sock.close()
        self._sock = None

    @property
    def is_open(self) -> bool:
        return self._sock is not None and self._sock.fileno() >= 0

    @property
    def port(self) -> int:
        if self._sock is None:
            return self.requested_port
        return int(self._sock.getsockname()[1])

    # -- peers -----------------------------------------------------------------------------------
    def add_peer(self, peer: DatagramPeer) -> None:
        self._by_ufrag[peer.ice.ufrag] = peer

    def bind_address(self, addr: Address, peer: DatagramPeer) -> None:
        self._by_addr[addr] = peer

    def unbind_address(self, addr: Address, peer: DatagramPeer) -> None:
        if self._by_addr.get(addr) is peer:
            del self._by_addr[addr]

    def remove_peer(self, peer: DatagramPeer) -> None:
        if self._by_ufrag.get(peer.ice.ufrag) is peer:
            del self._by_ufrag[peer.ice.ufrag]
        for addr in [a for a, p in self._by_addr.items() if p is peer]:
            del self._by_addr[addr]

    @property
    def peer_count(self) -> int:
        return len(self._by_ufrag)

    # -- I/O -------------------------------------------------------------------------------------
    def sendto(self, data: bytes | memoryview, addr: Address) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(data, addr)
            return True
        except (BlockingIOError, InterruptedError):
            self.counters.drops[DropReason.SEND_FAILED] += 1
        except OSError as exc:
            self.send_errors += 1
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.warning("media send to %s failed: %s", addr, exc)
        return False

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        view = self._view
        cbuf = self._cbuf
        by_addr = self._by_addr
        counters = self.counters
        drops = counters.drops
        now_ms = clock.now_ms()
        sampled = self._latency_countdown
        for _ in range(RECV_BUDGET):
            try:
                n, addr = sock.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP-reported errors on some kernels
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    continue
                log.warning("media receive failed: %s", exc)
                break
            counters.datagrams_in += 1
            if n < 4:
                drops[DropReason.TOO_SHORT] += 1
                continue
            b0 = view[0]
            if 127 < b0 < 192:
                peer = by_addr.get(addr)
                if peer is None:
                    drops[DropReason.SRTP_UNKNOWN_ADDRESS] += 1
                    continue
                sampled -= 1
                if sampled:
                    peer.on_srtp(cbuf, view, n, now_ms)
                else:  # time one datagram in LATENCY_SAMPLE: receive to last send
                    sampled = LATENCY_SAMPLE
                    started = time.perf_counter()
                    peer.on_srtp(cbuf, view, n, now_ms)
                    counters.observe_latency(time.perf_counter() - started)
            elif b0 < 4:
                self._on_stun(bytes(view[:n]), addr, now_ms)
            elif 19 < b0 < 64:
                peer = by_addr.get(addr)
                if peer is None:
                    drops[DropReason.DTLS_UNKNOWN_ADDRESS] += 1
                    continue
                peer.on_dtls(bytes(view[:n]), now_ms)
            else:
                drops[DropReason.UNKNOWN_PROTOCOL] += 1
        self._latency_countdown = sampled

    def _on_stun(self, data: bytes, addr: Address, now_ms: int) -> None:
        drops = self.counters.drops
        check = parse_check(data)
        if isinstance(check, DropReason):
            drops[check] += 1
            return
        peer = self._by_ufrag.get(check.local_ufrag)
        if peer is None:
            drops[DropReason.STUN_UNKNOWN_USER] += 1
            return
        if not authenticate(check, peer.ice, peer.remote_ufrag):
            drops[DropReason.STUN_BAD_INTEGRITY] += 1
            return
        self.sendto(binding_success(check, addr, peer.ice), addr)
        peer.on_ice_check(addr, check, now_ms)
