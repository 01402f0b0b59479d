"""Room placement over workers and the pins that keep rooms on them (pure, table-driven)."""

from __future__ import annotations

import pytest

from sfu.workers.placement import PENDING_GRACE_MS, RECENT_RETENTION_MS, PinTable, Route, WorkerLoad, choose


def w(index: int, participants: int = 0, rooms: int = 0, *, up: bool = True, ready: bool = True) -> WorkerLoad:
    return WorkerLoad(index=index, up=up, ready=ready, participants=participants, rooms=rooms)


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([], None),
        ([w(0)], 0),
        ([w(0), w(1)], 0),  # a tie goes to the lower index
        ([w(0, participants=3), w(1, participants=1)], 1),
        ([w(0, participants=2, rooms=1), w(1, participants=2, rooms=3)], 0),  # participants tie: rooms
        ([w(0, participants=0, rooms=9), w(1, participants=1, rooms=0)], 0),  # participants first
        ([w(0, up=False), w(1, participants=50)], 1),
        ([w(0, ready=False), w(1, participants=50)], 1),  # a ready worker before a less loaded failing one
        ([w(0, ready=False, participants=5), w(1, ready=False, participants=1)], 1),  # none ready: least loaded up
        ([w(0, up=False), w(1, up=False)], None),
    ],
)
def test_choose(loads: list[WorkerLoad], expected: int | None) -> None:
    assert choose(loads) == expected


def test_new_rooms_spread_before_any_report() -> None:
    pins = PinTable()
    loads = [w(0), w(1)]
    placed = [pins.route(f"room-{i}", creating=True, loads=loads, now_ms=0) for i in range(4)]
    assert placed == [(0, Route.PLACED), (1, Route.PLACED), (0, Route.PLACED), (1, Route.PLACED)]
    assert pins.pending(0) == pins.pending(1) == 2


def test_a_pin_is_kept_while_the_worker_lists_the_room() -> None:
    pins = PinTable()
    assert pins.route("alpha", creating=True, loads=[w(0), w(1)], now_ms=0) == (0, Route.PLACED)
    pins.reconcile(0, ["alpha"], now_ms=100)
    # worker 0 is now far busier, yet the room stays where it is, for every kind of request
    busy = [w(0, participants=90, rooms=1), w(1)]
    for creating in (True, False):
        assert pins.route("alpha", creating=creating, loads=busy, now_ms=PENDING_GRACE_MS * 10) == (0, Route.PINNED)
    pins.reconcile(0, ["alpha"], now_ms=PENDING_GRACE_MS * 10)
    assert pins.worker_of("alpha") == 0


def test_a_closed_room_is_unpinned_and_remembered_for_its_worker() -> None:
    pins = PinTable()
    pins.route("alpha", creating=True, loads=[w(0), w(1)], now_ms=0)
    pins.reconcile(0, ["alpha"], now_ms=10)
    pins.reconcile(0, [], now_ms=20)  # closed
    assert pins.worker_of("alpha") is None
    loads = [w(0, participants=5), w(1)]
    # asking about it (GET of a closed room) reaches the worker that remembers it...
    assert pins.route("alpha", creating=False, loads=loads, now_ms=30) == (0, Route.RECENT)
    # ...for 24 h
    assert pins.route("alpha", creating=False, loads=loads, now_ms=30 + RECENT_RETENTION_MS) == (1, Route.ANY)
    # a new join places it afresh
    assert pins.route("alpha", creating=True, loads=loads, now_ms=40) == (1, Route.PLACED)


@pytest.mark.parametrize(
    ("reported_at", "kept"),
    [(PENDING_GRACE_MS - 1, True), (PENDING_GRACE_MS + 1, False)],
)
def test_a_pending_pin_lapses_when_its_room_never_shows_up(reported_at: int, kept: bool) -> None:
    pins = PinTable()
    pins.route("refused", creating=True, loads=[w(0)], now_ms=0)
    pins.reconcile(0, [], now_ms=reported_at)  # a report that does not list it yet
    assert (pins.worker_of("refused") == 0) is kept


def test_requests_that_create_nothing_make_no_pin() -> None:
    pins = PinTable()
    assert pins.route("ghost", creating=False, loads=[w(0, participants=1), w(1)], now_ms=0) == (1, Route.ANY)
    assert pins.worker_of("ghost") is None
    assert pins.route("ghost", creating=False, loads=[w(0, up=False)], now_ms=0) == (None, Route.ANY)


def test_a_room_a_worker_lists_without_a_pin_is_adopted() -> None:
    pins = PinTable()
    pins.reconcile(1, ["found"], now_ms=0)
    assert pins.route("found", creating=True, loads=[w(0), w(1, participants=9)], now_ms=1) == (1, Route.PINNED)


def test_a_confirmed_pin_wins_over_another_workers_listing() -> None:
    pins = PinTable()
    pins.route("alpha", creating=True, loads=[w(0), w(1)], now_ms=0)
    pins.reconcile(0, ["alpha"], now_ms=1)
    pins.reconcile(1, ["alpha"], now_ms=2)
    assert pins.worker_of("alpha") == 0


def test_a_dead_worker_loses_its_pins_and_its_memory() -> None:
    pins = PinTable()
    loads = [w(0), w(1)]
    for room in ("a-room", "b-room", "c-room"):
        pins.route(room, creating=True, loads=loads, now_ms=0)
    pins.reconcile(0, ["a-room", "c-room", "old-room"], now_ms=1)
    pins.reconcile(0, ["a-room", "c-room"], now_ms=2)  # old-room closed: remembered on worker 0
    assert sorted(pins.drop_worker(0)) == ["a-room", "c-room"]
    assert pins.worker_of("b-room") == 1
    assert "old-room" not in pins.recent
    # the next join of a lost room goes to a live worker
    assert pins.route("a-room", creating=True, loads=[w(0, up=False), w(1)], now_ms=3) == (1, Route.PLACED)


def test_a_pin_to_a_worker_that_is_down_is_not_used() -> None:
    pins = PinTable()
    pins.route("alpha", creating=True, loads=[w(0), w(1)], now_ms=0)
    assert pins.route("alpha", creating=False, loads=[w(0, up=False), w(1)], now_ms=1) == (1, Route.ANY)
