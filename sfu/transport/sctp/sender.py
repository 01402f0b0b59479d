"""The send side of an SCTP association: outbound queue, fragmentation, SACK processing,
retransmission (T3 and fast retransmit), RTO estimate, congestion window (RFC 9260 6-7) and
partial reliability: abandoned messages and FORWARD-TSN (RFC 3758).

It holds at most ``max_buffered_bytes`` (``send_message`` refuses more:
``SendOutcome.BUFFER_FULL``).  It also keeps the outgoing streams' SSNs and which of them are
being reset (``resetting``: no new message there until the peer performed the reset).
"""

from __future__ import annotations

from collections import deque

from sfu.transport.sctp.chunks import DataChunk, ForwardTsnChunk, SackChunk
from sfu.transport.sctp.common import AssociationState, Link, SctpDrop, SendOutcome
from sfu.transport.sctp.packet import COMMON_HEADER_LEN
from sfu.transport.sctp.tsn import tsn_add, tsn_gt, tsn_gte

DATA_HEADER_LEN = 16


class _Out:
    """One DATA chunk of the send side, before and after it is sent."""

    __slots__ = (
        "msg",
        "stream",
        "ssn",
        "ppid",
        "data",
        "unordered",
        "begin",
        "end",
        "max_retransmits",
        "expires_ms",
        "tsn",
        "sent_count",
        "sent_ms",
        "acked",
        "abandoned",
        "retransmit",
        "in_flight",
        "misses",
    )

    def __init__(
        self,
        msg: int,
        stream: int,
        ssn: int,
        ppid: int,
        data: bytes,
        unordered: bool,
        begin: bool,
        end: bool,
        max_retransmits: int | None,
        expires_ms: int | None,
    ) -> None:
        self.msg = msg
        self.stream = stream
        self.ssn = ssn
        self.ppid = ppid
        self.data = data
        self.unordered = unordered
        self.begin = begin
        self.end = end
        self.max_retransmits = max_retransmits
        self.expires_ms = expires_ms
        self.tsn = 0
        self.sent_count = 0
        self.sent_ms = 0
        self.acked = False  # gap-acked
        self.abandoned = False
        self.retransmit = False
        self.in_flight = False
        self.misses = 0

    def chunk(self) -> DataChunk:
        return DataChunk(self.tsn, self.stream, self.ssn, self.ppid, self.data, self.unordered, self.begin, self.end)

    def expired(self, now_ms: int) -> bool:
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return True
        return self.max_retransmits is not None and self.sent_count > self.max_retransmits


class Sender:
    """Messages out: queued as DATA chunks, sent as the windows allow, retransmitted until acked
    (or abandoned).  ``t3_at`` is its timer; ``on_timeout`` runs it."""

    def __init__(self, link: Link, initial_tsn: int) -> None:
        self._link = link
        self.next_tsn = initial_tsn
        self._cum_ack = tsn_add(initial_tsn, -1)
        self._adv_peer_ack = self._cum_ack
        self._out_ssn: dict[int, int] = {}
        #: outgoing streams with a reset requested and not yet performed
        self.resetting: set[int] = set()
        self._pending: deque[_Out] = deque()
        self._inflight: deque[_Out] = deque()
        self._msg_counter = 0
        self.buffered_bytes = 0
        self._flight_bytes = 0
        self.peer_rwnd = 0
        mtu = link.config.mtu
        self._max_payload = (mtu - COMMON_HEADER_LEN - DATA_HEADER_LEN) & ~3
        self._cwnd = min(4 * mtu, max(2 * mtu, 4380))
        self._ssthresh = 1 << 30
        self._partial_acked = 0
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.t3_at: int | None = None
        self._errors = 0
        self._fast_recovery_exit: int | None = None

    @property
    def is_idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._pending and not self._inflight

    def clear(self) -> None:
        """The association closed: drop everything queued or in flight, stop the timer."""
        self.t3_at = None
        self._pending.clear()
        self._inflight.clear()
        self.buffered_bytes = self._flight_bytes = 0

    def streams_reset(self, streams: tuple[int, ...]) -> None:
        """The peer performed our reset of ``streams``: they start again at SSN 0."""
        for s in streams:
            self._out_ssn.pop(s, None)
            self.resetting.discard(s)

    # -- queueing ------------------------------------------------------------------------------------
    def send_message(
        self,
        stream: int,
        ppid: int,
        data: bytes,
        now_ms: int,
        ordered: bool,
        max_retransmits: int | None,
        lifetime_ms: int | None,
    ) -> SendOutcome:
        if not data:
            raise ValueError("data: an SCTP message cannot be empty")
        link = self._link
        if link.state is not AssociationState.ESTABLISHED:
            return SendOutcome.NOT_OPEN
        limit = link.config.remote_max_message_size
        if limit and len(data) > limit:
            return SendOutcome.TOO_LARGE
        if stream in self.resetting:
            return SendOutcome.STREAM_RESETTING
        if self.buffered_bytes + len(data) > link.config.max_buffered_bytes:
            return SendOutcome.BUFFER_FULL
        if not link.peer_supports_forward_tsn:
            max_retransmits = lifetime_ms = None
        ssn = 0
        if ordered:
            ssn = self._out_ssn.get(stream, 0)
            self._out_ssn[stream] = (ssn + 1) & 0xFFFF
        self._msg_counter += 1
        expires = now_ms + lifetime_ms if lifetime_ms is not None else None
        size = self._max_payload
        n = len(data)
        for off in range(0, n, size):
            self._pending.append(
                _Out(
                    self._msg_counter,
                    stream,
                    ssn,
                    ppid,
                    data[off : off + size],
                    not ordered,
                    off == 0,
                    off + size >= n,
                    max_retransmits,
                    expires,
                )
            )
        self.buffered_bytes += n
        self.transmit(now_ms)
        return SendOutcome.QUEUED

    # -- acknowledgements ----------------------------------------------------------------------------
    def on_sack(self, sack: SackChunk, now_ms: int) -> bool:
        """Take a SACK; False if it was not used (out of order, or acknowledging what was never sent)."""
        cum = sack.cumulative_tsn
        if tsn_gt(cum, tsn_add(self.next_tsn, -1)):
            self._link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1  # acknowledges what was never sent
            return False
        if tsn_gt(self._cum_ack, cum):
            return False  # an old SACK, out of order
        advanced = tsn_gt(cum, self._cum_ack)
        acked_bytes = 0
        rtt_sample: int | None = None
        inflight = self._inflight
        while inflight and tsn_gte(cum, inflight[0].tsn):
            out = inflight.popleft()
            if out.in_flight:
                self._flight_bytes -= len(out.data)
                out.in_flight = False
            if not out.acked and not out.abandoned:
                acked_bytes += len(out.data)
                self.buffered_bytes -= len(out.data)
                if out.sent_count == 1 and not out.retransmit:
                    rtt_sample = now_ms - out.sent_ms
            elif out.acked:
                self.buffered_bytes -= len(out.data)
        self._cum_ack = cum
        if tsn_gt(cum, self._adv_peer_ack):
            self._adv_peer_ack = cum
        highest_gap = None
        for start, end in sack.gaps:
            lo, hi = tsn_add(cum, start), tsn_add(cum, end)
            highest_gap = hi
            for out in inflight:
                if tsn_gte(out.tsn, lo) and tsn_gte(hi, out.tsn) and not out.acked:
                    out.acked = True
                    if out.in_flight:
                        self._flight_bytes -= len(out.data)
                        out.in_flight = False
                    out.retransmit = False
                    acked_bytes += len(out.data)
        if rtt_sample is not None:
            self._update_rto(max(0, rtt_sample))
        mtu = self._link.config.mtu
        if highest_gap is not None:  # fast retransmit: three miss indications
            lost = False
            for out in inflight:
                if tsn_gte(out.tsn, highest_gap):
                    break
                if not out.acked and not out.abandoned and out.in_flight:
                    out.misses += 1
                    if out.misses >= 3:
                        out.misses = 0
                        self._mark_lost(out, now_ms)
                        lost = True
            if lost and (self._fast_recovery_exit is None):
                self._ssthresh = max(self._cwnd // 2, 4 * mtu)
                self._cwnd = self._ssthresh
                self._fast_recovery_exit = tsn_add(self.next_tsn, -1)
        if self._fast_recovery_exit is not None and tsn_gte(cum, self._fast_recovery_exit):
            self._fast_recovery_exit = None
        if advanced:
            self._errors = 0
            if self._cwnd <= self._ssthresh:
                self._cwnd += min(acked_bytes, mtu)
            else:
                self._partial_acked += acked_bytes
                if self._partial_acked >= self._cwnd:
                    self._partial_acked -= self._cwnd
                    self._cwnd += mtu
            self.t3_at = now_ms + self._link.rto if inflight else None
        self.peer_rwnd = max(0, sack.a_rwnd - self._flight_bytes)
        self._abandon_expired(now_ms)
        self._advance_peer_ack_point()
        return True

    def _update_rto(self, rtt: int) -> None:
        if self._srtt is None:
            self._srtt = float(rtt)
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        rto = int(self._srtt + max(4 * self._rttvar, 10))
        config = self._link.config
        self._link.rto = max(config.rto_min_ms, min(rto, config.rto_max_ms))

    # -- loss and partial reliability ------------------------------------------------------------------
    def _mark_lost(self, out: _Out, now_ms: int) -> None:
        if out.in_flight:
            self._flight_bytes -= len(out.data)
            out.in_flight = False
        if out.expired(now_ms) or (out.max_retransmits is not None and out.sent_count > out.max_retransmits):
            self._abandon(out.msg)
        else:
            out.retransmit = True

    def _abandon(self, msg: int) -> None:
        abandoned = False
        for out in self._inflight:
            if out.msg == msg and not out.abandoned:
                abandoned = True
                out.abandoned = True
                out.retransmit = False
                if out.in_flight:
                    self._flight_bytes -= len(out.data)
                    out.in_flight = False
                if not out.acked:
                    self.buffered_bytes -= len(out.data)
        kept = deque(o for o in self._pending if o.msg != msg)
        if len(kept) != len(self._pending):
            abandoned = True
            self.buffered_bytes -= sum(len(o.data) for o in self._pending if o.msg == msg)
            self._pending = kept
        if abandoned:
            self._link.stats.abandoned += 1

    def _abandon_expired(self, now_ms: int) -> None:
        msgs = {o.msg for o in self._inflight if not o.abandoned and not o.acked and o.expires_ms is not None and now_ms >= o.expires_ms}
        msgs.update(o.msg for o in self._pending if o.expires_ms is not None and now_ms >= o.expires_ms)
        for msg in msgs:
            self._abandon(msg)

    def _advance_peer_ack_point(self) -> None:
        """RFC 3758 3.5 C: skip abandoned chunks at the head; tell the peer with FORWARD-TSN."""
        if not self._link.peer_supports_forward_tsn:
            return
        skipped: dict[int, int] = {}
        point = self._adv_peer_ack
        for out in self._inflight:
            if not tsn_gt(out.tsn, point):
                if out.abandoned and not out.unordered:
                    skipped[out.stream] = out.ssn
                continue
            if out.tsn != tsn_add(point, 1) or not out.abandoned:
                break
            point = out.tsn
            if not out.unordered:
                skipped[out.stream] = out.ssn
        self._adv_peer_ack = point
        if tsn_gt(point, self._cum_ack):
            self._link.send_chunks([ForwardTsnChunk(point, tuple(sorted(skipped.items())))])

    # -- the T3 timer and transmission -----------------------------------------------------------------
    def on_timeout(self, now_ms: int) -> bool:
        """T3 (if due): retransmit what is in flight.  False when the peer is given up on
        (``max_retransmissions`` timeouts in a row): the caller aborts the association."""
        if self.t3_at is None or now_ms < self.t3_at:
            return True
        self.t3_at = None
        if not self._inflight:
            return True
        link = self._link
        self._errors += 1
        if self._errors > link.config.max_retransmissions:
            return False
        mtu = link.config.mtu
        self._ssthresh = max(self._cwnd // 2, 4 * mtu)
        self._cwnd = mtu
        self._partial_acked = 0
        self._fast_recovery_exit = None
        link.rto = min(link.rto * 2, link.config.rto_max_ms)
        for out in list(self._inflight):
            if not out.acked and not out.abandoned:
                self._mark_lost(out, now_ms)
        self._abandon_expired(now_ms)
        self._advance_peer_ack_point()
        self.transmit(now_ms)
        if self._inflight and self.t3_at is None:
            self.t3_at = now_ms + link.rto
        return True

    def transmit(self, now_ms: int) -> None:
        """Send what the congestion and peer windows allow: retransmissions first, then new chunks."""
        link = self._link
        if link.state not in (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING):
            return
        budget_full = False
        batch: list[bytes] = []
        size = 0
        room = link.config.mtu - COMMON_HEADER_LEN

        def room_for(n: int) -> bool:
            if self._flight_bytes + n > self._cwnd and self._flight_bytes > 0:
                return False
            return not (n > self.peer_rwnd and self._flight_bytes > 0)

        def add(out: _Out) -> None:
            nonlocal size
            data = bytes(out.chunk())
            if size + len(data) > room and batch:
                link.send_raw(b"".join(batch))
                batch.clear()
                size = 0
            batch.append(data)
            size += len(data)
            out.sent_ms = now_ms
            out.sent_count += 1
            out.in_flight = True
            self._flight_bytes += len(out.data)
            self.peer_rwnd = max(0, self.peer_rwnd - len(out.data))

        # retransmissions first, oldest first
        for out in self._inflight:
            if out.retransmit and not out.abandoned:
                if not room_for(len(out.data)):
                    budget_full = True
                    break
                out.retransmit = False
                link.stats.retransmissions += 1
                add(out)
        if not budget_full:
            while self._pending:
                out = self._pending[0]
                if out.expires_ms is not None and now_ms >= out.expires_ms:
                    self._abandon(out.msg)
                    continue
                if not room_for(len(out.data)):
                    break
                self._pending.popleft()
                out.tsn = self.next_tsn
                self.next_tsn = tsn_add(self.next_tsn, 1)
                self._inflight.append(out)
                add(out)
        if batch:
            link.send_raw(b"".join(batch))
        if self._inflight and self.t3_at is None:
            self.t3_at = now_ms + link.rto
