"""The control plane's usage accounting (issue 14): nodes' reports (``levelchat.usage.report``,
with their heartbeats) added to the store once each, ``GET /v1/usage`` (``room:admin``), and the
quota on ``POST /v1/tokens``.  The totals live in the store, so every replica on one Redis (or
one SQLite file) answers the same and a restart loses nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.config import ControlConfig
from control.store.base import Store
from levelchat.errors import ApiError
from levelchat.usage.meter import JoinKind, Usage, period_start_ms
from levelchat.usage.metrics import UsageFigures
from levelchat.usage.report import UsageReport

#: where the control plane refuses joins for the quota
CONTROL_JOINS = (JoinKind.TOKEN,)


class ControlUsage:
    def __init__(self, config: ControlConfig, store: Store, now_ms: Callable[[], int]) -> None:
        self.config = config
        self.store = store
        self.now_ms = now_ms
        #: what this instance added from reports (each once), refusals: levelchat.usage.metrics
        self.applied_participant_ms = 0
        self.applied_recording_ms = 0
        self.refusals = dict.fromkeys(CONTROL_JOINS, 0)
        #: the period's totals as last read from the store (None: not read yet)
        self.last: Usage | None = None

    async def apply(self, report: UsageReport) -> bool:
        added = await self.store.add_usage(
            self.config.project, report.participant_ms, report.recording_ms, report.id, self.now_ms()
        )
        if added:
            self.applied_participant_ms += sum(report.participant_ms.values())
            self.applied_recording_ms += sum(report.recording_ms.values())
        return added

    async def current(self) -> Usage:
        period = period_start_ms(self.now_ms(), self.config.usage_period_start_day)
        p_ms, r_ms = await self.store.get_usage(self.config.project, period)
        self.last = Usage(period, p_ms, r_ms, self.config.quota_participant_minutes)
        return self.last

    def figures(self) -> UsageFigures:
        """For ``/metrics``: the period's totals as last read (every heartbeat with a report, every
        ``GET /v1/usage`` and quota check reads them), never a store call at scrape time."""
        period = self.last
        quota = self.config.quota_participant_minutes
        if period is None and quota > 0:
            period = Usage(period_start_ms(self.now_ms(), self.config.usage_period_start_day), 0, 0, quota)
        return UsageFigures(self.applied_participant_ms, self.applied_recording_ms, dict(self.refusals), period)

    async def check_quota(self) -> Usage | None:
        """``quota_exceeded`` once the period's participant-minutes are used up (no store call
        without a quota)."""
        if self.config.quota_participant_minutes <= 0:
            return None
        usage = await self.current()
        if usage.exhausted:
            self.refusals[JoinKind.TOKEN] += 1
            raise ApiError(
                "quota_exceeded",
                f"this period's {self.config.quota_participant_minutes:g} participant-minutes are used up "
                f"({usage.participant_ms / 60_000:.2f}); live sessions go on",
            )
        return usage

    async def answer(self) -> dict[str, Any]:
        """What a heartbeat's answer tells the node: the project's total, for its own quota check."""
        usage = await self.current()
        return {
            "period_ms": usage.period_ms,
            "participant_ms": usage.participant_ms,
            "recording_ms": usage.recording_ms,
            "quota_participant_minutes": self.config.quota_participant_minutes,
        }
