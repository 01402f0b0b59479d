"""One generator process's media loop: paced senders and verifying receivers on one thread.

Senders write each frame's packets into a bounded, preallocated slot ring (``bench.mmsg.Ring``,
one per node address), protect them in place and hand the ring to one sendmmsg per publisher and
frame; publishers are kept in a heap by their next due frame, with their phases spread over the
frame interval.  Receivers are read with recvmmsg when epoll says so; every packet is followed on
its SSRC's (node-rewritten) sequence and every ``verify_every``-th one (and the first of each SSRC)
is decrypted and checked byte for byte (``wire.check_packet``), its latency binned.  Nothing is
allocated per packet beyond what Python's ints and the slot slices cost; there is no logging.
"""

from __future__ import annotations

import heapq
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen.plan import Stream
from bench.loadgen.wire import (
    BOUNDS_NS,
    FILLER_KINDS,
    MAGIC,
    PAYLOAD_AT,
    PREFIX_LEN,
    RTP_HEADER_LEN,
    STAMP,
    StreamCheck,
    StreamWriter,
    bucket,
)
from bench.mmsg import EAGAIN, Ring, sockaddr_in
from bench.proc import self_cpu_seconds
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key
from sfu.transport.mmsg import MSG_DONTWAIT, ffi, libc

SEND_SLOTS = 64
RECV_SLOTS = 64
KEEPALIVE_S = 5.0
STATS_EVERY_S = 1.0
#: longest the loop sleeps in epoll while nothing is due
MAX_WAIT_S = 0.005
#: after sending, receivers read until ``drain_s`` of silence, but at most this much longer
MAX_BACKLOG_S = 10.0
_SSRC = struct.Struct("!I")


@dataclass
class Counters:
    """Cumulative counts of one generator process (the runner takes differences)."""

    streams: int
    sent: list[int] = field(default_factory=list)  # per stream id
    recv: list[int] = field(default_factory=list)  # per stream id (as attributed by the last check)
    verified: int = 0
    corrupt: int = 0  # decrypted but wrong: magic, stream, length, filler, sequence relation
    rejected: int = 0  # SRTP unprotect failed
    gaps: int = 0
    missing: int = 0  # packets missing at forward jumps of a node sequence
    late: int = 0  # at or behind the highest sequence seen (reordered or duplicated)
    skipped: int = 0  # RTCP, STUN, DTLS
    hist: list[int] = field(default_factory=list)  # latency buckets (wire.BOUNDS_NS)

    def __post_init__(self) -> None:
        self.sent = [0] * self.streams
        self.recv = [0] * self.streams
        self.hist = [0] * (len(BOUNDS_NS) + 1)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sent": {i: n for i, n in enumerate(self.sent) if n},
            "recv": {i: n for i, n in enumerate(self.recv) if n},
            "verified": self.verified,
            "corrupt": self.corrupt,
            "rejected": self.rejected,
            "gaps": self.gaps,
            "missing": self.missing,
            "late": self.late,
            "skipped": self.skipped,
            "hist": {i: n for i, n in enumerate(self.hist) if n},
        }


class RecvRing(Ring):
    """A receive-only ring: its iovec lengths stay SLOT_SIZE, so ``recv`` does not reset them."""

    def recv(self, fd: int, vlen: int) -> int:
        n = int(libc.recvmmsg(fd, self.msgs, vlen, MSG_DONTWAIT, ffi.NULL))
        if n < 0:
            if ffi.errno == EAGAIN:
                return 0
            raise OSError(ffi.errno, "recvmmsg failed")
        return n


class _RxStream:
    """One SSRC at a receiver: the node's sequence and its relation to the payload sequence."""

    __slots__ = ("ext", "stream", "offset")

    def __init__(self) -> None:
        self.ext = -1  # highest extended node sequence seen
        self.stream = -1  # stream id of the last checked packet
        self.offset = 0  # node seq - payload seq (mod 2^16) of that stream


class Receiver:
    """One receiving session: its socket and inbound SRTP; ``drain`` reads all that is queued."""

    def __init__(self, sock: socket.socket, key: Key, checks: list[StreamCheck], counters: Counters,
                 verify_every: int = 1, keepalive: Callable[[], None] | None = None) -> None:
        if verify_every < 1:
            raise ValueError(f"verify_every must be >= 1, got {verify_every}")
        self.sock = sock
        self.fd = sock.fileno()
        self.session = InplaceSession(key, outbound=False)
        self.checks = checks
        self.counters = counters
        self.every = verify_every
        self.keepalive = keepalive
        self.ssrcs: dict[int, _RxStream] = {}

    def drain(self, ring: Ring) -> int:
        """Read and check what is queued; a short batch ends it (epoll reports the socket again)."""
        view, c, ssrcs, every = ring.view, self.counters, self.ssrcs, self.every
        total = 0
        n = ring.count
        while n == ring.count:
            n = ring.recv(self.fd, ring.count)
            if n == 0:
                return total
            total += n
            recv_ns = time.monotonic_ns()
            for i in range(n):
                off = i * SLOT_SIZE
                b0 = view[off]
                if b0 < 128 or b0 > 191 or 191 < view[off + 1] < 224:
                    c.skipped += 1  # STUN, DTLS or RTCP (PT 192..223, RFC 5761)
                    continue
                ssrc = _SSRC.unpack_from(view, off + 8)[0]
                st = ssrcs.get(ssrc)
                if st is None:
                    st = ssrcs[ssrc] = _RxStream()
                seq16 = (view[off + 2] << 8) | view[off + 3]
                ext = st.ext
                if ext < 0:
                    ext = seq16
                else:
                    delta = (seq16 - ext) & 0xFFFF
                    if 0 < delta < 0x8000:
                        if delta > 1:
                            c.gaps += 1
                            c.missing += delta - 1
                        ext += delta
                    else:
                        c.late += 1
                        if st.stream >= 0:
                            c.recv[st.stream] += 1
                        continue
                st.ext = ext
                if st.stream >= 0 and ext % every:
                    c.recv[st.stream] += 1
                    continue
                self._verify(ring, i, off, st, seq16, recv_ns)
        return total

    def _verify(self, ring: Ring, i: int, off: int, st: _RxStream, seq16: int, recv_ns: int) -> None:
        c = self.counters
        length = self.session.unprotect(ring.ptrs[i], ring.length(i))
        if length < 0:
            c.rejected += 1
            return
        view = ring.view
        b0 = view[off]
        hl = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            hl += 4 + 4 * ((view[off + hl + 2] << 8) | view[off + hl + 3])
        if hl + PAYLOAD_AT > length:
            c.corrupt += 1
            return
        magic, sid, seq, send_ns = STAMP.unpack_from(view, off + hl + PREFIX_LEN)
        if magic != MAGIC or sid >= len(self.checks):
            c.corrupt += 1
            return
        c.recv[sid] += 1
        check = self.checks[sid]
        if (length - hl != check.payload_len
                or view[off + hl + PAYLOAD_AT : off + length] != check.fillers[seq % FILLER_KINDS]):
            c.corrupt += 1
            return
        offset = (seq16 - seq) & 0xFFFF
        if sid != st.stream:  # first packet of this SSRC, or a simulcast layer switch
            st.stream = sid
            st.offset = offset
        elif offset != st.offset:  # the node's sequence no longer follows the sender's
            c.corrupt += 1
            st.offset = offset
            return
        c.verified += 1
        c.hist[bucket(recv_ns - send_ns)] += 1

    def close(self) -> None:
        self.session.close()


class Sender:
    """One publishing session: its streams, its outbound SRTP session and where it sends."""

    def __init__(self, sock: socket.socket, remote: tuple[str, int], key: Key, streams: list[Stream],
                 checks: list[StreamCheck], counters: Counters, keepalive: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.remote = remote
        self.session = InplaceSession(key, outbound=True)
        self.writers = [StreamWriter(s, checks[s.id]) for s in streams]
        self.counters = counters
        self.keepalive = keepalive
        self.due = [0.0] * len(self.writers)

    def start(self, t0: float, phase: float) -> float:
        """Schedule the first frames at ``t0`` plus ``phase`` (0..1) of each stream's interval."""
        for k, w in enumerate(self.writers):
            self.due[k] = t0 + phase * w.stream.interval_s
            w.next_key = self.due[k]
        return min(self.due)

    def send_due(self, ring: Ring, now: float) -> float:
        """Every frame that is due, one sendmmsg per ring fill; returns when the next one is."""
        view, ptrs, protect = ring.view, ring.ptrs, self.session.protect
        sent = self.counters.sent
        j = 0
        now_ns = time.monotonic_ns()
        for k, w in enumerate(self.writers):
            stream = w.stream
            while self.due[k] <= now:
                key = self.due[k] >= w.next_key and w.video
                if key:
                    w.next_key = self.due[k] + stream.keyframe_interval_s
                count = stream.per_frame
                for index in range(count):
                    if j == ring.count:
                        ring.send(self.fd, j)
                        j = 0
                    length = w.write(view, j * SLOT_SIZE, index, count, key, now_ns)
                    ring.set_length(j, protect(ptrs[j], length))
                    j += 1
                w.frame += 1
                sent[stream.id] += count
                self.due[k] += stream.interval_s
        if j:
            ring.send(self.fd, j)
        return min(self.due)

    def close(self) -> None:
        self.session.close()


class Engine:
    """Runs the senders and receivers of one generator process for a bounded time."""

    def __init__(self, senders: list[Sender], receivers: list[Receiver], counters: Counters) -> None:
        self.senders = senders
        self.receivers = receivers
        self.counters = counters
        self.rings: dict[tuple[str, int], Ring] = {}
        for s in senders:
            if s.remote not in self.rings:
                self.rings[s.remote] = Ring(SEND_SLOTS, dests=[sockaddr_in(*s.remote)])
        self.rx_ring = RecvRing(RECV_SLOTS)
        self.stop_requested = False

    def run(self, seconds: float, drain_s: float, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Send for ``seconds``, then receive until ``drain_s`` of silence (a backlog in the sockets is
        read, not counted as lost; at most ``MAX_BACKLOG_S`` more); ``emit`` gets a snapshot each second."""
        if not 0 < seconds <= 3600 or not 0 <= drain_s <= 60:
            raise ValueError(f"seconds must be in (0, 3600] and drain_s in [0, 60], got {seconds}, {drain_s}")
        selector = selectors.EpollSelector()
        for r in self.receivers:
            selector.register(r.fd, selectors.EVENT_READ, r)
        t0 = time.monotonic()
        send_end, end = t0 + seconds, t0 + seconds + drain_s + MAX_BACKLOG_S
        last_rx = t0
        heap: list[tuple[float, int]] = []
        n = max(1, len(self.senders))
        for idx, s in enumerate(self.senders):
            heap.append((s.start(t0, ((idx * 0.6180339887) % 1.0) if n > 1 else 0.0), idx))
        heapq.heapify(heap)
        next_stats = t0 + STATS_EVERY_S
        next_keepalive = t0 + KEEPALIVE_S
        rx_ring = self.rx_ring
        cpu0 = self_cpu_seconds()
        now = t0
        while now < end and not self.stop_requested and (now < send_end or now - last_rx < drain_s):
            while heap and heap[0][0] <= now and now < send_end:
                _, idx = heapq.heappop(heap)
                s = self.senders[idx]
                heapq.heappush(heap, (s.send_due(self.rings[s.remote], now), idx))
            wait = MAX_WAIT_S
            if heap and now < send_end:
                wait = min(wait, max(0.0, heap[0][0] - now))
            for key, _ in selector.select(wait):
                key.data.drain(rx_ring)
                last_rx = -1.0
            now = time.monotonic()
            if last_rx < 0:
                last_rx = now
            if now >= next_stats:
                emit(self.snapshot(now - t0, cpu0))
                next_stats += STATS_EVERY_S
            if now >= next_keepalive:
                for alive in [p.keepalive for p in self.senders] + [r.keepalive for r in self.receivers]:
                    if alive is not None:
                        alive()
                next_keepalive = now + KEEPALIVE_S
        selector.close()
        return self.snapshot(time.monotonic() - t0, cpu0)

    def snapshot(self, elapsed: float, cpu0: float) -> dict[str, Any]:
        snap = self.counters.snapshot()
        snap["t"] = round(elapsed, 4)
        snap["cpu_s"] = round(self_cpu_seconds() - cpu0, 6)
        return snap

    def close(self) -> None:
        for sender in self.senders:
            sender.close()
        for receiver in self.receivers:
            receiver.close()
