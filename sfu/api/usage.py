"""The node's usage accounting (issue 14): the router's joins and leaves feed a ``UsageMeter``.
Alone (or as one worker of a multi-worker node: the workers share one file) the meter is written
every ``usage_flush_s`` to the ``UsageBook``; under a control plane it goes with the heartbeats
(``report``/``answered``: one report at a time, re-sent with its id until a heartbeat is answered,
so the control plane counts it once) and the answer brings the project's total back.
``GET /v1/usage`` (``room:admin``); ``check_quota`` before each new join (WHIP, WHEP, the
WebSocket ``join``), against the last known total plus what this node has not reported yet.

What another worker has not written yet is not seen here: a multi-worker node's total lags by
up to ``usage_flush_s``, so a quota may be overrun by that much participant time."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.tokens import TokenVerifier
from levelchat.usage.book import UsageBook
from levelchat.usage.meter import JoinKind, Usage, UsageMeter, merge, period_start_ms
from levelchat.usage.metrics import UsageFigures
from levelchat.usage.report import UsageReport
from levelchat.web import bearer_token, json_response
from sfu.routing.events import RoomEvent, RoomEventKind

if TYPE_CHECKING:
    from sfu.config import NodeConfig

log = logging.getLogger(__name__)

#: where a node refuses joins for the quota
NODE_JOINS = (JoinKind.WHIP, JoinKind.WHEP, JoinKind.RTC)


class NodeUsage:
    def __init__(self, config: NodeConfig, *, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.config = config
        self.now_ms = now_ms
        self.meter = UsageMeter(start_day=config.usage_period_start_day)
        self.book: UsageBook | None = None
        #: the book's totals of the current period as last read: (period, participant ms, recording ms)
        self._stored = (0, 0, 0)
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._writing: tuple[dict[int, int], dict[int, int]] | None = None
        #: under a control plane: the meter goes with the heartbeats, not to a file
        self.reporting = bool(config.control_endpoints)
        self._pending: UsageReport | None = None
        self._report_prefix = "UR_" + secrets.token_hex(6)
        self._reports = 0
        #: the control plane's quota (its heartbeat answers), which overrides this node's own
        self.control_quota: float | None = None
        #: a worker of a node under a control plane: the project's total the front last heard
        self._control = (0, 0, 0)
        #: joins refused with quota_exceeded (levelchat.usage.metrics)
        self.refusals = dict.fromkeys(NODE_JOINS, 0)

    async def start(self, http_port: int) -> None:
        if self.reporting:
            log.info("usage: reported to the control plane with the heartbeats")
            return
        path = self.config.usage_db_at(http_port)
        self.book = await asyncio.to_thread(UsageBook, path)
        await self.flush()
        self._task = asyncio.create_task(self._loop())
        log.info("usage: %s, quota %s participant-minutes", path, self.config.quota_participant_minutes or "none")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.book is not None:
            await self.flush()  # the participants still in a room count up to now
            book, self.book = self.book, None
            await asyncio.to_thread(book.close)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage_flush_s)
            try:
                await self.flush()
            except Exception:
                log.exception("usage: writing the meter failed (kept for the next try)")

    async def flush(self) -> None:
        """Write what the meter accrued, then read the period's total (another worker's included)."""
        book = self.book
        if book is None:
            return
        async with self._flushing:
            now = self.now_ms()
            participants, recording = self.meter.take(now)
            project = self.config.project
            # counted by ``current`` while on the way to the book (taken from the meter, not read back yet)
            self._writing = (participants, recording)
            try:
                if participants or recording:
                    await asyncio.to_thread(book.add, project, participants, recording)
            except BaseException:
                merge(self.meter.closed, participants)  # not lost: written with the next flush
                merge(self.meter.recording, recording)
                self._writing = None
                raise
            period = period_start_ms(now, self.config.usage_period_start_day)
            try:
                p_ms, r_ms = await asyncio.to_thread(book.get, project, period)
            finally:
                self._writing = None
            self._stored = (period, p_ms, r_ms)

    # -- under a control plane (sfu.agent) ----------------------------------------------------------
    def report(self) -> dict[str, Any] | None:
        """The report to send with this heartbeat: the one not yet answered, else what accrued."""
        if self._pending is None:
            participants, recording = self.meter.take(self.now_ms())
            if not participants and not recording:
                return None
            self._reports += 1
            self._pending = UsageReport(f"{self._report_prefix}-{self._reports}", participants, recording)
        return self._pending.to_json()

    def answered(self, body: Mapping[str, Any]) -> None:
        """A heartbeat was answered: the report is counted; the answer's total is the project's."""
        self._pending = None
        total = body.get("usage")
        if isinstance(total, dict):
            self._stored = self._adopt(total) or self._stored

    def adopt_control_total(self, total: Mapping[str, Any]) -> None:
        """A worker: the project's total and quota from the control plane (through the front)."""
        self._control = self._adopt(total) or self._control

    def _adopt(self, total: Mapping[str, Any]) -> tuple[int, int, int] | None:
        quota = total.get("quota_participant_minutes")
        if isinstance(quota, (int, float)) and not isinstance(quota, bool) and quota >= 0:
            self.control_quota = float(quota)
        values = [total.get(k) for k in ("period_ms", "participant_ms", "recording_ms")]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return (int(values[0]), int(values[1]), int(values[2]))  # type: ignore[arg-type]
        return None

    # -- feeds ------------------------------------------------------------------------------------
    def on_event(self, event: RoomEvent) -> None:
        """The router's observer: participants count from their join to their leave (where they
        are seated: a relayed participant counts at its own worker, sfu.routing.relay)."""
        kind, p = event.kind, event.participant
        if p is not None and p.relay:
            return
        if kind is RoomEventKind.JOINED and p is not None:
            self.meter.join(p.sid, self.now_ms())
        elif kind is RoomEventKind.LEFT and p is not None:
            self.meter.leave(p.sid, self.now_ms())
        elif kind is RoomEventKind.ROOM_CLOSED:
            now = self.now_ms()
            for gone in event.participants:
                self.meter.leave(gone.sid, now)

    def add_recording(self, start_ms: int, end_ms: int) -> None:
        """``levelchat.usage.meter.RecordingMinutes``: the recorder adds each recording's span
        (epoch ms) when it ends; written (or reported) with the participant time."""
        self.meter.add_recording(start_ms, end_ms)

    # -- reading ----------------------------------------------------------------------------------
    def current(self) -> Usage:
        now = self.now_ms()
        period = period_start_ms(now, self.config.usage_period_start_day)
        stored_period, p_ms, r_ms = self._stored
        if stored_period != period:
            p_ms = r_ms = 0  # a new period began since the last read
        control_period, control_p, control_r = self._control
        if control_period == period and control_p > p_ms:  # the project's, beyond this node's file
            p_ms, r_ms = control_p, max(r_ms, control_r)
        participants, recording = self.meter.pending(now)
        if self._pending is not None:  # sent, not answered yet
            merge(participants, self._pending.participant_ms)
            merge(recording, self._pending.recording_ms)
        if self._writing is not None:  # being written to the book
            merge(participants, self._writing[0])
            merge(recording, self._writing[1])
        return Usage(
            period_ms=period,
            participant_ms=p_ms + participants.get(period, 0),
            recording_ms=r_ms + recording.get(period, 0),
            quota_participant_minutes=self.quota,
        )

    def figures(self) -> UsageFigures:
        """For ``/metrics`` (``levelchat.usage.metrics``)."""
        participant_ms, recording_ms = self.meter.counted(self.now_ms())
        return UsageFigures(participant_ms, recording_ms, dict(self.refusals), self.current())

    @property
    def quota(self) -> float:
        return self.config.quota_participant_minutes if self.control_quota is None else self.control_quota

    def check_quota(self, join: JoinKind) -> None:
        """Before a new join: ``quota_exceeded`` once the period's participant-minutes are used up
        (counted by ``join`` for ``usage_quota_refusals_total``)."""
        if self.quota > 0:
            usage = self.current()
            if usage.exhausted:
                self.refusals[join] += 1
                raise ApiError(
                    "quota_exceeded",
                    f"this period's {self.quota:g} participant-minutes are used up "
                    f"({usage.participant_ms / 60_000:.2f}); live sessions go on",
                )


def setup(app: web.Application, usage: NodeUsage, verifier: TokenVerifier) -> None:
    async def get(request: web.Request) -> web.StreamResponse:
        claims = verifier.verify(bearer_token(request), time.time())
        claims.require("room:admin")
        if claims.room is not None:
            raise ApiError("token/unauthorized", "usage is project-wide: the token must not be bound to a room")
        return json_response(usage.current().to_json())

    app.router.add_get("/v1/usage", get)
