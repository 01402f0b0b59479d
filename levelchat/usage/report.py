"""A node's usage report, carried by its heartbeat (``PUT /v1/nodes/{id}/status``, field
``usage``) to the control plane: ``{"id", "participant_ms": {"<period ms>": ms}, "recording_ms":
{...}}``.  The id makes it idempotent: the node sends the same report until a heartbeat is
answered, and the control plane adds a report id once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: periods one report may name (a report spans a period boundary at most once or twice)
MAX_PERIODS = 4
#: one report's milliseconds per period: at most a day of 100,000 participants
MAX_MS = 86_400_000 * 100_000
MAX_ID = 128


@dataclass(frozen=True)
class UsageReport:
    id: str
    participant_ms: dict[int, int]
    recording_ms: dict[int, int]

    @classmethod
    def parse(cls, obj: Any) -> UsageReport:
        if not isinstance(obj, dict):
            raise ValueError("usage must be an object")
        unknown = sorted(set(obj) - {"id", "participant_ms", "recording_ms"})
        if unknown:
            raise ValueError(f"usage: unknown field(s) {', '.join(unknown)}")
        rid = obj.get("id")
        if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID:
            raise ValueError(f"usage.id must be a string of 1 to {MAX_ID} characters")
        return cls(rid, _periods(obj, "participant_ms"), _periods(obj, "recording_ms"))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "participant_ms": {str(p): ms for p, ms in self.participant_ms.items()},
            "recording_ms": {str(p): ms for p, ms in self.recording_ms.items()},
        }


def _periods(obj: dict[str, Any], name: str) -> dict[int, int]:
    raw = obj.get(name, {})
    if not isinstance(raw, dict) or len(raw) > MAX_PERIODS:
        raise ValueError(f"usage.{name} must be an object of at most {MAX_PERIODS} periods")
    out: dict[int, int] = {}
    for period, ms in raw.items():
        if not (isinstance(period, str) and period.isdigit() and len(period) <= 15):
            raise ValueError(f"usage.{name}: {str(period)[:20]!r} is not a period start in epoch ms")
        if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_MS:
            raise ValueError(f"usage.{name}[{period}] must be an integer of 0 to {MAX_MS} ms")
        out[int(period)] = ms
    return out
