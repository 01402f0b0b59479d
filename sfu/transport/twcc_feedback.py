"""Transport-cc feedback to publishers: the receive side of transport-wide congestion control, wired.

A publisher that negotiated the transport-wide-cc header extension numbers every packet it sends
on its transport (media, RTX, padding probes) with one transport-wide sequence number.  The node
records when each arrives (``PublisherFeedback.on_rtp``, called by ``PeerTransport.on_srtp`` for
every authenticated RTP packet) into a ``FeedbackBuilder`` (``sfu.transport.twcc_recv``), and a
``FeedbackTimer`` sends what was recorded as transport-cc feedback (SRTCP, RTPFB fmt 15) every
``interval_ms`` while packets arrive.  The publisher's own estimator (GCC in libwebrtc) reads the
arrival times against its send times and adapts its bitrate and simulcast layers to its uplink.

Costs: per packet, an inline walk of the one-byte header extension block for one id, a clock
read and ``FeedbackBuilder.on_packet`` (two array stores, no allocation); per tick, work for the
transports that had packets since the previous tick only (the timer keeps just those, and stops
when none has any).

* Arrival times: ``time.monotonic_ns()`` when the packet is handled (microseconds), the clock
  libwebrtc and mediasoup also read at processing time: queueing in the node's socket buffer
  shows as delay, like any other queue on the path.
* Media SSRC of the feedback: the SSRC of the packet that started the current run of feedback
  (libwebrtc puts that of a recent packet; receivers ignore it); sender SSRC: the node's.
* Counters (``MediaCounters``): messages sent (``twcc_feedback_out``), sequence numbers the
  builder could not use (``twcc_dropped`` by ``TwccDrop``), added at each flush.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sfu.counters import MediaCounters, TwccDrop
from sfu.packet.twcc import read_seq
from sfu.transport.twcc_recv import FeedbackBuilder

__all__ = ["FeedbackTimer", "PublisherFeedback"]

_monotonic_ns = time.monotonic_ns


class PublisherFeedback:
    """One publisher transport's transport-cc feedback: its builder and where the messages go."""

    __slots__ = ("_send", "_timer", "_want", "armed", "builder", "ext_id")

    def __init__(self, ext_id: int, sender_ssrc: int, send: Callable[[bytes], bool], timer: FeedbackTimer) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError(f"transport-wide cc extension id {ext_id} out of range 1-255")
        self.ext_id = ext_id
        #: the one-byte form's element header of a 2-byte value under ``ext_id`` (0: two-byte id)
        self._want = (ext_id << 4) | 1 if ext_id <= 14 else 0
        self.builder = FeedbackBuilder(sender_ssrc, interval_ms=timer.interval_ms)
        self._send = send
        self._timer = timer
        #: the timer holds this transport (it had packets since its last tick)
        self.armed = False

    def on_rtp(self, view: memoryview, length: int) -> None:
        """Record the arrival of one authenticated RTP packet (clear, ``view[:length]``)."""
        b0 = view[0]
        if not b0 & 0x10:  # no header extension
            return
        pos = 12 + (b0 & 0x0F) * 4
        if pos + 4 > length:
            return
        want = self._want
        if want and view[pos] == 0xBE and view[pos + 1] == 0xDE:  # one-byte form, inline
            end = pos + 4 + ((view[pos + 2] << 8) | view[pos + 3]) * 4
            if end > length:
                return
            pos += 4
            while True:
                if pos >= end:
                    return
                h = view[pos]
                if h == want:
                    if pos + 3 > end:
                        return
                    seq = (view[pos + 1] << 8) | view[pos + 2]
                    break
                if h < 16:  # padding
                    pos += 1
                elif h >= 0xF0:  # id 15: stop (RFC 8285 §4.2)
                    return
                else:
                    pos += 2 + (h & 0x0F)
        else:
            seq = read_seq(view, length, self.ext_id)
            if seq < 0:
                return
        self.builder.on_packet(seq, _monotonic_ns() // 1000)
        if not self.armed:
            self.armed = True
            self.builder.media_ssrc = (view[8] << 24) | (view[9] << 16) | (view[10] << 8) | view[11]
            self._timer.arm(self)

    def flush(self, counters: MediaCounters) -> bool:
        """Send the feedback for every packet recorded since the last flush; False when there was
        none (the timer then lets this transport go until its next packet)."""
        builder = self.builder
        messages = builder.build()
        dropped = counters.twcc_dropped
        if builder.too_old or builder.duplicates or builder.overflowed or builder.resets:
            dropped[TwccDrop.TOO_OLD] += builder.too_old
            dropped[TwccDrop.DUPLICATE] += builder.duplicates
            dropped[TwccDrop.OVERFLOWED] += builder.overflowed
            dropped[TwccDrop.RESET] += builder.resets
            builder.too_old = builder.duplicates = builder.overflowed = builder.resets = 0
        for message in messages:
            if self._send(bytes(message)):
                counters.twcc_feedback_out += 1
        return bool(messages)

    def close(self) -> None:
        self._timer.discard(self)
        self.armed = False


class FeedbackTimer:
    """One event-loop timer for the transport-cc feedback of all publisher transports: every
    ``interval_ms`` it flushes those that had packets since the previous tick; it is not
    scheduled while none has."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: MediaCounters, interval_ms: int = 100) -> None:
        if not 1 <= interval_ms <= 1000:
            raise ValueError(f"feedback interval {interval_ms} ms out of range 1-1000")
        self.interval_ms = interval_ms
        self._loop = loop
        self._counters = counters
        self._pending: set[PublisherFeedback] = set()
        self._handle: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Transports the next tick flushes."""
        return len(self._pending)

    def arm(self, feedback: PublisherFeedback) -> None:
        self._pending.add(feedback)
        if self._handle is None:
            self._handle = self._loop.call_later(self.interval_ms / 1000, self._tick)

    def discard(self, feedback: PublisherFeedback) -> None:
        self._pending.discard(feedback)
        if not self._pending and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self) -> None:
        """Flush every pending transport; those that had nothing to report leave the set."""
        idle = [fb for fb in self._pending if not fb.flush(self._counters)]
        for fb in idle:
            fb.armed = False
            self._pending.discard(fb)

    def _tick(self) -> None:
        self._handle = None
        self.tick()
        if self._pending:
            self._handle = self._loop.call_later(self.interval_ms / 1000, self._tick)

    def close(self) -> None:
        for fb in self._pending:
            fb.armed = False
        self._pending.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
