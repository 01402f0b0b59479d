"""The node's one UDP media port: every participant's STUN, DTLS, SRTP and SRTCP share it.

Datagrams are read in batches with ``recvmmsg`` into a ring of preallocated cffi slots (SRTP is
then unprotected in place in that same memory), classified by their first byte (RFC 7983) and
handed to the peer that owns the source address.  STUN checks find their peer by ICE username
instead, which is how an address becomes known.  The reader drains at most ``RECV_BUDGET``
datagrams per wakeup so that signaling and timers still run under load.

Outgoing RTP is batched too: peers write each protected packet into the next slot of the port's
``out_ring`` (``PeerTransport.forward_rtp``/``send_rtp``) and the port hands the whole ring to
``sendmmsg`` after each received batch, before the reader returns to the loop, when the ring is
full, and before any datagram sent with ``sendto`` (so RTCP, DTLS and STUN keep their order
relative to media).  Outside a reader wakeup a queued packet is sent at once.

IPv6: a port whose host is an IPv6 address is an ``AF_INET6`` socket, dual-stack for ``::``
(``IPV6_V6ONLY`` off: IPv4 peers arrive v4-mapped), IPv6 only otherwise.  Its reader
(``_on_readable6``) is the IPv4 one with the IPv6 key (``sfu.transport.mmsg``); addresses are
normalised (``::ffff:a.b.c.d`` is ``a.b.c.d``) before ICE, consent and the send path see them,
and ``sendto`` maps an IPv4 address back to its v4-mapped form.  An IPv4 port is unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

from sfu import clock
from sfu.counters import DropReason, MediaCounters
from sfu.transport.ice import (
    Keepalive,
    authenticate,
    binding_success,
    parse_check,
)
from sfu.transport.mmsg import (
    LEN_INDEX,
    LEN_STRIDE,
    RecvRing,
    SendRing,
    Sockaddr6Table,
    address_of_key,
    address_of_sockaddr6,
    gso_supported,
    key6_of_address,
    key_of_address,
)
from sfu.transport.pacer import PacingConfig
from sfu.transport.pacer_timer import PacingTimer
from sfu.transport.ports import Address, DatagramPeer
from sfu.transport.tcp import TcpLink, is_tcp_address

log = logging.getLogger(__name__)

BUFFER_SIZE = 2048
RECV_BUDGET = 256
#: datagrams per recvmmsg call (RECV_BUDGET is a multiple of it)
RECV_BATCH = 32
#: outgoing slots: a lane of SEND_LANE_DEPTH per destination and received batch, SEND_LANES
#: destinations before a mid-batch flush
SEND_LANES = 64
SEND_LANE_DEPTH = RECV_BATCH
#: an outgoing slot holds a packet of up to BUFFER_SIZE bytes plus any SRTP trailer
SEND_SLOT_SIZE = BUFFER_SIZE + 256
#: one SRTP datagram in this many is timed for the forward-latency histogram
LATENCY_SAMPLE = 64
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class MediaPort:
    def __init__(self, host: str, port: int, counters: MediaCounters, *, gso: bool = True) -> None:
        self.host = host
        #: AF_INET6 for an IPv6 host (``::``: dual-stack), else AF_INET
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.requested_port = port
        self.counters = counters
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_ufrag: dict[str, DatagramPeer] = {}
        self._by_addr: dict[Address, DatagramPeer] = {}
        self._by_key: dict[int, DatagramPeer] = {}
        #: open ICE-TCP connections by their address (``sfu.transport.tcp``): the same demux
        self.tcp_links: dict[Address, TcpLink] = {}
        #: the ICE-TCP port offered beside this one (set by whoever listens there); 0: none
        self.tcp_port = 0
        self._in_ring = RecvRing(RECV_BATCH, BUFFER_SIZE, family=self.family)
        #: where peers queue protected RTP; see the module docstring
        self.out_ring = SendRing(SEND_LANES, SEND_LANE_DEPTH, SEND_SLOT_SIZE, family=self.family)
        #: IPv6: the sockaddr_in6 each transport's send slots point at (``send_key``)
        self._sockaddrs: Sockaddr6Table | None = Sockaddr6Table() if self.family == socket.AF_INET6 else None
        #: send queued RTP with UDP GSO where the kernel has it (``out_ring.gso`` once open)
        self.gso_enabled = gso
        self.send_errors = 0
        self._latency_countdown = LATENCY_SAMPLE
        #: how subscriber transports that have a bandwidth estimate pace their packets
        #: (``sfu.transport.pacer``; the node sets it from its config), and the one timer that
        #: drains their queues
        self.pacing_config = PacingConfig()
        self.pacing = PacingTimer(self.out_ring, self.flush, self.pacing_config.tick_ms)

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        if self.family == socket.AF_INET6:  # dual-stack on ``::``, IPv6 only on an IPv6 address
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.host == "::" else 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
            except OSError:  # pragma: no cover - kernel limits
                pass
        sock.bind((self.host, self.requested_port))
        sock.setblocking(False)
        self.out_ring.gso = self.gso_enabled and gso_supported(sock)
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._on_readable6 if self.family == socket.AF_INET6 else self._on_readable)

    def set_pacing(self, config: PacingConfig) -> None:
        self.pacing_config = config
        self.pacing.tick_ms = config.tick_ms

    def close(self) -> None:
        self.pacing.close()
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
        key = self._key(addr)
        if key is not None:
            self._by_key[key] = peer

    def send_key(self, addr: Address) -> int:
        """What a send slot for ``addr`` holds (``SendRing``): 0 when this port cannot send
        there (an ICE-TCP connection's address; an IPv6 address on an IPv4 port).  Whoever takes
        one hands it back with ``release_send_key``."""
        table = self._sockaddrs
        if table is None:
            try:
                return key_of_address(addr[0], addr[1])
            except ValueError:
                return 0
        if is_tcp_address(addr):
            return 0
        return table.new_key(addr)

    def release_send_key(self, key: int) -> None:
        """Its holder is done with a ``send_key`` (its address changed, or it closed): an IPv6
        port frees the memory after the next send."""
        if self._sockaddrs is not None and key:
            self._sockaddrs.release(key)

    def peer_at(self, addr: Address) -> DatagramPeer | None:
        """The peer media from ``addr`` goes to, if any."""
        return self._by_addr.get(addr)

    def unbind_address(self, addr: Address, peer: DatagramPeer) -> None:
        if self._by_addr.get(addr) is peer:
            del self._by_addr[addr]
            key = self._key(addr)
            if key is not None and self._by_key.get(key) is peer:
                del self._by_key[key]

    def rename_peer(self, old_ufrag: str, peer: DatagramPeer) -> None:
        """The peer's ICE ufrag changed (ICE restart): checks reach it under the new one only."""
        if self._by_ufrag.get(old_ufrag) is peer:
            del self._by_ufrag[old_ufrag]
        self._by_ufrag[peer.ice.ufrag] = peer

    def remove_peer(self, peer: DatagramPeer) -> None:
        if self._by_ufrag.get(peer.ice.ufrag) is peer:
            del self._by_ufrag[peer.ice.ufrag]
        for addr in [a for a, p in self._by_addr.items() if p is peer]:
            self.unbind_address(addr, peer)

    @property
    def peer_count(self) -> int:
        return len(self._by_ufrag)

    def sessions_by_transport(self) -> dict[str, int]:
        """Peers with a selected address, by its transport (``udp`` or ``tcp``)."""
        counts = {"udp": 0, "tcp": 0}
        for peer in self._by_ufrag.values():
            addr = getattr(peer, "addr", None)
            if addr is not None:
                counts["tcp" if is_tcp_address(addr) else "udp"] += 1
        return counts

    # -- I/O -------------------------------------------------------------------------------------
    def sendto(self, data: bytes | memoryview, addr: Address) -> bool:
        """Send one datagram now (after any queued RTP, which keeps its place in line)."""
        sock = self._sock
        if sock is None:
            return False
        if self.out_ring.used:
            self.flush()
        if self.tcp_links:
            link = self.tcp_links.get(addr)
            if link is not None:
                return link.send_frame(data)
        try:
            if self._sockaddrs is not None and ":" not in addr[0]:
                sock.sendto(data, ("::ffff:" + addr[0], addr[1]))  # an IPv4 peer of a dual-stack port
            else:
                sock.sendto(data, addr)
            return True
        except (BlockingIOError, InterruptedError):
            self.counters.drops[DropReason.SEND_FAILED] += 1
        except OSError as exc:
            if is_tcp_address(addr):  # an ICE-TCP connection that is gone: nothing to send on
                return False
            self.send_errors += 1
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.warning("media send to %s failed: %s", addr, exc)
        return False

    def flush(self) -> int:
        """Send every queued RTP packet now; returns how many the kernel took."""
        ring = self.out_ring
        sock = self._sock
        if not ring.used:
            return 0
        if sock is None:
            ring.discard()
            if self._sockaddrs is not None:
                self._sockaddrs.collect()
            return 0
        sent, refused = ring.send(sock.fileno())
        if self._sockaddrs is not None:
            self._sockaddrs.collect()
        for err in refused:
            if err in (errno.EAGAIN, errno.ENOBUFS):
                self.counters.drops[DropReason.SEND_FAILED] += 1
            else:
                self.send_errors += 1
                if err not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("media send failed: %s", errno.errorcode.get(err, err))
        return sent

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        fd = sock.fileno()
        ring = self._in_ring
        views = ring.views
        ptrs = ring.ptrs
        lens = ring.lens
        names = ring.names
        by_key = self._by_key
        counters = self.counters
        drops = counters.drops
        now_ms = clock.now_ms()
        sampled = self._latency_countdown
        total = 0
        self.out_ring.auto_flush = False  # the reader flushes after each batch
        try:
            while total < RECV_BUDGET:
                got = ring.recv(fd, RECV_BATCH)
                if got <= 0:
                    if got in (-errno.ECONNREFUSED, -errno.EHOSTUNREACH):
                        total += 1  # an ICMP-reported error, cleared by reading it: go on
                        continue
                    if got < 0 and got not in (-errno.EAGAIN, -errno.EINTR):
                        log.warning("media receive failed: %s", errno.errorcode.get(-got, -got))
                    break
                total += got
                counters.datagrams_in += got
                started = 0.0
                for i in range(got):
                    n = lens[i * LEN_STRIDE + LEN_INDEX]
                    if n < 4:
                        drops[DropReason.TOO_SHORT] += 1
                        continue
                    view = views[i]
                    b0 = view[0]
                    if 127 < b0 < 192:
                        peer = by_key.get(names[i * 2])
                        if peer is None:
                            drops[DropReason.SRTP_UNKNOWN_ADDRESS] += 1
                            continue
                        sampled -= 1
                        if not sampled:  # time one datagram in LATENCY_SAMPLE: receive to sent
                            sampled = LATENCY_SAMPLE
                            started = time.perf_counter()
                        peer.on_srtp(ptrs[i], view, n, now_ms)
                    elif b0 < 4:
                        self.on_stun(bytes(view[:n]), address_of_key(names[i * 2]), now_ms)
                    elif 19 < b0 < 64:
                        peer = by_key.get(names[i * 2])
                        if peer is None:
                            drops[DropReason.DTLS_UNKNOWN_ADDRESS] += 1
                            continue
                        peer.on_dtls(bytes(view[:n]), now_ms)
                    else:
                        drops[DropReason.UNKNOWN_PROTOCOL] += 1
                if self.out_ring.used:
                    self.flush()
                if started:
                    counters.observe_latency(time.perf_counter() - started)
                if got < RECV_BATCH:
                    break
        finally:
            self.out_ring.auto_flush = True
            self._latency_countdown = sampled
            if self.out_ring.used:
                self.flush()

    def _on_readable6(self) -> None:
        """``_on_readable`` for an IPv6 port: the sender's key is ``key6`` of its four name words
        (one word, two reads and an XOR for an IPv4 peer or any address with a zero high half)."""
        sock = self._sock
        if sock is None:
            return
        fd = sock.fileno()
        ring = self._in_ring
        views = ring.views
        ptrs = ring.ptrs
        lens = ring.lens
        names = ring.names
        by_key = self._by_key
        counters = self.counters
        drops = counters.drops
        now_ms = clock.now_ms()
        sampled = self._latency_countdown
        total = 0
        self.out_ring.auto_flush = False  # the reader flushes after each batch
        try:
            while total < RECV_BUDGET:
                got = ring.recv(fd, RECV_BATCH)
                if got <= 0:
                    if got in (-errno.ECONNREFUSED, -errno.EHOSTUNREACH):
                        total += 1  # an ICMP-reported error, cleared by reading it: go on
                        continue
                    if got < 0 and got not in (-errno.EAGAIN, -errno.EINTR):
                        log.warning("media receive failed: %s", errno.errorcode.get(-got, -got))
                    break
                total += got
                counters.datagrams_in += got
                started = 0.0
                for i in range(got):
                    n = lens[i * LEN_STRIDE + LEN_INDEX]
                    if n < 4:
                        drops[DropReason.TOO_SHORT] += 1
                        continue
                    view = views[i]
                    b0 = view[0]
                    j = i * 4
                    if 127 < b0 < 192:
                        key = names[j] ^ names[j + 2]
                        if names[j + 1] or names[j + 3]:
                            key |= (names[j + 1] << 64) | (names[j + 3] << 128)
                        peer = by_key.get(key)
                        if peer is None:
                            drops[DropReason.SRTP_UNKNOWN_ADDRESS] += 1
                            continue
                        sampled -= 1
                        if not sampled:  # time one datagram in LATENCY_SAMPLE: receive to sent
                            sampled = LATENCY_SAMPLE
                            started = time.perf_counter()
                        peer.on_srtp(ptrs[i], view, n, now_ms)
                    elif b0 < 4:
                        self.on_stun(bytes(view[:n]), address_of_sockaddr6(ring.name(i)), now_ms)
                    elif 19 < b0 < 64:
                        key = names[j] ^ names[j + 2]
                        if names[j + 1] or names[j + 3]:
                            key |= (names[j + 1] << 64) | (names[j + 3] << 128)
                        peer = by_key.get(key)
                        if peer is None:
                            drops[DropReason.DTLS_UNKNOWN_ADDRESS] += 1
                            continue
                        peer.on_dtls(bytes(view[:n]), now_ms)
                    else:
                        drops[DropReason.UNKNOWN_PROTOCOL] += 1
                if self.out_ring.used:
                    self.flush()
                if started:
                    counters.observe_latency(time.perf_counter() - started)
                if got < RECV_BATCH:
                    break
        finally:
            self.out_ring.auto_flush = True
            self._latency_countdown = sampled
            if self.out_ring.used:
                self.flush()

    def on_stun(self, data: bytes, addr: Address, now_ms: int, mapped: Address | None = None) -> None:
        """A STUN message from ``addr``; ``mapped`` is the address the client is seen at when
        that is not ``addr`` (an ICE-TCP connection's peer address)."""
        drops = self.counters.drops
        check = parse_check(data)
        if isinstance(check, DropReason):
            drops[check] += 1
            return
        if isinstance(check, Keepalive):
            # a Binding indication (RFC 8445 §11): welcome from a session's address, not answered,
            # no consent (it is not authenticated: see ``sfu.transport.peer.CONSENT_TIMEOUT_MS``)
            if addr in self._by_addr:
                self.counters.stun_keepalives += 1
            else:
                drops[DropReason.STUN_UNEXPECTED] += 1
            return
        peer = self._by_ufrag.get(check.local_ufrag)
        if peer is None:
            drops[DropReason.STUN_UNKNOWN_USER] += 1
            return
        if not authenticate(check, peer.ice, peer.remote_ufrag):
            drops[DropReason.STUN_BAD_INTEGRITY] += 1
            return
        self.sendto(binding_success(check, mapped or addr, peer.ice), addr)
        peer.on_ice_check(addr, check, now_ms)

    def _key(self, addr: Address) -> int | None:
        """The receive key of ``addr`` on this port (None: it cannot receive from there)."""
        try:
            if self.family == socket.AF_INET6:
                return None if is_tcp_address(addr) else key6_of_address(addr[0], addr[1])
            return key_of_address(addr[0], addr[1])
        except (ValueError, IndexError, TypeError):
            return None
