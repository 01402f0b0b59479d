"""Where a WebSocket join of a room goes on a multi-worker node (``FrontRelays.choose``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sfu.config import load
from sfu.workers.spread import FrontRelays
from sfu.workers.supervisor import Worker, WorkerState


class _Sup:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers


def _front(spread: bool, participants: list[int], *, ready: list[bool] | None = None, cap: int = 3) -> FrontRelays:
    cfg = replace(load(dev=True, environ={}, flags={}), relay_spread=spread, max_participants=cap)
    workers = []
    for i, n in enumerate(participants):
        w = Worker(i, cfg, f"/tmp/w{i}.sock", state=WorkerState.UP)
        w.status = {"participants": n, "ready": True if ready is None else ready[i]}
        w.session = object()  # type: ignore[assignment]
        workers.append(w)
    return FrontRelays(cfg, _Sup(workers))  # type: ignore[arg-type]


def _pick(f: FrontRelays, room: str = "r", home: int = 0) -> int:
    return f.choose(room, f.workers[home]).index


def test_a_room_stays_on_its_home_while_it_has_a_seat() -> None:
    f = _front(False, [2, 0])
    assert _pick(f) == 0


def test_a_full_home_sends_joins_to_the_other_workers_with_the_fewest_of_the_room() -> None:
    f = _front(False, [3, 0, 0])
    assert _pick(f) == 1
    with f.session("r", f.workers[1]):
        assert _pick(f) == 2  # worker 1 has one of the room's sessions now
        with f.session("other", f.workers[2]):
            assert _pick(f) == 2  # another room's sessions do not count
    assert f.room_sockets == {}


def test_a_full_home_with_nowhere_else_to_go_keeps_the_join_it_refuses_itself() -> None:
    f = _front(False, [3, 0], ready=[True, False])
    assert _pick(f) == 0


def test_relay_spread_spreads_every_room_evenly() -> None:
    f = _front(True, [0, 0])
    picks: list[int] = []
    sessions: list[Any] = []
    for _ in range(4):
        w = _pick(f)
        picks.append(w)
        cm = f.session("r", f.workers[w])
        cm.__enter__()
        sessions.append(cm)
    assert picks == [0, 1, 0, 1]
    for cm in sessions:
        cm.__exit__(None, None, None)
    assert f.room_sockets == {}


def test_one_worker_never_spreads() -> None:
    assert _pick(_front(True, [5])) == 0
