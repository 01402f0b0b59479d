"""``PacedQueue`` with an injected clock: the budget, what waits and in which order it leaves,
the bounds and what they drop.  A scenario is a list of steps at given times: packets offered
(sent at once when ``admit`` says so, else queued) and timer ticks (``drain``); the result is
what left when, in order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sfu.transport.pacer import INFINITE, PacedKind, PacedQueue, PacerDrop, PacingConfig

A, R, V = PacedKind.AUDIO, PacedKind.RTX, PacedKind.VIDEO
MTU = 1200
#: 400 kbit/s x 2.5 = 1 Mbit/s = 125 bytes a ms: a 1,200-byte packet every 9.6 ms
ESTIMATE = 400_000


@dataclass(frozen=True)
class Offer:
    at: float
    kind: PacedKind
    name: str
    size: int = MTU


@dataclass(frozen=True)
class Tick:
    at: float


#: bursts of 5 ms: 625 bytes at 1 Mbit/s (the default is 10 ms)
BURST5 = PacingConfig(burst_ms=5.0)


def run(steps: list[Offer | Tick], *, config: PacingConfig = BURST5, estimate: int | None = ESTIMATE,
        start: float = 0.0) -> tuple[list[tuple[float, str]], PacedQueue]:
    q = PacedQueue(config)
    q.set_rate(estimate, start)
    sent: list[tuple[float, str]] = []
    for step in steps:
        if isinstance(step, Offer):
            data = step.name.encode().ljust(step.size, b".")
            if q.budget > 0 and step.kind is not A:  # the inline check of the send paths
                q.budget -= step.size
                sent.append((step.at, step.name))
            elif q.admit(step.kind, step.size, step.at):
                sent.append((step.at, step.name))
            else:
                q.push(step.kind, data, step.at)
        else:
            for _, got, _ in q.drain(step.at):
                sent.append((step.at, got.rstrip(b".").decode()))
    return sent, q


def ticks(start: float, end: float, every: float = 5.0) -> list[Tick]:
    out = []
    t = start
    while t <= end:
        out.append(Tick(t))
        t += every
    return out


def merge(*parts: list[Offer | Tick]) -> list[Offer | Tick]:
    """Steps by time; at one time, offers before the tick (the timer runs after the packet)."""
    steps = [s for part in parts for s in part]
    return sorted(steps, key=lambda s: (s.at, isinstance(s, Tick)))


def keyframe(at: float, count: int, prefix: str = "v") -> list[Offer | Tick]:
    return [Offer(at, V, f"{prefix}{i}") for i in range(count)]


CASES = {
    # no estimate: nothing paced, everything at once
    "unpaced": (dict(estimate=None), keyframe(0, 40), [(0.0, f"v{i}") for i in range(40)]),
    # a small frame within one burst's budget (5 ms x 125 B/ms = 625 B): it leaves at once
    "small frame at once": ({}, [Offer(0, V, "v0", 300), Offer(0, V, "v1", 300)], [(0.0, "v0"), (0.0, "v1")]),
    # a burst of 5: the first at once (budget 625 > 0: -575 after it), then one whenever the
    # 5 ms ticks have brought the budget above 0 again (+625 each): 1,200 B per 9.6 ms on average
    "burst spread": ({}, merge(keyframe(0, 5), ticks(5, 60)),
                     [(0.0, "v0"), (5.0, "v1"), (15.0, "v2"), (25.0, "v3"), (35.0, "v4")]),
    # audio never waits behind a queue, whatever the budget
    "audio through": ({}, merge(keyframe(0, 3), [Offer(1, A, "a0", 100), Offer(2, A, "a1", 100)], ticks(5, 30)),
                      [(0.0, "v0"), (1.0, "a0"), (2.0, "a1"), (10.0, "v1"), (20.0, "v2")]),  # audio paid 200 B
    # a retransmission queued after video leaves before it
    "rtx first": ({}, merge(keyframe(0, 3), [Offer(1, R, "r0")], ticks(5, 40)),
                  [(0.0, "v0"), (5.0, "r0"), (15.0, "v1"), (25.0, "v2")]),
    # nothing queued and budget saved up: a retransmission goes at once
    "rtx at once": ({}, [Offer(0, V, "v0"), Tick(20), Offer(21, R, "r0")], [(0.0, "v0"), (21.0, "r0")]),
    # idle time saves at most a burst (625 B), not 100 ms worth (12.5 kB): the budget left (525 B)
    # lets v0 go, the refill (capped) v1; the budget is refilled lazily, so after idle time up to
    # two bursts' worth may leave at once.  Then the rate again.
    "idle saves a burst": ({}, merge([Offer(0, V, "x", 100)], keyframe(100, 4), ticks(105, 130)),
                           [(0.0, "x"), (100.0, "v0"), (100.0, "v1"), (105.0, "v2"), (115.0, "v3")]),
    # a late timer (a loaded loop) catches up: the budget of the whole gap is spent
    "late tick catches up": ({}, merge(keyframe(0, 4), [Tick(30)]), [(0.0, "v0"), (30.0, "v1"), (30.0, "v2"), (30.0, "v3")]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pacing(name: str) -> None:
    kwargs, steps, want = CASES[name]
    sent, q = run(steps, **kwargs)  # type: ignore[arg-type]
    assert sent == want
    assert not q.pending


def test_the_rate_is_the_estimate_times_the_factor_and_held_over_a_long_burst() -> None:
    """A 40-packet keyframe at 400 kbit/s x 2.5: it leaves over 40 x 9.6 ms; the spacing is the
    pacing rate (1 Mbit/s) within the timer's 5 ms grain."""
    sent, q = run(merge(keyframe(0, 40), ticks(5, 700)))
    assert len(sent) == 40 and q.drops == [0, 0]
    span_ms = sent[-1][0] - sent[0][0]
    assert 39 * 9.6 - 5 <= span_ms <= 39 * 9.6 + 5
    rate_bps = 39 * MTU * 8 / (span_ms / 1000)
    assert 0.95e6 <= rate_bps <= 1.05e6
    # no tick sends more than the 5 ms grain's worth plus one packet
    per_tick: dict[float, int] = {}
    for at, _ in sent:
        per_tick[at] = per_tick.get(at, 0) + 1
    assert max(per_tick.values()) == 1
    assert q.budget <= 125 * 5


def test_a_queue_that_would_not_drain_within_the_max_delay_is_drained_faster() -> None:
    """30 packets (36 kB) at 125 B/ms need 288 ms; with a 100 ms limit the pacer speeds up (its
    bytes over the time its oldest packet has left) and nothing is dropped."""
    sent, q = run(merge(keyframe(0, 30), ticks(5, 400)), config=PacingConfig(burst_ms=5.0, max_delay_ms=100.0))
    assert len(sent) == 30 and q.drops == [0, 0]
    assert sent[-1][0] <= 100
    assert sent[-1][0] >= 60  # spread all the same, not one burst


def test_queued_video_older_than_the_max_delay_is_dropped_and_counted() -> None:
    """A stalled loop: the timer comes 600 ms late; what waited over 500 ms is dropped."""
    sent, q = run(merge(keyframe(0, 30), [Offer(550, V, "late")], [Tick(600), Tick(605)]))
    assert sent[0] == (0.0, "v0")
    assert q.drops[PacerDrop.QUEUE_DELAY] == 29 and q.drops[PacerDrop.QUEUE_FULL] == 0
    assert sent[1:] == [(600.0, "late")]
    assert q.queued_bytes == 0 and not q.pending


def test_the_queue_is_bounded_in_packets_and_bytes_oldest_video_first() -> None:
    q = PacedQueue(PacingConfig(burst_ms=5.0, max_packets=16, max_bytes=100_000))
    q.set_rate(ESTIMATE, 0)
    assert q.admit(V, MTU, 0)  # the burst's budget
    q.push(R, b"r" * MTU, 0)
    for i in range(30):
        q.push(V, bytes([i]) * MTU, 0)
    assert q.queued_packets == 16 and q.queued_bytes == 16 * MTU
    assert q.drops[PacerDrop.QUEUE_FULL] == 15
    # the retransmission stayed (the oldest video went first) and leaves first, then the newest
    # 15 video packets in order
    q.budget = 0.0
    out = q.drain(100)  # 100 ms x 125 B/ms: 12,500 B, eleven packets (the last one on credit)
    assert [kind for kind, _, _ in out] == [R] + [V] * 10
    assert [data[0] for _, data, _ in out[1:]] == list(range(15, 25))
    assert [waited for _, _, waited in out] == [100.0] * 11
    # and in bytes: 20 kB of 1,000-byte packets
    small = PacedQueue(PacingConfig(max_packets=1000, max_bytes=20_000))
    small.set_rate(ESTIMATE, 0)
    for i in range(30):
        small.push(V, bytes([i]) * 1000, 0)
    assert small.queued_bytes == 20_000 and small.queued_packets == 20
    assert small.drops[PacerDrop.QUEUE_FULL] == 10


def test_a_new_estimate_changes_the_rate_and_none_stops_pacing() -> None:
    q = PacedQueue(BURST5)
    assert q.budget == INFINITE and q.admit(V, MTU, 0)
    q.set_rate(ESTIMATE, 0)
    assert q.budget == pytest.approx(125 * 5)
    q.budget = -MTU
    q.set_rate(ESTIMATE * 2, 10)  # refilled at the old rate up to now, then the new one
    assert q.rate == pytest.approx(250)
    assert q.budget == pytest.approx(-MTU + 1250)
    q.set_rate(None, 20)
    assert q.budget == INFINITE and q.admit(V, MTU, 20)
    assert q.budget == INFINITE


def test_min_rate_and_config_bounds() -> None:
    q = PacedQueue()
    q.set_rate(1_000, 0)
    assert q.rate == pytest.approx(50_000 / 8000)
    for bad in (dict(factor=0.5), dict(burst_ms=0.0), dict(max_delay_ms=10.0), dict(max_packets=1),
                dict(max_bytes=10), dict(tick_ms=500.0)):
        with pytest.raises(ValueError):
            PacingConfig(**bad)  # type: ignore[arg-type]


def test_starting_and_stopping_pacing_is_told() -> None:
    """The transport's fan-out groups count only paced members' budgets: they form again when
    pacing starts or stops, not on every new estimate."""
    q = PacedQueue()
    calls: list[float] = []
    q.on_paced = lambda: calls.append(q.rate)
    q.set_rate(None, 0)
    q.set_rate(ESTIMATE, 10)
    q.set_rate(ESTIMATE * 2, 20)
    q.set_rate(None, 30)
    q.set_rate(None, 40)
    assert calls == [125.0, 0.0]
