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
from levelchat.usage.meter import Usage, period_start_ms
from levelchat.usage.report import UsageReport


class ControlUsage:
    def __init__(self, config: ControlConfig, store: Store, now_ms: Callable[[], int]) -> None:
        self.config = config
        self.store = store
        self.now_ms = now_ms

    async def apply(self, report: UsageReport) -> bool:
        return await self.store.add_usage(
            self.config.project, report.participant_ms, report.recording_ms, report.id, self.now_ms()
        )

    async def current(self) -> Usage:
        period = period_start_ms(self.now_ms(), self.config.usage_period_start_day)
        p_ms, r_ms = await self.store.get_usage(self.config.project, period)
        return Usage(period, p_ms, r_ms, self.config.quota_participant_minutes)

    async def check_quota(self) -> Usage | None:
        """``quota_exceeded`` once the period's participant-minutes are used up (no store call
        without a quota)."""
        if self.config.quota_participant_minutes <= 0:
            return None
        usage = await self.current()
        if usage.exhausted:
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
