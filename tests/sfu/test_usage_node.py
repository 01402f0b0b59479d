"""sfu.api.usage.NodeUsage with an injected clock: the total a node answers never goes down while
its meter is being written, the quota refuses at its minutes, and under a control plane one
report is re-sent with its id until a heartbeat is answered, whose total and quota it adopts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from levelchat.errors import ApiError
from levelchat.usage.meter import JoinKind, RecordingMinutes, period_start_ms
from sfu.api.usage import NodeUsage
from sfu.config import load

T0 = 1_796_400_000_000  # 2026-12-04
P = period_start_ms(T0)


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


async def test_the_total_never_drops_while_the_meter_is_written_and_the_quota_refuses(tmp_path: Path) -> None:
    cfg = load(dev=True, environ={}, flags={"usage_db": str(tmp_path / "u.db"), "usage_flush_s": 3600,
                                            "quota_participant_minutes": 1.0})
    clock = Clock()
    usage = NodeUsage(cfg, now_ms=clock)
    await usage.start(0)
    try:
        usage.meter.join("a", clock.ms)
        clock.ms += 20_000
        flushing = asyncio.ensure_future(usage.flush())
        await asyncio.sleep(0)  # the flush has taken the meter and waits on its thread
        assert usage.current().participant_ms == 20_000
        await flushing
        assert usage.current().participant_ms == 20_000
        usage.check_quota(JoinKind.WHIP)
        usage.meter.join("b", clock.ms)
        clock.ms += 19_999  # a: 39.999 s, b: 19.999 s
        usage.check_quota(JoinKind.WHIP)  # 59.998 s of a 60 s quota
        clock.ms += 1
        with pytest.raises(ApiError) as refused:  # 60 s exactly is used up
            usage.check_quota(JoinKind.WHIP)
        assert refused.value.code == "quota_exceeded"
        with pytest.raises(ApiError):
            usage.check_quota(JoinKind.RTC)
        recorder: RecordingMinutes = usage
        recorder.add_recording(clock.ms - 90_000, clock.ms)
        assert usage.current().to_json()["recording_minutes"] == 1.5
        # /metrics: each refusal counted where it happened, the time counted, the period's total
        figures = usage.figures()
        assert figures.refusals == {JoinKind.WHIP: 1, JoinKind.WHEP: 0, JoinKind.RTC: 1}
        assert (figures.participant_ms_total, figures.recording_ms_total) == (60_000, 90_000)
        assert figures.period == usage.current()
    finally:
        await usage.stop()
    again = NodeUsage(cfg, now_ms=clock)
    await again.start(0)
    try:
        assert again.current().participant_ms == 60_000  # written at stop
        assert again.current().recording_ms == 90_000
    finally:
        await again.stop()


def test_under_a_control_plane_a_report_is_resent_until_answered() -> None:
    cfg = load(dev=True, environ={}, flags={"control_url": "http://127.0.0.1:9/"})
    clock = Clock()
    usage = NodeUsage(cfg, now_ms=clock)
    assert usage.reporting and usage.report() is None  # nothing accrued: nothing sent
    usage.meter.join("a", clock.ms)
    clock.ms += 5_000
    first = usage.report()
    assert first is not None and first["participant_ms"] == {str(P): 5_000}
    clock.ms += 5_000
    assert usage.report() == first  # no answer yet: the same id and amounts
    assert usage.current().participant_ms == 10_000  # the one on its way, and the meter's
    usage.answered({"usage": {"period_ms": P, "participant_ms": 65_000, "recording_ms": 0,
                              "quota_participant_minutes": 1.0}})
    assert usage.current().participant_ms == 70_000 and usage.quota == 1.0
    with pytest.raises(ApiError):
        usage.check_quota(JoinKind.WHIP)
    second = usage.report()
    assert second is not None and second["id"] != first["id"] and second["participant_ms"] == {str(P): 5_000}


def test_a_relayed_participant_counts_at_its_own_worker_only() -> None:
    from sfu.routing.events import RoomEvent, RoomEventKind
    from sfu.routing.participant import Participant, ParticipantKind
    from sfu.routing.rooms import Room, RoomPolicy

    cfg = load(dev=True, environ={}, flags={"control_url": "http://127.0.0.1:9/"})
    clock = Clock()
    usage = NodeUsage(cfg, now_ms=clock)
    room = Room("r", RoomPolicy(10, ("opus",), 30), T0)
    here = Participant("alice", "r", ParticipantKind.RTC)
    far = Participant("bob", "r", ParticipantKind.RTC, relay="w0-w1-1")
    for p in (here, far):
        usage.on_event(RoomEvent(RoomEventKind.JOINED, room, p))
    clock.ms += 5_000
    usage.on_event(RoomEvent(RoomEventKind.ROOM_CLOSED, room, participants=(here, far)))
    report = usage.report()
    assert report is not None and report["participant_ms"] == {str(P): 5_000}  # alice's only
