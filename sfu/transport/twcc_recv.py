"""Receive side of transport-wide congestion control: transport-cc feedback for a publisher.

``FeedbackBuilder`` is sans-I/O: the transport calls ``on_packet(seq, arrival_us)`` for every
authenticated packet carrying the transport-wide sequence number (O(1): two preallocated
rings, no allocation), and a timer calls ``poll(now_ms)``, which every ``interval_ms`` returns
the feedback messages covering the packets since the previous feedback (``[]`` when nothing
is due). The caller serializes them (``bytes(fb)``) and sends them as SRTCP.

* Losses: seqs between the previous feedback and the highest received are reported lost.
* Reordering: a packet arriving after its seq was reported lost moves the start of the next
  feedback back to it (its later neighbours are reported again: the send side keeps the first
  report of a received packet), as long as it is within ``window`` of the highest.
* Duplicates keep the first arrival time; packets older than ``window`` behind the highest
  are dropped (``too_old``).
* Seq wrap: seqs are unwrapped against the highest so far; a jump of ``window`` or more either way
  (a sender restart) starts a new base (``resets``; what was pending then goes unreported)
  instead of reporting a huge loss; 1-2 windows behind is a straggler, dropped.
* Size: a message is cut before ``max_size`` bytes, and where a receive delta would not fit
  the 2-byte large delta (over 8 s between arrivals); each message has its own reference
  time (the first received packet's arrival, in 64 ms units) and feedback packet count.
* State is bounded by ``window`` (two ``array('q')`` rings: 16 bytes per slot). When more than
  ``window`` packets are pending (a timer that stalls), the oldest are never reported
  (``overflowed``); ``poll`` reports early once half the window is pending, at most every
  quarter interval (a publisher that keeps sending stragglers cannot make every poll build).

Arrival times are integers in microseconds on any monotonic clock (the node's
``time.monotonic_ns() // 1000``); only their differences reach the publisher.
"""

from __future__ import annotations

from array import array

from sfu.packet.twcc import (
    DELTA_TICK_US,
    LARGE_DELTA_MAX,
    LARGE_DELTA_MIN,
    REFERENCE_TICK_US,
    TransportFeedback,
    size_bound,
)

__all__ = ["FeedbackBuilder"]

_EMPTY = -(1 << 63)
#: ``size_bound(n, 2 * n) <= 16 * n / 7 + _SIZE_SLACK`` (header and fixed fields 20, a partial
#: chunk 2, padding 3)
_SIZE_SLACK = 25
_REFERENCE_MOD = 1 << 24


class FeedbackBuilder:
    """Builds transport-cc feedback for one publisher transport; see the module docstring."""

    __slots__ = (
        "_arrival",
        "_exts",
        "_fb_count",
        "_high",
        "_last_feedback_ms",
        "_mask",
        "_start",
        "_started",
        "duplicates",
        "interval_ms",
        "max_size",
        "media_ssrc",
        "overflowed",
        "resets",
        "sender_ssrc",
        "too_old",
        "window",
    )

    def __init__(
        self,
        sender_ssrc: int,
        media_ssrc: int = 0,
        *,
        window: int = 1024,
        interval_ms: int = 100,
        max_size: int = 1200,
    ) -> None:
        if window < 16 or window & (window - 1) or window > 1 << 15:
            raise ValueError(f"feedback window {window} must be a power of two in 16-32768")
        if not 1 <= interval_ms <= 1000:
            raise ValueError(f"feedback interval {interval_ms} ms out of range 1-1000")
        if not 64 <= max_size <= 65536:
            raise ValueError(f"feedback max size {max_size} out of range 64-65536")
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self.window = window
        self.interval_ms = interval_ms
        self.max_size = max_size
        self._mask = window - 1
        self._exts = array("q", [_EMPTY]) * window  # the extended seq each slot holds
        self._arrival = array("q", [_EMPTY]) * window
        self._started = False
        self._start = 0  # first extended seq of the next feedback
        self._high = -1  # highest extended seq received; _start > _high: nothing pending
        self._fb_count = 0
        self._last_feedback_ms: int | None = None
        self.duplicates = 0
        self.too_old = 0
        self.resets = 0
        self.overflowed = 0

    # ----------------------------------------------------------------------- input

    @property
    def pending(self) -> int:
        """Statuses the next feedback would carry (received or lost)."""
        return max(0, self._high - self._start + 1)

    def _reset(self, seq: int) -> int:
        self._exts[:] = array("q", [_EMPTY]) * self.window
        self._started = True
        ext = seq & 0xFFFF
        self._start = ext
        self._high = ext - 1
        return ext

    def on_packet(self, seq: int, arrival_us: int) -> None:
        """Record the arrival of transport-wide seq ``seq`` (16-bit)."""
        high = self._high
        if seq == (high + 1) & 0xFFFF and self._started:  # the next one: most packets
            ext = high + 1
            slot = ext & self._mask
            self._exts[slot] = ext  # above the highest: never recorded before
            self._arrival[slot] = arrival_us
            self._high = ext
            if ext - self._start >= self.window:  # the oldest pending would be overwritten
                start = ext - self.window + 1
                self.overflowed += start - self._start
                self._start = start
            return
        if self._started:
            d = (seq - self._high) & 0xFFFF  # unwrap: nearest to the highest so far
            if d >= 0x8000:
                d -= 0x10000
            ext = self._high + d
            if d >= self.window or -d >= self.window:
                if self.window <= -d < 2 * self.window:
                    self.too_old += 1  # a straggler, not a restart
                    return
                self.resets += 1
                ext = self._reset(seq)
        else:
            ext = self._reset(seq)
        slot = ext & self._mask
        if self._exts[slot] == ext:
            self.duplicates += 1
            return
        self._exts[slot] = ext
        self._arrival[slot] = arrival_us
        if ext > self._high:
            self._high = ext
            if ext - self._start >= self.window:  # the oldest pending would be overwritten
                start = ext - self.window + 1
                self.overflowed += start - self._start
                self._start = start
        elif ext < self._start:
            self._start = ext  # reported lost before: report again from here

    # ----------------------------------------------------------------------- output

    def next_due_ms(self, now_ms: int) -> int | None:
        """When ``poll`` will next have something to send (``None``: nothing pending)."""
        if self._start > self._high:
            return None
        last = self._last_feedback_ms
        if last is None:
            return now_ms
        if self.pending >= self.window // 2:  # early, but at most 4 times an interval
            return max(now_ms, last + self.interval_ms // 4)
        return max(now_ms, last + self.interval_ms)

    def poll(self, now_ms: int) -> list[TransportFeedback]:
        """The feedback messages due at ``now_ms`` (``[]`` when none)."""
        due = self.next_due_ms(now_ms)
        if due is None or due > now_ms:
            return []
        self._last_feedback_ms = now_ms
        return self.build()

    def build(self) -> list[TransportFeedback]:
        """Feedback for every pending status now, whatever the interval."""
        out: list[TransportFeedback] = []
        ext = self._start
        high = self._high
        while ext <= high:
            fb, ext = self._message(ext, high)
            out.append(fb)
        self._start = high + 1
        return out

    def _message(self, first: int, high: int) -> tuple[TransportFeedback, int]:
        """One message from extended seq ``first``; returns it and the next seq to report."""
        exts = self._exts
        arrival = self._arrival
        mask = self._mask
        deltas: list[int | None] = []
        delta_bytes = 0
        t_us = 0  # the receiver time the next delta is relative to (quantized)
        reference = 0
        have_reference = False
        ext = first
        limit = min(high, first + 0xFFFE)
        max_size = self.max_size
        # this many statuses fit whatever their deltas (2 bytes each, a chunk per 7): the exact
        # size check below runs only past them
        sure = (max_size - _SIZE_SLACK) * 7 // 16
        while ext <= limit:
            slot = ext & mask
            n = len(deltas)
            if exts[slot] != ext:
                if n >= sure and n and size_bound(n + 1, delta_bytes) > max_size:
                    break
                deltas.append(None)
                ext += 1
                continue
            at = arrival[slot]
            if not have_reference:
                have_reference = True
                reference = at // REFERENCE_TICK_US
                t_us = reference * REFERENCE_TICK_US
            delta = (at - t_us + DELTA_TICK_US // 2) // DELTA_TICK_US
            size = 1 if 0 <= delta <= 255 else 2
            if n and (
                not LARGE_DELTA_MIN <= delta <= LARGE_DELTA_MAX
                or (n >= sure and size_bound(n + 1, delta_bytes + size) > max_size)
            ):
                break
            deltas.append(delta)
            delta_bytes += size
            t_us += delta * DELTA_TICK_US
            ext += 1
        fb = TransportFeedback(
            self.sender_ssrc,
            self.media_ssrc,
            first & 0xFFFF,
            reference % _REFERENCE_MOD,
            self._fb_count,
            deltas,
        )
        self._fb_count = (self._fb_count + 1) & 0xFF
        return fb, ext
