"""sfu.workers.usage.FrontUsage on a real usage file: it reports what the workers wrote since its
last report, one report at a time; an answer for a heartbeat that carried no report acknowledges
nothing; a front restarted before the answer sends the same report (same id) again."""

from __future__ import annotations

from pathlib import Path

from levelchat.usage.book import UsageBook
from levelchat.usage.meter import period_start_ms
from sfu.workers.usage import FrontUsage

T0 = 1_796_400_000_000
P = period_start_ms(T0)


async def test_reports_follow_the_file_and_survive_a_restart_unanswered(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    worker = UsageBook(path)  # a worker's connection
    front = FrontUsage(path, "proj", 1, 3600, now_ms=lambda: T0)
    await front.start()
    try:
        await front.prepare()
        assert front.report() is None  # nothing written yet
        worker.add("proj", {P: 4000}, {})
        await front.answered()  # the answer to a heartbeat without a report: nothing to acknowledge
        await front.prepare()
        assert front.pending is not None and front.pending.participant_ms == {P: 4000}
        first = front.report()
        assert first is not None and first["participant_ms"] == {str(P): 4000}
        worker.add("proj", {P: 1000}, {P: 50})
        await front.prepare()
        assert front.report() == first  # on its way: not replaced, not grown
        await front.answered()
        await front.prepare()
        second = front.report()
        assert second is not None and second["id"] != first["id"]
        assert second["participant_ms"] == {str(P): 1000} and second["recording_ms"] == {str(P): 50}
    finally:
        await front.stop()
    again = FrontUsage(path, "proj", 1, 3600, now_ms=lambda: T0)  # restarted before the answer
    await again.start()
    try:
        assert again.report() == second
        await again.answered()
        await again.prepare()
        assert again.report() is None
    finally:
        await again.stop()
        worker.close()
