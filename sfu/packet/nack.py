"""Loss detection on one received RTP stream: which sequence numbers to ask the sender for again
(RFC 4585 Generic NACK), and when; the node's upstream half of loss recovery.

``NackTracker`` watches the sequence numbers arriving from a publisher.  A packet newer than the
next expected one leaves *holes* (the numbers between); each hole is NACKed at once (in one batch
with the holes found in the same few milliseconds), then again every retry interval (the round
trip measured from NACKs answered at the first try, within bounds) until it arrives (recovered by
a retransmission, or just late), or is given up: after ``max_retries`` NACKs, when it falls more
than ``max_age`` behind the newest, when more than ``max_holes`` are open (the oldest go), when a
keyframe makes it moot (``keyframe``), or when the stream jumps more than ``reset_jump`` ahead (or
restarts behind): then nothing is NACKed and tracking starts again.

Time is passed in (``now_ms``).  Nothing here allocates per packet while packets arrive in
order, and a hot loop may skip the call altogether::

    if seq == t.next_seq and now_ms < t.due_ms:
        t.next_seq = (seq + 1) & 0xFFFF
    else:
        outcome = t.on_packet(seq, now_ms)
        seqs = t.due(now_ms)  # what to NACK now, possibly []

Counters are lists indexed by the enums below (the caller may pass its own, shared lists).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["GiveUp", "NackAttempt", "NackOutcome", "NackTracker", "NEVER"]

#: ``due_ms`` while nothing is to be NACKed
NEVER = 1 << 62
_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15


class NackOutcome(IntEnum):
    """What ``NackTracker.on_packet`` made of a packet."""

    FIRST = 0  # the first packet of the stream (or after a reset)
    IN_ORDER = 1  # the next expected one
    GAP = 2  # newer than the next expected: the numbers between are holes now
    RECOVERED = 3  # it fills a hole
    LATE = 4  # older than the newest and no open hole: a duplicate, or a hole given up or never tracked
    RESET = 5  # too far from the expected one: tracking starts again with it


class GiveUp(IntEnum):
    """Why a hole was closed without its packet (``name.lower()`` is the metric label)."""

    RETRIES = 0  # NACKed max_retries times
    OVERFLOW = 1  # more than max_holes open: the oldest went (or a gap larger than that)
    TOO_OLD = 2  # more than max_age behind the newest packet
    RESET = 3  # the stream jumped or restarted
    KEYFRAME = 4  # a keyframe after it arrived: decoders start again there


class NackAttempt(IntEnum):
    """Sequence numbers NACKed for the first time or again (``name.lower()`` is the metric label)."""

    FIRST = 0
    RETRY = 1


class NackTracker:
    """The open holes of one stream and when each is due to be NACKed.

    Defaults suit a video stream: ``max_age`` stays below the node's retransmission cache (512
    packets) so a recovered packet still has its slot there, and the retry interval starts at
    ``default_rtt_ms`` until a NACK answered at its first try gives a round trip sample.
    """

    __slots__ = (
        "next_seq",
        "due_ms",
        "given_up",
        "requested",
        "max_holes",
        "max_retries",
        "max_age",
        "reset_jump",
        "min_interval_ms",
        "max_interval_ms",
        "batch_interval_ms",
        "_next_ext",
        "_holes",
        "_rtt8",
        "_last_batch_ms",
        "_restart_seq",
    )

    def __init__(
        self,
        *,
        max_holes: int = 256,
        max_retries: int = 10,
        max_age: int = 480,
        reset_jump: int = 1000,
        min_interval_ms: int = 20,
        max_interval_ms: int = 400,
        default_rtt_ms: int = 100,
        batch_interval_ms: int = 5,
        given_up: list[int] | None = None,
        requested: list[int] | None = None,
    ) -> None:
        if max_holes < 1 or max_retries < 1 or max_age < 1:
            raise ValueError("max_holes, max_retries and max_age must be at least 1")
        if not 0 < reset_jump < _SEQ_HALF:
            raise ValueError(f"reset_jump must be in 1..{_SEQ_HALF - 1}, got {reset_jump}")
        if not 0 < min_interval_ms <= max_interval_ms:
            raise ValueError("need 0 < min_interval_ms <= max_interval_ms")
        self.max_holes = max_holes
        self.max_retries = max_retries
        self.max_age = max_age
        self.reset_jump = reset_jump
        self.min_interval_ms = min_interval_ms
        self.max_interval_ms = max_interval_ms
        self.batch_interval_ms = batch_interval_ms
        #: the 16-bit sequence number expected next (-1 before the first packet)
        self.next_seq = -1
        #: when ``due`` has something to send (``NEVER`` while no hole is open)
        self.due_ms = NEVER
        #: holes closed without their packet, by ``GiveUp``
        self.given_up = given_up if given_up is not None else [0] * len(GiveUp)
        #: sequence numbers handed out by ``due``, by ``NackAttempt``
        self.requested = requested if requested is not None else [0] * len(NackAttempt)
        self._next_ext = 0  # extended value of next_seq (as of the last call)
        #: extended seq -> [NACKs sent, when the last was sent]; insertion order is age order
        self._holes: dict[int, list[int]] = {}
        self._rtt8 = default_rtt_ms * 8  # the smoothed round trip, in 1/8 ms
        self._last_batch_ms = -NEVER
        self._restart_seq = -1  # a far-behind packet's successor: if it comes next, the stream restarted

    # -- reading -----------------------------------------------------------------------------------
    @property
    def holes(self) -> list[int]:
        """Open holes, oldest first (16-bit sequence numbers)."""
        return [ext & 0xFFFF for ext in self._holes]

    @property
    def rtt_ms(self) -> int:
        """The round trip the retry interval follows (a smoothed sample, or the default)."""
        return (self._rtt8 + 4) >> 3

    @property
    def retry_interval_ms(self) -> int:
        return min(self.max_interval_ms, max(self.min_interval_ms, (self._rtt8 + 4) >> 3))

    def is_hole(self, seq: int) -> bool:
        """Whether ``seq`` is an open hole (a retransmission of it is wanted)."""
        if self.next_seq < 0 or not self._holes:
            return False
        return self._ext(seq) in self._holes

    def behind(self, seq: int) -> int:
        """How far ``seq`` is behind the newest packet (0 for the newest, negative if newer)."""
        if self.next_seq < 0:
            return 0
        return self._sync() - 1 - self._ext(seq)

    # -- packets -----------------------------------------------------------------------------------
    def _sync(self) -> int:
        """``_next_ext`` caught up with ``next_seq`` (a hot loop may have advanced it)."""
        self._next_ext += (self.next_seq - self._next_ext) & 0xFFFF
        return self._next_ext

    def _ext(self, seq: int) -> int:
        d = (seq - self.next_seq) & 0xFFFF
        if d >= _SEQ_HALF:
            d -= _SEQ_MOD
        return self._sync() + d

    def on_packet(self, seq: int, now_ms: int, *, repaired: bool = False) -> NackOutcome:
        """Record an arriving packet's 16-bit sequence number; ``repaired``: it is a
        retransmission (RTX), whose delay after the NACK is a round trip sample."""
        seq &= 0xFFFF
        if self.next_seq < 0:
            return self._restart(seq)
        ext = self._ext(seq)
        nxt = self._next_ext
        if ext == nxt:
            self._advance(ext)
            return NackOutcome.IN_ORDER
        if ext > nxt:
            if ext - nxt > self.reset_jump:
                return self._restart(seq)
            self._advance(ext)
            self._open(nxt, ext, now_ms)
            return NackOutcome.GAP
        hole = self._holes.pop(ext, None)
        if hole is not None:
            if repaired and hole[0] == 1:  # answered at the first try: a clean round trip sample
                sample = now_ms - hole[1]
                if sample >= 0:
                    self._rtt8 += sample - (self._rtt8 >> 3)  # RFC 6298's 1/8 gain
            if not self._holes:
                self.due_ms = NEVER
            return NackOutcome.RECOVERED
        if nxt - ext > self.reset_jump:
            if seq == self._restart_seq:  # two in a row far behind: the sender started over
                return self._restart(seq)
            self._restart_seq = (seq + 1) & 0xFFFF
        return NackOutcome.LATE

    def _advance(self, ext: int) -> None:
        self._next_ext = ext + 1
        self.next_seq = (ext + 1) & 0xFFFF
        self._restart_seq = -1

    def _restart(self, seq: int) -> NackOutcome:
        first = self.next_seq < 0
        self._close_all(GiveUp.RESET)
        self._next_ext = seq
        self._advance(seq)
        return NackOutcome.FIRST if first else NackOutcome.RESET

    def _open(self, first: int, stop: int, now_ms: int) -> None:
        """Open holes ``first .. stop - 1`` (extended), keeping at most ``max_holes``."""
        holes = self._holes
        if stop - first > self.max_holes:
            self.given_up[GiveUp.OVERFLOW] += stop - self.max_holes - first
            first = stop - self.max_holes
        for ext in range(first, stop):
            holes[ext] = [0, 0]
        excess = len(holes) - self.max_holes
        if excess > 0:
            for ext in list(holes)[:excess]:
                del holes[ext]
            self.given_up[GiveUp.OVERFLOW] += excess
        self.due_ms = min(self.due_ms, max(now_ms, self._last_batch_ms + self.batch_interval_ms))

    def keyframe(self, seq: int) -> int:
        """A keyframe starts at ``seq``: holes before it are moot (closed); returns how many."""
        if self.next_seq < 0 or not self._holes:
            return 0
        start = self._ext(seq)
        moot = [ext for ext in self._holes if ext < start]
        for ext in moot:
            del self._holes[ext]
        self.given_up[GiveUp.KEYFRAME] += len(moot)
        if not self._holes:
            self.due_ms = NEVER
        return len(moot)

    def _close_all(self, why: GiveUp) -> None:
        self.given_up[why] += len(self._holes)
        self._holes.clear()
        self.due_ms = NEVER
        self._restart_seq = -1

    # -- NACKs -------------------------------------------------------------------------------------
    def due(self, now_ms: int) -> list[int]:
        """The sequence numbers to NACK now (one batch, oldest first; [] when nothing is due).
        Holes NACKed ``max_retries`` times whose last retry went unanswered, and holes too far
        behind, are given up here."""
        if now_ms < self.due_ms or not self._holes:
            return []
        interval = self.retry_interval_ms
        floor = self._sync() - 1 - self.max_age
        out: list[int] = []
        next_due = NEVER
        holes = self._holes
        for ext in list(holes):
            state = holes[ext]
            sent, last = state
            if ext < floor:
                del holes[ext]
                self.given_up[GiveUp.TOO_OLD] += 1
                continue
            if sent:
                if now_ms - last < interval:
                    next_due = min(next_due, last + interval)
                    continue
                if sent >= self.max_retries:
                    del holes[ext]
                    self.given_up[GiveUp.RETRIES] += 1
                    continue
            state[0] = sent + 1
            state[1] = now_ms
            self.requested[NackAttempt.RETRY if sent else NackAttempt.FIRST] += 1
            out.append(ext & 0xFFFF)
            next_due = min(next_due, now_ms + interval)
        self.due_ms = next_due
        if out:
            self._last_batch_ms = now_ms
        return out
