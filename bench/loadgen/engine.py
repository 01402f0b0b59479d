"""One generator process's media loop: paced senders and verifying receivers on one thread.

Senders write each frame's packets into a bounded, preallocated slot ring (``bench.mmsg.Ring``,
one per node address), protect them in place and hand the ring to one sendmmsg per publisher and
wake-up; publishers are kept in a heap by their next due frame, with their phases spread over the
frame interval (frames due within ``SEND_AHEAD_S`` go out together).  Receivers are read with
recvmmsg when epoll says so, at most every ``RX_BATCH_S``, all ready sockets in one
``drain_ready`` call: every packet is followed on its SSRC's (node-rewritten) sequence and every
``verify_every``-th one (and the first of each SSRC) is decrypted and checked (stamp, length,
payload bytes in one comparison, node-vs-sender sequence), its latency taken from the kernel's
receive timestamp and binned.  Nothing is allocated per packet beyond two small tuples and a slice
view; there is no logging.
"""

from __future__ import annotations

import heapq
import select
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pylibsrtp._binding import lib

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
)
from bench.mmsg import (
    LEN_INDEX,
    LEN_STRIDE,
    TS_TAG,
    Ring,
    StampedRecvRing,
    clock_offset_ns,
    enable_rx_timestamps,
    sockaddr_in,
)
from bench.proc import self_cpu_seconds
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key, SrtpError

SEND_SLOTS = 64
RECV_SLOTS = 64
KEEPALIVE_S = 5.0
STATS_EVERY_S = 1.0
#: longest the loop sleeps in epoll while nothing is due
MAX_WAIT_S = 0.005
#: after a read, the next one waits this long (sends still go out on time): fewer, fuller reads;
#: the latency is from each datagram's kernel receive timestamp, so the wait does not add to it
RX_BATCH_S = 0.004
#: frames due within this much are sent together (each packet is stamped when it is written): fewer
#: wake-ups with many publishers whose phases are spread over the frame interval
SEND_AHEAD_S = 0.001
#: after sending, receivers read until ``drain_s`` of silence, but at most this much longer
MAX_BACKLOG_S = 10.0
_SEQ_SSRC = struct.Struct("!H4xI")  # sequence number and SSRC, from byte 2 of the RTP header
SRTP_OK = int(lib.srtp_err_status_ok)


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
    kernel_stamped: int = 0  # verified packets whose latency is from the kernel's receive timestamp
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
            "kernel_stamped": self.kernel_stamped,
            "hist": {i: n for i, n in enumerate(self.hist) if n},
        }


class RecvRing(StampedRecvRing):
    """The generator's receive ring: recvmmsg slots with the kernel's receive timestamps."""


class _RxStream:
    """One SSRC at a receiver: the node's sequence and its relation to the payload sequence."""

    __slots__ = ("ext", "stream", "offset")

    def __init__(self) -> None:
        self.ext = -1  # highest extended node sequence seen
        self.stream = -1  # stream id of the last checked packet
        self.offset = 0  # node seq - payload seq (mod 2^16) of that stream


class Receiver:
    """One receiving session: its socket and inbound SRTP; ``drain`` reads all that is queued.

    The socket has kernel receive timestamps on (``SO_TIMESTAMPNS``): a packet's latency is the
    kernel's queueing time minus its send stamp, so how long the generator took to come round to
    this socket (it reads a burst to N receivers one socket after another) is not counted.
    """

    def __init__(self, sock: socket.socket, key: Key, checks: list[StreamCheck], counters: Counters,
                 verify_every: int = 1, keepalive: Callable[[], None] | None = None) -> None:
        if verify_every < 1:
            raise ValueError(f"verify_every must be >= 1, got {verify_every}")
        self.sock = sock
        self.fd = sock.fileno()
        enable_rx_timestamps(sock)
        self.session = InplaceSession(key, outbound=False)
        self.checks = checks
        self.counters = counters
        self.every = verify_every
        self.keepalive = keepalive
        self.ssrcs: dict[int, _RxStream] = {}
        self.plens = [c.payload_len for c in checks]
        self.fillers = [c.fillers for c in checks]

    def drain(self, ring: RecvRing) -> int:
        """Read and check what is queued on this socket (see ``drain_ready``)."""
        return drain_ready([self], ring, self.counters)

    def close(self) -> None:
        self.session.close()


def drain_ready(receivers: list[Receiver], ring: RecvRing, c: Counters) -> int:
    """Read and check what is queued on each of ``receivers`` (epoll said so); a short batch ends a
    socket's read.  Returns the datagrams read.

    One pass per datagram, all in this function (no calls but recvmmsg per batch, libsrtp's
    unprotect and two struct reads per packet): RTP header (SSRC, sequence), in-order bookkeeping,
    unprotect in place, the stamp, the payload compared with the expected bytes in one C-level
    comparison, the latency bucket.  Locals are bound once per call (one call per wake-up, for
    every ready socket), counters summed in locals and stored once.
    """
    view, lens, ctl, ptrs, count, recv_batch = ring.view, ring.lens, ring.ctl, ring.ptrs, ring.count, ring.recv
    recv, hist = c.recv, c.hist
    unprotect, ok = lib.srtp_unprotect, SRTP_OK
    seq_ssrc, stamp, bounds = _SEQ_SSRC.unpack_from, STAMP.unpack_from, BOUNDS_NS
    verified = corrupt = rejected = gaps = missing = late = skipped = kernel = 0
    total = 0
    # CLOCK_REALTIME (the kernel's stamps) -> CLOCK_MONOTONIC (the senders' stamps)
    rt_off = clock_offset_ns()
    for r in receivers:
        fd, ssrcs, every, plens, fillers = r.fd, r.ssrcs, r.every, r.plens, r.fillers
        nchecks = len(plens)
        session = r.session
        ctx, length_p = session.ctx, session.length_p
        n = count
        while n == count:
            n = recv_batch(fd, count)
            if n == 0:
                break
            total += n
            fallback_ns = 0
            for i in range(n):
                off = i * SLOT_SIZE
                b0 = view[off]
                length = lens[i * LEN_STRIDE + LEN_INDEX]
                if b0 < 128 or b0 > 191 or 191 < view[off + 1] < 224 or length < RTP_HEADER_LEN:
                    skipped += 1  # STUN, DTLS or RTCP (PT 192..223, RFC 5761)
                    continue
                seq16, ssrc = seq_ssrc(view, off + 2)
                st = ssrcs.get(ssrc)
                if st is None:
                    st = ssrcs[ssrc] = _RxStream()
                ext = st.ext
                if ext < 0:
                    ext = seq16
                else:
                    delta = (seq16 - ext) & 0xFFFF
                    if 0 < delta < 0x8000:
                        if delta > 1:
                            gaps += 1
                            missing += delta - 1
                        ext += delta
                    else:
                        late += 1
                        if st.stream >= 0:
                            recv[st.stream] += 1
                        continue
                st.ext = ext
                if st.stream >= 0 and ext % every:
                    recv[st.stream] += 1
                    continue
                # -- verify: SRTP, stamp, payload, node-vs-sender sequence, latency
                length_p[0] = length
                if unprotect(ctx, ptrs[i], length_p) != ok:
                    rejected += 1
                    continue
                length = length_p[0]
                hl = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
                if b0 & 0x10 and hl + 4 <= length:
                    hl += 4 + 4 * ((view[off + hl + 2] << 8) | view[off + hl + 3])
                if hl + PAYLOAD_AT > length:
                    corrupt += 1
                    continue
                magic, sid, seq, send_ns = stamp(view, off + hl + PREFIX_LEN)
                if magic != MAGIC or sid >= nchecks:
                    corrupt += 1
                    continue
                recv[sid] += 1
                # equal lengths, so "expected starts with received" is "equal": one memcmp, no copy
                if length - hl != plens[sid] or not fillers[sid][seq % FILLER_KINDS].startswith(
                        view[off + hl + PAYLOAD_AT : off + length]):
                    corrupt += 1
                    continue
                offset = (seq16 - seq) & 0xFFFF
                if sid != st.stream:  # first packet of this SSRC, or a simulcast layer switch
                    st.stream = sid
                    st.offset = offset
                elif offset != st.offset:  # the node's sequence no longer follows the sender's
                    corrupt += 1
                    st.offset = offset
                    continue
                verified += 1
                q = 4 * i
                if ctl[q + 1] == TS_TAG:
                    kernel += 1
                    ctl[q + 1] = 0  # a datagram without a stamp must not reuse this one
                    hist[bisect_left(bounds, ctl[q + 2] * 1_000_000_000 + ctl[q + 3] - rt_off - send_ns)] += 1
                else:  # no kernel stamp (the tag was cleared): the time of this batch
                    if not fallback_ns:
                        fallback_ns = time.monotonic_ns()
                        ring.reset_control()
                    hist[bisect_left(bounds, fallback_ns - send_ns)] += 1
    c.verified += verified
    c.corrupt += corrupt
    c.rejected += rejected
    c.gaps += gaps
    c.missing += missing
    c.late += late
    c.skipped += skipped
    c.kernel_stamped += kernel
    return total


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
        view, ptrs, iov_lens = ring.view, ring.ptrs, ring.iov_lens
        protect, ctx, length_p = lib.srtp_protect, self.session.ctx, self.session.length_p
        sent, due, fd, slots = self.counters.sent, self.due, self.fd, ring.count
        j = 0
        now_ns = time.monotonic_ns()
        for k, w in enumerate(self.writers):
            stream = w.stream
            write = w.write
            while due[k] <= now:
                key = due[k] >= w.next_key and w.video
                if key:
                    w.next_key = due[k] + stream.keyframe_interval_s
                count = stream.per_frame
                for index in range(count):
                    if j == slots:
                        ring.send(fd, j)
                        j = 0
                    length_p[0] = write(view, j * SLOT_SIZE, index, count, key, now_ns)
                    if protect(ctx, ptrs[j], length_p) != SRTP_OK:
                        raise SrtpError("srtp_protect failed")
                    iov_lens[2 * j + 1] = length_p[0]
                    j += 1
                w.frame += 1
                sent[stream.id] += count
                due[k] += stream.interval_s
        if j:
            ring.send(fd, j)
        return min(due)

    def close(self) -> None:
        self.session.close()


class Engine:
    """Runs the senders and receivers of one generator process for a bounded time."""

    def __init__(self, senders: list[Sender], receivers: list[Receiver], counters: Counters,
                 rx_batch_s: float = RX_BATCH_S) -> None:
        if not 0 <= rx_batch_s <= MAX_WAIT_S:
            raise ValueError(f"rx_batch_s must be in [0, {MAX_WAIT_S}], got {rx_batch_s}")
        self.rx_batch_s = rx_batch_s
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
        epoll = select.epoll()
        by_fd = {}
        for r in self.receivers:
            epoll.register(r.fd, select.EPOLLIN)
            by_fd[r.fd] = r
        counters = self.counters
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
        rx_next = t0
        cpu0 = self_cpu_seconds()
        now = t0
        while now < end and not self.stop_requested and (now < send_end or now - last_rx < drain_s):
            while heap and heap[0][0] <= now + SEND_AHEAD_S and now < send_end:
                _, idx = heapq.heappop(heap)
                s = self.senders[idx]
                heapq.heappush(heap, (s.send_due(self.rings[s.remote], now + SEND_AHEAD_S), idx))
            due_at = heap[0][0] if heap and now < send_end else now + MAX_WAIT_S
            if now < rx_next:  # read recently: let datagrams collect (their kernel stamps keep the latency)
                time.sleep(max(0.0, min(rx_next, due_at) - now))
                now = time.monotonic()
                continue
            events = epoll.poll(min(MAX_WAIT_S, max(0.0, due_at - now)))
            if events:
                drain_ready([by_fd[fd] for fd, _ in events], rx_ring, counters)
            now = time.monotonic()
            if events:
                last_rx = now
                rx_next = now + self.rx_batch_s
            if now >= next_stats:
                emit(self.snapshot(now - t0, cpu0))
                next_stats += STATS_EVERY_S
            if now >= next_keepalive:
                for alive in [p.keepalive for p in self.senders] + [r.keepalive for r in self.receivers]:
                    if alive is not None:
                        alive()
                next_keepalive = now + KEEPALIVE_S
        epoll.close()
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
