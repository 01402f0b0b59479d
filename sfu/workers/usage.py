"""A multi-worker node under a control plane: its workers write their participants' time to the
shared usage file (``sfu.api.usage``); the front reports what they wrote since its last report
with its heartbeats.  Each report is made in one transaction with the cursor it moves and kept in
the file's outbox until a heartbeat is answered, so a retried heartbeat, or a front restarted
before the answer, sends the same id and the control plane counts it once."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from levelchat.usage.book import UsageBook
from levelchat.usage.meter import period_start_ms
from levelchat.usage.report import UsageReport

log = logging.getLogger(__name__)


class FrontUsage:
    def __init__(
        self, path: str, project: str, start_day: int, interval_s: float,
        *, now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.path = path
        self.project = project
        self.start_day = start_day
        self.interval_s = interval_s
        self.now_ms = now_ms
        self.book: UsageBook | None = None
        self.pending: UsageReport | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sent: str | None = None  # the id of the report the last heartbeat carried

    async def start(self) -> None:
        self.book = await asyncio.to_thread(UsageBook, self.path)
        waiting = await asyncio.to_thread(self.book.outbox)
        if waiting:  # sent by the previous run, maybe counted: the same id again
            self.pending = UsageReport.parse(json.loads(waiting[0][1]))
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.book is not None:
            book, self.book = self.book, None
            await asyncio.to_thread(book.close)

    async def _loop(self) -> None:
        while True:
            try:
                await self.prepare()
            except Exception:
                log.exception("usage: preparing the report failed")
            await asyncio.sleep(self.interval_s)

    async def prepare(self) -> None:
        """The next report, unless one is on its way."""
        async with self._lock:
            book = self.book
            if book is None or self.pending is not None:
                return
            now = self.now_ms()
            current = period_start_ms(now, self.start_day)
            previous = period_start_ms(current - 1, self.start_day)
            rid = "UR_" + secrets.token_hex(8)

            def encode(participants: dict[int, int], recording: dict[int, int]) -> str:
                return json.dumps(UsageReport(rid, participants, recording).to_json())

            grown = await asyncio.to_thread(book.next_report, self.project, [previous, current], rid, encode)
            if grown is not None:
                self.pending = UsageReport(rid, grown[0], grown[1])

    def report(self) -> dict[str, Any] | None:
        """For the heartbeat being sent."""
        self._sent = self.pending.id if self.pending is not None else None
        return self.pending.to_json() if self.pending is not None else None

    async def answered(self) -> None:
        """The heartbeat that carried ``report()``'s answer came: that report is counted."""
        async with self._lock:
            sent = self.pending
            if sent is None or sent.id != self._sent:
                return
            self.pending = None
            if self.book is not None:
                await asyncio.to_thread(self.book.sent, sent.id)


def control_total(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``usage`` of a heartbeat answer, for the workers (``/internal/usage``)."""
    total = body.get("usage")
    return dict(total) if isinstance(total, dict) else None
