"""Pure usage accounting: billing periods and a meter of participant time.

A period starts at 00:00 UTC on ``start_day`` (1 to 28) of a month and ends where the next one
starts.  ``UsageMeter`` knows who is in a room since when; ``take(now_ms)`` hands over the
participant-milliseconds accrued since the last take, split at period boundaries, so a caller can
add them to a store (a participant still in a room counts up to ``now_ms``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

MS_PER_MINUTE = 60_000


def period_start_ms(now_ms: int, start_day: int = 1) -> int:
    """The start (epoch ms) of the period holding ``now_ms``."""
    if not 1 <= start_day <= 28:
        raise ValueError(f"the period's start day must be 1 to 28, not {start_day}")
    t = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    year, month = t.year, t.month
    if t.day < start_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return int(dt.datetime(year, month, start_day, tzinfo=dt.UTC).timestamp() * 1000)


def next_period_ms(period_ms: int, start_day: int = 1) -> int:
    """The start of the period after the one starting at ``period_ms``."""
    t = dt.datetime.fromtimestamp(period_ms / 1000, dt.UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return int(dt.datetime(year, month, start_day, tzinfo=dt.UTC).timestamp() * 1000)


def split(start_ms: int, end_ms: int, start_day: int = 1) -> dict[int, int]:
    """``[start_ms, end_ms)`` as milliseconds per period start (empty when it is empty)."""
    out: dict[int, int] = {}
    while start_ms < end_ms:
        period = period_start_ms(start_ms, start_day)
        cut = min(end_ms, next_period_ms(period, start_day))
        out[period] = out.get(period, 0) + cut - start_ms
        start_ms = cut
    return out


def merge(into: dict[int, int], more: dict[int, int]) -> None:
    for period, ms in more.items():
        into[period] = into.get(period, 0) + ms


class JoinKind(StrEnum):
    """Where a quota refused a join: the ``join`` label of ``usage_quota_refusals_total``."""

    WHIP = "whip"
    WHEP = "whep"
    RTC = "rtc"  # the WebSocket's ``join``
    TOKEN = "token"  # the control plane's ``POST /v1/tokens``


class RecordingMinutes(Protocol):
    """What a recorder needs to count its minutes (``sfu.api.usage.NodeUsage`` on a node): each
    recording's span, in epoch milliseconds (wall clock), once it ends."""

    def add_recording(self, start_ms: int, end_ms: int) -> None: ...


@dataclass
class UsageMeter:
    """Who counts since when (``key``: a participant's sid).  Bounded by the node's participants:
    an entry lives from its join to the first take after its leave."""

    start_day: int = 1
    #: live participants: the time up to which they were last taken
    live: dict[str, int] = field(default_factory=dict)
    #: participant time of those who left since the last take, per period
    closed: dict[int, int] = field(default_factory=dict)
    #: recording time added since the last take, per period
    recording: dict[int, int] = field(default_factory=dict)
    #: every participant and recording millisecond this meter ever counted (live participants up
    #: to their last take), whatever became of the takes: the ``usage_*_seconds_total`` counters
    counted_participant_ms: int = 0
    counted_recording_ms: int = 0

    def join(self, key: str, now_ms: int) -> None:
        self.live.setdefault(key, now_ms)

    def leave(self, key: str, now_ms: int) -> None:
        since = self.live.pop(key, None)
        if since is not None:
            merge(self.closed, split(since, now_ms, self.start_day))
            self.counted_participant_ms += max(0, now_ms - since)

    def add_recording(self, start_ms: int, end_ms: int) -> None:
        merge(self.recording, split(start_ms, end_ms, self.start_day))
        self.counted_recording_ms += max(0, end_ms - start_ms)

    def counted(self, now_ms: int) -> tuple[int, int]:
        """(participant ms, recording ms) counted since this meter began, the live participants'
        time up to ``now_ms`` included: never decreasing while ``now_ms`` does not."""
        live = sum(max(0, now_ms - since) for since in self.live.values())
        return self.counted_participant_ms + live, self.counted_recording_ms

    def pending(self, now_ms: int) -> tuple[dict[int, int], dict[int, int]]:
        """What ``take`` would hand over now (participant ms, recording ms per period), taking nothing."""
        participants = dict(self.closed)
        for since in self.live.values():
            merge(participants, split(since, now_ms, self.start_day))
        return participants, dict(self.recording)

    def take(self, now_ms: int) -> tuple[dict[int, int], dict[int, int]]:
        """Hand over what accrued since the last take; the live go on counting from ``now_ms``."""
        out = self.pending(now_ms)
        self.closed, self.recording = {}, {}
        for key, since in self.live.items():
            self.counted_participant_ms += max(0, now_ms - since)
            self.live[key] = max(since, now_ms)
        return out


def minutes(ms: int) -> float:
    """Minutes with three decimals, rounded down: a total shown as reaching a quota has reached it."""
    return (ms // 60) / 1000


@dataclass(frozen=True)
class Usage:
    """One period's totals, as ``GET /v1/usage`` answers them."""

    period_ms: int
    participant_ms: int
    recording_ms: int
    quota_participant_minutes: float = 0.0  # 0: none

    @property
    def exhausted(self) -> bool:
        quota = self.quota_participant_minutes
        return quota > 0 and self.participant_ms >= quota * MS_PER_MINUTE

    def to_json(self) -> dict[str, object]:
        quota: dict[str, float] = {}
        if self.quota_participant_minutes > 0:
            quota["participant_minutes"] = self.quota_participant_minutes
        return {
            "period_start": dt.datetime.fromtimestamp(self.period_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "participant_minutes": minutes(self.participant_ms),
            "recording_minutes": minutes(self.recording_ms),
            "quota": quota,
        }
