"""A small deterministic bottleneck for the estimator tests (not a mock: the estimator's input,
generated the way a real queue would).

A link of capacity C (bps, may change over time) with a drop-tail queue of at most Q ms ahead
of a packet: a packet sent at ``t`` leaves at ``max(t, previous departure) + size/C`` and is
dropped when it would wait more than Q ms; then ``prop_ms`` of propagation, optional random
loss after the bottleneck and optional reordering (an extra delay for some packets).  The
sender sends at the estimate, spread evenly, and the receiver sends a transport-cc-like
feedback every ``feedback_ms`` which may itself be lost.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.transport.bwe.estimator import SendSideBwe
from sfu.transport.bwe.feedback import PacketFeedback

PACKET = 1200


@dataclass
class Link:
    capacity: Callable[[float], float]  # bps at time t (ms)
    queue_ms: float = 300.0
    prop_ms: float = 20.0
    loss: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 8.0
    seed: int = 1
    _last_departure: float = 0.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, now: float, size: int) -> float | None:
        start = max(now, self._last_departure)
        if start - now > self.queue_ms:
            return None
        departure = start + size * 8 * 1000.0 / self.capacity(now)
        self._last_departure = departure
        if self.loss and self.rng.random() < self.loss:
            return None
        recv = departure + self.prop_ms
        if self.reorder and self.rng.random() < self.reorder:
            recv += self.reorder_ms
        return recv


@dataclass
class Run:
    bwe: SendSideBwe
    link: Link
    feedback_ms: float = 50.0
    feedback_loss: float = 0.0
    tick_ms: float = 5.0
    #: called every tick with (now, run); may change the send rate via ``rate_override``
    on_tick: Callable[[float, Run], None] | None = None
    rate_override: float | None = None
    #: called with every feedback the estimator got, after it
    on_feedback: Callable[[list[PacketFeedback], float], None] | None = None
    now: float = 0.0
    seq: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    #: every packet result the estimator was given, with when
    reported: list[tuple[float, PacketFeedback]] = field(default_factory=list)
    _budget: float = 0.0
    _pending: deque[tuple[int, float, float | None, int]] = field(default_factory=deque)
    _next_fb: float = 0.0

    def send_packet(self, at: float, size: int = PACKET) -> int:
        recv = self.link.send(at, size)
        self._pending.append((self.seq, at, recv, size))
        self.seq += 1
        return self.seq - 1

    def run_until(self, end_ms: float) -> None:
        while self.now < end_ms:
            if self.on_tick is not None:
                self.on_tick(self.now, self)
            rate = self.rate_override if self.rate_override is not None else self.bwe.estimate_bps
            self._budget = min(self._budget + rate * self.tick_ms / 8000.0, 10 * PACKET)
            count = int(self._budget // PACKET)
            for i in range(count):
                self.send_packet(self.now + i * self.tick_ms / count)
            self._budget -= count * PACKET
            if self.now >= self._next_fb:
                self._feedback()
                self._next_fb = self.now + self.feedback_ms
            self.now += self.tick_ms

    def _feedback(self) -> None:
        seen = self.now - self.link.prop_ms  # what the receiver knew when it sent this feedback
        last = -1
        for i, (_, _, recv, _) in enumerate(self._pending):
            if recv is not None and recv <= seen:
                last = i
        if last < 0:
            return
        batch = [self._pending.popleft() for _ in range(last + 1)]
        if self.feedback_loss and self.link.rng.random() < self.feedback_loss:
            return
        packets = [PacketFeedback(s, t, r if r is not None and r <= seen else None, z) for s, t, r, z in batch]
        self.bwe.on_feedback(packets, self.now)
        self.reported.extend((self.now, p) for p in packets)
        if self.on_feedback is not None:
            self.on_feedback(packets, self.now)
        self.samples.append((self.now, self.bwe.estimate_bps))
        self.states.append(self.bwe.state.value)

    def estimates(self, start_ms: float, end_ms: float) -> list[int]:
        return [e for t, e in self.samples if start_ms <= t < end_ms]
