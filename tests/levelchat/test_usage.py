"""Usage accounting units: billing periods, the meter (injected clock), the SQLite book
(increments, idempotent reports, two connections on one file)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from levelchat.sqlitefile import retry_busy
from levelchat.usage.book import UsageBook
from levelchat.usage.meter import Usage, UsageMeter, next_period_ms, period_start_ms, split


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "start_day", "period", "following"),
    [
        (ms(2026, 12, 5, 7, 44), 1, ms(2026, 12, 1), ms(2027, 1, 1)),  # December wraps to January
        (ms(2026, 12, 1), 1, ms(2026, 12, 1), ms(2027, 1, 1)),  # the first millisecond is in
        (ms(2026, 12, 1) - 1, 1, ms(2026, 11, 1), ms(2026, 12, 1)),
        (ms(2026, 12, 5), 15, ms(2026, 11, 15), ms(2026, 12, 15)),  # before the start day: last month's
        (ms(2027, 1, 3), 15, ms(2026, 12, 15), ms(2027, 1, 15)),  # ... across the year
        (ms(2027, 2, 28, 23, 59), 28, ms(2027, 2, 28), ms(2027, 3, 28)),
    ],
)
def test_periods(now: int, start_day: int, period: int, following: int) -> None:
    assert period_start_ms(now, start_day) == period
    assert next_period_ms(period, start_day) == following


@pytest.mark.parametrize("day", [0, 29, -1])
def test_a_start_day_past_28_is_refused(day: int) -> None:
    with pytest.raises(ValueError, match="1 to 28"):
        period_start_ms(0, day)


def test_split_cuts_at_period_boundaries() -> None:
    jan, feb = ms(2027, 1, 1), ms(2027, 2, 1)
    assert split(jan - 1000, jan + 500) == {ms(2026, 12, 1): 1000, jan: 500}
    assert split(jan, feb) == {jan: feb - jan}
    assert split(jan, jan) == {} and split(jan, jan - 5) == {}


def test_the_meter_counts_live_and_left_participants_once() -> None:
    start = ms(2026, 12, 5)
    m = UsageMeter()
    m.join("a", start)
    m.join("b", start + 1000)
    m.join("a", start + 5000)  # a second JOINED of the same sid changes nothing
    assert m.pending(start + 3000) == ({ms(2026, 12, 1): 3000 + 2000}, {})
    m.leave("b", start + 4000)
    m.leave("b", start + 9000)  # only once
    assert m.take(start + 6000) == ({ms(2026, 12, 1): 6000 + 3000}, {})
    assert m.take(start + 6000) == ({}, {})  # taken: not counted again
    m.add_recording(start, start + 60_000)
    m.leave("a", start + 10_000)
    assert m.take(start + 20_000) == ({ms(2026, 12, 1): 4000}, {ms(2026, 12, 1): 60_000})
    assert m.live == {} and m.closed == {}


def test_a_participant_across_the_period_end_counts_in_both() -> None:
    jan = ms(2027, 1, 1)
    m = UsageMeter()
    m.join("a", jan - 30_000)
    assert m.take(jan + 90_000) == ({ms(2026, 12, 1): 30_000, jan: 90_000}, {})


@pytest.mark.parametrize(
    ("used_ms", "quota", "exhausted"),
    [(0, 0.0, False), (10**9, 0.0, False), (59_999, 1.0, False), (60_000, 1.0, True), (3_000, 0.05, True)],
)
def test_the_quota_is_used_up_at_its_minutes(used_ms: int, quota: float, exhausted: bool) -> None:
    assert Usage(0, used_ms, 0, quota).exhausted is exhausted


def test_usage_json_is_the_contracts() -> None:
    body = Usage(ms(2026, 12, 1), 90_000, 30_000, 100.0).to_json()
    assert body == {
        "period_start": "2026-12-01T00:00:00Z",
        "participant_minutes": 1.5,
        "recording_minutes": 0.5,
        "quota": {"participant_minutes": 100.0},
    }
    assert Usage(0, 0, 0).to_json()["quota"] == {}
    # rounded down: 2,999 ms is 0.049 minutes, not the 0.05 a 0.05-minute quota refuses at
    assert Usage(0, 2_999, 59, 0.05).to_json()["participant_minutes"] == 0.049
    assert Usage(0, 3_000, 59, 0.05).to_json()["participant_minutes"] == 0.05
    assert Usage(0, 2_999, 59, 0.05).to_json()["recording_minutes"] == 0.0


def test_the_book_adds_per_project_and_period_and_applies_a_report_once(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    a, b = UsageBook(path), UsageBook(path)  # two processes' connections on one file
    try:
        assert a.add("p", {1: 1000, 2: 5}, {1: 7})
        assert b.add("p", {1: 500}, {})
        assert a.add("other", {1: 99}, {})
        assert a.get("p", 1) == (1500, 7) and b.get("p", 2) == (5, 0) and a.get("p", 3) == (0, 0)
        assert a.add("p", {1: 100}, {}, report_id="node-1:7", now_ms=10)
        assert not b.add("p", {1: 100}, {}, report_id="node-1:7", now_ms=11)  # a retried report
        assert a.get("p", 1) == (1600, 7)
    finally:
        a.close()
        b.close()
    reopened = UsageBook(path)
    try:
        assert reopened.get("p", 1) == (1600, 7) and reopened.get("other", 1) == (99, 0)
    finally:
        reopened.close()


def _open_and_add(path: str, start: Any) -> None:
    start.wait()
    book = UsageBook(path)
    book.add("proj", {0: 1}, {})
    book.close()


def test_processes_opening_a_new_book_at_once_all_open_it(tmp_path: Path) -> None:
    """The workers of a multi-worker node open the same new file at the same moment: switching it
    to WAL refused all but one with "database is locked" (a 2-worker node did not start in CI)."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(4):
        path = str(tmp_path / f"usage-{attempt}.db")
        start = context.Barrier(6)
        procs = [context.Process(target=_open_and_add, args=(path, start)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * 6
        book = UsageBook(path)
        assert book.get("proj", 0) == (6, 0)
        book.close()


def test_opening_waits_out_a_lock_but_not_other_errors() -> None:
    calls: list[float] = []

    def locked_twice() -> None:
        calls.append(0.0)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")

    slept: list[float] = []
    retry_busy(locked_twice, 10.0, sleep=slept.append)
    assert len(calls) == 3 and slept == [0.005, 0.01]

    def broken() -> None:
        raise sqlite3.OperationalError("no such table: usage")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(broken, 10.0, sleep=slept.append)

    def always_locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(always_locked, 0.0, sleep=slept.append)
