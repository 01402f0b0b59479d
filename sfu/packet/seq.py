"""Wraparound arithmetic for RTP sequence numbers (16-bit) and timestamps (32-bit), and the
mungers that give each subscriber a continuous outgoing sequence across source switches.

Conventions: ``seq_diff(a, b)`` is the signed distance from ``b`` to ``a`` in
``[-2**15, 2**15)``; ``seq_newer(a, b)`` is ``seq_diff(a, b) > 0``. Two values exactly half the
space apart are not newer than each other either way. Same for timestamps with 32 bits.

The mungers work on *extended* (unwrapped, unbounded) integers internally and hand out the low
16 (or 32) bits. Outcomes other than a sequence number are negative ``SeqOutcome`` values so
the hot path returns a plain int and allocates nothing.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "DropOutcome",
    "SeqMunger",
    "SeqOutcome",
    "SeqUnwrapper",
    "TimestampMunger",
    "elapsed_ticks",
    "seq_diff",
    "seq_newer",
    "ts_diff",
    "ts_newer",
]

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15
_TS_MOD = 1 << 32
_TS_HALF = 1 << 31


def seq_diff(a: int, b: int) -> int:
    """Signed 16-bit distance ``a - b`` in ``[-32768, 32767]``."""
    d = (a - b) & 0xFFFF
    return d - _SEQ_MOD if d >= _SEQ_HALF else d


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes after ``b`` (modulo wrap)."""
    d = (a - b) & 0xFFFF
    return 0 < d < _SEQ_HALF


def ts_diff(a: int, b: int) -> int:
    """Signed 32-bit distance ``a - b`` in ``[-2**31, 2**31 - 1]``."""
    d = (a - b) & 0xFFFFFFFF
    return d - _TS_MOD if d >= _TS_HALF else d


def ts_newer(a: int, b: int) -> bool:
    """Whether 32-bit timestamp ``a`` comes after ``b`` (modulo wrap)."""
    d = (a - b) & 0xFFFFFFFF
    return 0 < d < _TS_HALF


def elapsed_ticks(now_ms: int, then_ms: int, clock_rate: int) -> int:
    """RTP clock ticks between ``then_ms`` and ``now_ms`` (never negative)."""
    if now_ms <= then_ms:
        return 0
    return (now_ms - then_ms) * clock_rate // 1000


class SeqUnwrapper:
    """Turns 16-bit sequence numbers into extended ones.

    The first value is returned as is; later values are placed nearest to the highest seen so
    far, so a late packet from before a wrap maps below 65536 and one from after it above. A
    late packet from before the very first one yields a value below the first (possibly
    negative). ``highest`` only moves forward.
    """

    __slots__ = ("_highest", "_started")

    def __init__(self) -> None:
        self._highest = 0
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def highest(self) -> int:
        """Highest extended sequence number seen (0 before the first)."""
        return self._highest

    def reset(self) -> None:
        self._highest = 0
        self._started = False

    def peek(self, seq: int) -> int:
        """The extended value of ``seq`` without recording it."""
        if not self._started:
            return seq & 0xFFFF
        d = (seq - self._highest) & 0xFFFF
        if d >= _SEQ_HALF:
            d -= _SEQ_MOD
        return self._highest + d

    def advance(self, count: int) -> None:
        """Record ``count`` consecutive values after the highest (for a caller that skipped
        ``unwrap`` on an in-order run)."""
        self._highest += count

    def unwrap(self, seq: int) -> int:
        """The extended value of ``seq``, recording it as the highest when it is newer."""
        if not self._started:
            self._started = True
            self._highest = seq & 0xFFFF
            return self._highest
        d = (seq - self._highest) & 0xFFFF
        if d >= _SEQ_HALF:
            return self._highest + d - _SEQ_MOD
        self._highest += d
        return self._highest


class SeqOutcome(IntEnum):
    """Why ``SeqMunger.map`` returned no sequence number (all negative, unlike real ones)."""

    DUPLICATE = -1  # this incoming sequence number was already forwarded
    DROPPED = -2  # this incoming sequence number was dropped with ``drop()``
    TOO_OLD = -3  # older than the tracking window or than the current source's first packet


class DropOutcome(IntEnum):
    """What ``SeqMunger.drop`` did."""

    SKIPPED = 0  # the packet's slot was removed: no gap in the outgoing sequence
    GAP = 1  # the packet arrived late: its slot was already reserved and stays a gap
    NOT_STARTED = 2  # before the first packet of the source: nothing to do
    ALREADY_FORWARDED = 3  # the packet was already mapped: too late to drop
    TOO_OLD = 4  # outside the tracking window


class SeqMunger:
    """Maps one incoming stream's sequence numbers to a continuous outgoing sequence.

    * The first packet maps to ``base``; later ones keep their distance to it, so a gap in the
      incoming stream stays a gap (a receiver NACKs it) and late packets fill their slot.
    * ``map`` returns the outgoing 16-bit sequence number, or a negative ``SeqOutcome``.
    * ``drop(seq)`` removes the slot of a packet the forwarder skips (e.g. padding only): the
      following packets shift down by one, so the receiver sees no gap.
    * ``switch_source()``: the next packet mapped starts a new incoming stream (publisher
      rejoined with a fresh random sequence, simulcast layer switch) and maps to the last
      outgoing sequence number + 1.
    * ``insert()`` allocates an outgoing number for a packet the forwarder originates
      (e.g. a probe), shifting the following ones up by one.
    * ``unmap(out_seq)`` finds the incoming sequence number behind an outgoing one (for a NACK
      from the subscriber), or -1 (also for packets of a source before the last switch).

    A ring of ``window`` entries (a power of two) remembers recent packets for duplicate and
    drop detection and for ``unmap``; packets more than ``window - 1`` behind the newest are
    ``TOO_OLD``.

    Fast path: while packets arrive in order without gaps (``seq`` is the newest + 1), ``map``
    only adds the current offset and counts the packet; the rings and highest values catch up
    (``_sync``) the next time anything else needs them, writing at most ``window`` entries.
    A hot loop may inline it: ``if seq == m.fast_next: m.fast_next = (seq + 1) & 0xFFFF;
    m.fast_count += 1; out = (seq + m.fast_delta) & 0xFFFF``, else call ``map``.
    """

    __slots__ = (
        "fast_delta",
        "_deltas",
        "_first_in",
        "_first_out",
        "_highest_in",
        "_highest_out",
        "_in_ext",
        "_in_state",
        "fast_count",
        "_mask",
        "_max_ranges",
        "fast_next",
        "_out_ext",
        "_out_in",
        "_pending_switch",
        "_starts",
        "_unwrap",
        "_window",
    )

    _MAPPED = 1
    _DROPPED = 2

    def __init__(self, base: int, *, window: int = 1024, max_ranges: int = 64) -> None:
        if window < 16 or window & (window - 1):
            raise ValueError(f"window must be a power of two >= 16, got {window}")
        if window > _SEQ_HALF:
            raise ValueError(f"window must be at most {_SEQ_HALF}, got {window}")
        self._window = window
        self._mask = window - 1
        self._max_ranges = max_ranges
        self._unwrap = SeqUnwrapper()
        self._highest_out = (base & 0xFFFF) - 1  # extended; the first packet gets base
        self._highest_in = 0
        self._first_in = 0
        self._first_out = self._highest_out + 1
        self._pending_switch = True
        # Piecewise offsets: incoming ext seq >= _starts[k] maps to in + _deltas[k] (last k wins).
        self._starts: list[int] = []
        self._deltas: list[int] = []
        # Rings indexed by ext seq & mask. Incoming: which ext seq and its state.  Empty until the
        # first packet (``_start``): a downtrack that never receives costs no ring.
        self._in_ext: list[int] = []
        self._in_state: list[int] = []
        # Outgoing ext seq -> incoming 16-bit seq, for unmap.
        self._out_ext: list[int] = []
        self._out_in: list[int] = []
        # Fast path: the 16-bit seq that continues the run (-1: none), its offset, and how many
        # packets the fast path mapped since the last ``_sync``.
        self.fast_next = -1
        self.fast_delta = 0
        self.fast_count = 0

    @property
    def started(self) -> bool:
        return not self._pending_switch

    @property
    def last_out(self) -> int:
        """The highest outgoing 16-bit sequence number handed out (``base - 1`` before any)."""
        self._sync()
        return self._highest_out & 0xFFFF

    def switch_source(self) -> None:
        """The next packet is the first of a new incoming stream; out continues at last + 1."""
        self._sync()
        self._pending_switch = True
        self.fast_next = -1

    def _sync(self) -> None:
        """Bring highest values and rings up to date with the fast path's packets."""
        count = self.fast_count
        if not count:
            return
        self.fast_count = 0
        first = self._highest_in + 1
        last = self._highest_in + count
        delta = self._deltas[-1]
        self._highest_in = last
        self._highest_out = last + delta
        self._unwrap.advance(count)  # it did not see them either
        lo = max(first, last - self._window + 1)
        # contiguous runs: at most two ring segments each, written with slice assignments
        for start, stop in self._segments(lo, last + 1):
            a = start & self._mask
            b = a + stop - start
            self._in_ext[a:b] = range(start, stop)
            self._in_state[a:b] = [self._MAPPED] * (stop - start)
        for start, stop in self._segments(lo + delta, last + delta + 1):
            a = start & self._mask
            b = a + stop - start
            self._out_ext[a:b] = range(start, stop)
            low = (start - delta) & 0xFFFF  # the incoming 16-bit seq behind ``start``
            if low + stop - start <= _SEQ_MOD:
                self._out_in[a:b] = range(low, low + stop - start)
            else:
                self._out_in[a:b] = [*range(low, _SEQ_MOD), *range(0, low + stop - start - _SEQ_MOD)]

    def _segments(self, start: int, stop: int) -> tuple[tuple[int, int], ...]:
        """``[start, stop)`` (at most ``window`` long) cut where the ring index wraps."""
        split = (start | self._mask) + 1  # the next multiple of window after start
        if stop <= split:
            return ((start, stop),)
        return ((start, split), (split, stop))

    def _rearm(self) -> None:
        """Point the fast path after the newest incoming packet, under the current offset."""
        if self._pending_switch:
            self.fast_next = -1
            return
        self.fast_next = (self._highest_in + 1) & 0xFFFF
        self.fast_delta = self._deltas[-1]

    def _start(self, seq: int) -> int:
        self._unwrap.reset()
        in_ext = self._unwrap.unwrap(seq)
        out_ext = self._highest_out + 1
        self._starts = [in_ext]
        self._deltas = [out_ext - in_ext]
        self._first_in = in_ext
        self._first_out = out_ext
        self._highest_in = in_ext
        self._pending_switch = False
        in_ext_ring = self._in_ext
        if not in_ext_ring:
            window = self._window
            self._in_ext = [-1] * window
            self._in_state = [0] * window
            self._out_ext = [-1] * window
            self._out_in = [0] * window
            return in_ext
        for k in range(self._window):  # forget the previous source's packets
            in_ext_ring[k] = -1
        return in_ext

    def _delta_for(self, in_ext: int) -> int:
        starts = self._starts
        k = len(starts) - 1
        while k > 0 and starts[k] > in_ext:
            k -= 1
        return self._deltas[k]

    def _add_range(self, start: int, delta: int) -> None:
        self._starts.append(start)
        self._deltas.append(delta)
        if len(self._starts) > self._max_ranges:
            del self._starts[0]
            del self._deltas[0]
            # Packets before the oldest remembered range can no longer be placed.
            self._first_in = max(self._first_in, self._starts[0])

    def _record(self, in_ext: int, out_ext: int, seq: int) -> int:
        slot = in_ext & self._mask
        self._in_ext[slot] = in_ext
        self._in_state[slot] = self._MAPPED
        slot = out_ext & self._mask
        self._out_ext[slot] = out_ext
        self._out_in[slot] = seq & 0xFFFF
        return out_ext & 0xFFFF

    def map(self, seq: int) -> int:
        """Outgoing 16-bit sequence number for incoming ``seq``, or a negative ``SeqOutcome``."""
        if seq == self.fast_next:
            self.fast_next = (seq + 1) & 0xFFFF
            self.fast_count += 1
            return (seq + self.fast_delta) & 0xFFFF
        self._sync()
        out = self._map(seq)
        self._rearm()
        return out

    def _map(self, seq: int) -> int:
        if self._pending_switch:
            in_ext = self._start(seq)
            self._highest_out = in_ext + self._deltas[0]
            return self._record(in_ext, self._highest_out, seq)
        in_ext = self._unwrap.unwrap(seq)
        if in_ext > self._highest_in:
            out_ext = in_ext + self._deltas[-1]
            self._highest_in = in_ext
            self._highest_out = out_ext
            return self._record(in_ext, out_ext, seq)
        if in_ext < self._first_in or self._highest_in - in_ext >= self._window:
            return SeqOutcome.TOO_OLD
        slot = in_ext & self._mask
        if self._in_ext[slot] == in_ext:
            return SeqOutcome.DUPLICATE if self._in_state[slot] == self._MAPPED else SeqOutcome.DROPPED
        out_ext = in_ext + self._delta_for(in_ext)
        return self._record(in_ext, out_ext, seq)

    def drop(self, seq: int) -> DropOutcome:
        """Skip incoming ``seq`` without leaving a gap when possible."""
        self._sync()
        try:
            return self._drop(seq)
        finally:
            self._rearm()

    def _drop(self, seq: int) -> DropOutcome:
        if self._pending_switch:
            return DropOutcome.NOT_STARTED
        in_ext = self._unwrap.unwrap(seq)
        if in_ext > self._highest_in:
            delta = self._deltas[-1]
            self._highest_in = in_ext
            self._add_range(in_ext + 1, delta - 1)
            outcome = DropOutcome.SKIPPED
        else:
            if in_ext < self._first_in or self._highest_in - in_ext >= self._window:
                return DropOutcome.TOO_OLD
            slot = in_ext & self._mask
            if self._in_ext[slot] == in_ext and self._in_state[slot] == self._MAPPED:
                return DropOutcome.ALREADY_FORWARDED
            outcome = DropOutcome.GAP
        slot = in_ext & self._mask
        self._in_ext[slot] = in_ext
        self._in_state[slot] = self._DROPPED
        return outcome

    def insert(self) -> int:
        """Allocate the next outgoing sequence number for a packet the forwarder originates."""
        self._sync()
        self._highest_out += 1
        if not self._pending_switch:
            self._add_range(self._highest_in + 1, self._deltas[-1] + 1)
        if self._out_ext:  # (no ring yet: no packet was mapped, none can be behind it)
            self._out_ext[self._highest_out & self._mask] = -1  # no incoming packet behind it
        self._rearm()
        return self._highest_out & 0xFFFF

    def unmap(self, out_seq: int) -> int:
        """Incoming 16-bit sequence number forwarded as ``out_seq`` (recent ones only), or -1."""
        self._sync()
        d = (out_seq - self._highest_out) & 0xFFFF
        if d >= _SEQ_HALF:
            d -= _SEQ_MOD
        out_ext = self._highest_out + d
        if out_ext < self._first_out or not self._out_ext:  # a previous source's, or nothing mapped yet
            return -1
        slot = out_ext & self._mask
        if self._out_ext[slot] != out_ext:
            return -1
        return self._out_in[slot]


class TimestampMunger:
    """Maps one incoming stream's RTP timestamps to a continuous outgoing timeline.

    The first timestamp maps to ``base``; later ones keep their distance (out = in + offset).
    After ``switch_source(elapsed)`` the next timestamp maps to the last outgoing one plus
    ``elapsed`` ticks (at least 1), which the caller computes from its clock with
    ``elapsed_ticks(now_ms, last_sent_ms, clock_rate)``.

    A hot loop may inline ``map`` while ``fast_offset >= 0`` (-1 until the first timestamp of a
    source): ``out = (ts + fast_offset) & 0xFFFFFFFF``, and ``newest_out = out`` when
    ``0 < (out - newest_out) & 0xFFFFFFFF < 2**31``.
    """

    __slots__ = ("_gap", "_offset", "_pending", "fast_offset", "newest_out")

    def __init__(self, base: int) -> None:
        self._offset = 0
        self.fast_offset = -1
        #: the newest outgoing timestamp handed out
        self.newest_out = (base - 1) & 0xFFFFFFFF
        self._gap = 1
        self._pending = True

    @property
    def started(self) -> bool:
        return not self._pending

    @property
    def offset(self) -> int:
        """Current ``out - in`` modulo 2**32."""
        return self._offset

    @property
    def last_out(self) -> int:
        """The newest outgoing timestamp handed out."""
        return self.newest_out

    def switch_source(self, elapsed: int) -> None:
        """The next timestamp starts a new source, ``elapsed`` ticks after the last one out."""
        self._pending = True
        self.fast_offset = -1
        self._gap = elapsed if elapsed > 0 else 1

    def map(self, ts: int) -> int:
        """Outgoing timestamp for incoming ``ts``; remembers it when it is the newest."""
        if self._pending:
            self._pending = False
            out = (self.newest_out + self._gap) & 0xFFFFFFFF
            self._offset = self.fast_offset = (out - ts) & 0xFFFFFFFF
            self.newest_out = out
            return out
        out = (ts + self._offset) & 0xFFFFFFFF
        d = (out - self.newest_out) & 0xFFFFFFFF
        if 0 < d < _TS_HALF:
            self.newest_out = out
        return out

    def translate(self, ts: int) -> int:
        """Outgoing value of ``ts`` under the current offset, without recording anything
        (for the RTP timestamp of a sender report)."""
        return (ts + self._offset) & 0xFFFFFFFF
