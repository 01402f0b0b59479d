"""Pacing one subscriber transport's packets (issue 12): a media budget refilled by time.

``PacedQueue`` is pure (no clock, no socket, no asyncio): every call takes ``now_ms``.  Its
``budget`` (bytes) is what may leave now; the forwarding path reads it inline:

* ``budget > 0``: the packet leaves at once and ``budget -= size`` (the common case: nothing
  queued, no call, no allocation).  A positive budget implies an empty queue (see below).
* otherwise ``admit(kind, size, now_ms)`` refills the budget by the time elapsed (at most
  ``burst_ms`` worth is saved up while idle) and says whether the packet may go now; when not,
  the caller queues a copy with ``push``.  The queue is drained by ``drain(now_ms)``, called
  every ``tick_ms`` by one event-loop timer for all transports with a queue
  (``sfu.transport.pacer_timer``), retransmissions before video; ``drain`` leaves either an empty
  queue or a budget of 0 or less, which keeps the invariant.

Audio never waits: it leaves at once whatever the budget, which it still pays for.  A
retransmission waits only for the budget, never behind video.  Padding (probes) goes only
while nothing is queued (the caller asks ``pending``).

The rate is the estimate x ``factor`` (2.5, as libwebrtc's pacer); without an estimate
(``set_rate(None)``) the budget is infinite: nothing is paced.

Bounds: at most ``max_packets`` packets and ``max_bytes`` bytes queued (beyond that the oldest
video, else the oldest retransmission, is dropped: ``PacerDrop.QUEUE_FULL``), and no packet
older than ``max_delay_ms`` is sent (``PacerDrop.QUEUE_DELAY``): a receiver that lost them
asks again (NACK, PLI).  Before that, as libwebrtc's pacer does with its queue time limit, a
queue that would not drain in time at the pacing rate (a keyframe larger than ``max_delay_ms``
at that rate) is drained faster: at its bytes over the time its oldest packet has left, so a
delay drop takes a stalled event loop.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sfu.counters import PacerDrop

__all__ = ["INFINITE", "PacedKind", "PacedQueue", "PacerDrop", "PacingConfig"]

INFINITE = float("inf")


class PacedKind(enum.IntEnum):
    AUDIO = 0
    RTX = 1  # a retransmission (a NACK answered from the cache)
    VIDEO = 2


@dataclass(frozen=True, slots=True)
class PacingConfig:
    #: pacing rate = estimate x factor
    factor: float = 2.5
    #: budget saved up while idle (ms at the pacing rate): what may leave as one burst.  The
    #: budget is refilled lazily (when it runs out), so after a pause up to two bursts' worth
    #: leaves at once: 2 x 10 ms x 2.5 = 50 ms at the estimate, more than a delta frame (33 ms
    #: at 30 fps), less than a keyframe, which is spread
    burst_ms: float = 10.0
    max_delay_ms: float = 500.0
    max_packets: int = 1024
    max_bytes: int = 1_000_000
    #: the drain timer's period
    tick_ms: float = 5.0
    #: the lowest pacing rate (bps), whatever the estimate
    min_rate_bps: int = 50_000

    def __post_init__(self) -> None:
        if not 1.0 <= self.factor <= 10.0:
            raise ValueError(f"pacer factor {self.factor} must be between 1 and 10")
        if not 1.0 <= self.burst_ms <= 100.0:
            raise ValueError(f"pacer burst {self.burst_ms} ms must be between 1 and 100")
        if not 50.0 <= self.max_delay_ms <= 5000.0:
            raise ValueError(f"pacer max delay {self.max_delay_ms} ms must be between 50 and 5000")
        if not 16 <= self.max_packets <= 65536 or not 20_000 <= self.max_bytes <= 100_000_000:
            raise ValueError("pacer queue bounds out of range (16-65536 packets, 20 kB-100 MB)")
        if not 1.0 <= self.tick_ms <= 50.0:
            raise ValueError(f"pacer tick {self.tick_ms} ms must be between 1 and 50")


class PacedQueue:
    """See the module docstring."""

    __slots__ = ("config", "budget", "rate", "queued_packets", "queued_bytes", "drops", "regroup", "on_paced", "_last_ms",
                 "_rtx", "_video")

    def __init__(self, config: PacingConfig | None = None, drops: list[int] | None = None) -> None:
        self.config = config or PacingConfig()
        #: bytes that may leave now (INFINITE: not paced)
        self.budget = INFINITE
        #: bytes per ms (0: not paced)
        self.rate = 0.0
        self.queued_packets = 0
        self.queued_bytes = 0
        #: by ``PacerDrop`` (a node-wide list may be passed in)
        self.drops = drops if drops is not None else [0] * len(PacerDrop)
        #: a fan-out group left its transport out while this had a queue (set by the routing
        #: layer): when the queue is empty the groups are to form again
        self.regroup = False
        #: called when pacing starts or stops (the transport's fan-out groups count only the
        #: budgets of paced members: they form again)
        self.on_paced: Callable[[], None] | None = None
        self._last_ms = 0.0
        self._rtx: deque[tuple[float, bytes]] = deque()
        self._video: deque[tuple[float, bytes]] = deque()

    @property
    def pending(self) -> bool:
        return self.queued_packets > 0

    def set_rate(self, estimate_bps: float | None, now_ms: float) -> None:
        """Pace at ``estimate_bps`` x factor from now on (None: stop pacing)."""
        if estimate_bps is None:
            if self.rate:
                self.rate = 0.0
                self.budget = INFINITE
                if self.on_paced is not None:
                    self.on_paced()
            return
        rate = max(estimate_bps * self.config.factor, float(self.config.min_rate_bps)) / 8000.0
        if self.rate == 0.0:  # pacing starts: one burst's worth, from now
            self.budget = rate * self.config.burst_ms
            self._last_ms = now_ms
            self.rate = rate
            if self.on_paced is not None:
                self.on_paced()
            return
        if not self.queued_packets:  # (with a queue, the next drain refills at the new rate)
            self._refill(now_ms)
            self.budget = min(self.budget, rate * self.config.burst_ms)
        self.rate = rate

    def _refill(self, now_ms: float) -> None:
        elapsed = now_ms - self._last_ms
        if elapsed > 0:
            self.budget += self.rate * elapsed
            self._last_ms = now_ms

    def admit(self, kind: PacedKind, size: int, now_ms: float) -> bool:
        """May a packet of ``size`` bytes leave now (paid for when so)?  Call it when ``budget``
        is not positive (the inline check) or for any packet; False: ``push`` it."""
        if kind is PacedKind.AUDIO or self.rate == 0.0:
            self.budget -= size
            return True
        if self.queued_packets:
            return False  # the budget is spent (drain leaves it so): the next drain sends it, RTX first
        self._refill(now_ms)
        cap = self.rate * self.config.burst_ms
        if self.budget > cap:
            self.budget = cap
        if self.budget > 0:
            self.budget -= size
            return True
        return False

    def push(self, kind: PacedKind, data: bytes, now_ms: float) -> None:
        """Queue ``data`` (a copy of the packet, ready but for its transport-wide seq and SRTP)."""
        (self._rtx if kind is PacedKind.RTX else self._video).append((now_ms, data))
        self.queued_packets += 1
        self.queued_bytes += len(data)
        config = self.config
        while self.queued_packets > config.max_packets or self.queued_bytes > config.max_bytes:
            q = self._video if self._video else self._rtx
            self.queued_bytes -= len(q.popleft()[1])
            self.queued_packets -= 1
            self.drops[PacerDrop.QUEUE_FULL] += 1

    def drain(self, now_ms: float) -> list[tuple[PacedKind, bytes, float]]:
        """What may leave now, in order (retransmissions first), with how long each waited (ms).
        Packets that waited longer than ``max_delay_ms`` are dropped."""
        out: list[tuple[PacedKind, bytes, float]] = []
        config = self.config
        elapsed = now_ms - self._last_ms
        if elapsed > 0:
            rate = self.rate
            if self.queued_packets:  # fast enough that what waits leaves within max_delay_ms
                rtx, video = self._rtx, self._video
                oldest = min(rtx[0][0] if rtx else now_ms, video[0][0] if video else now_ms)
                left = max(config.max_delay_ms - (now_ms - oldest), config.tick_ms)
                rate = max(rate, self.queued_bytes / left)
            self.budget += rate * elapsed
            self._last_ms = now_ms
        cut = now_ms - config.max_delay_ms
        for kind, q in ((PacedKind.RTX, self._rtx), (PacedKind.VIDEO, self._video)):
            while q and q[0][0] < cut:
                self.queued_bytes -= len(q.popleft()[1])
                self.queued_packets -= 1
                self.drops[PacerDrop.QUEUE_DELAY] += 1
            while q and self.budget > 0:
                queued_ms, data = q.popleft()
                self.queued_bytes -= len(data)
                self.queued_packets -= 1
                self.budget -= len(data)
                out.append((kind, data, now_ms - queued_ms))
        if not self.queued_packets:
            cap = self.rate * config.burst_ms
            if self.budget > cap:
                self.budget = cap
        return out

    def clear(self) -> None:
        self._rtx.clear()
        self._video.clear()
        self.queued_packets = 0
        self.queued_bytes = 0
