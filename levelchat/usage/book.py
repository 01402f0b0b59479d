"""Usage totals in SQLite: one row per (project, period), increments in one transaction each
(several processes may share the file: a multi-worker node's workers), and the ids of the reports
already applied, so a report sent twice (a retried heartbeat) counts once."""

from __future__ import annotations

import os
import sqlite3
import threading

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    project TEXT NOT NULL,
    period_ms INTEGER NOT NULL,
    participant_ms INTEGER NOT NULL DEFAULT 0,
    recording_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, period_ms)
);
CREATE TABLE IF NOT EXISTS usage_reports (
    id TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
"""
#: applied report ids are kept this long (a retry comes within seconds)
REPORTS_KEPT_MS = 86_400_000


class UsageBook:
    """Blocking calls (small and rare: every few seconds); async callers use ``asyncio.to_thread``."""

    def __init__(self, path: str) -> None:
        if path != ":memory:" and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        project: str,
        participant_ms: dict[int, int],
        recording_ms: dict[int, int],
        *,
        report_id: str = "",
        now_ms: int = 0,
    ) -> bool:
        """Add the milliseconds per period; False (nothing added) when ``report_id`` was applied."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = apply(self._db, project, participant_ms, recording_ms, report_id=report_id, now_ms=now_ms)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return added

    def get(self, project: str, period_ms: int) -> tuple[int, int]:
        """(participant ms, recording ms) of the period."""
        with self._lock:
            return read(self._db, project, period_ms)


# -- on a connection inside the caller's transaction (also the control plane's SQLite store) ------
def apply(
    db: sqlite3.Connection,
    project: str,
    participant_ms: dict[int, int],
    recording_ms: dict[int, int],
    *,
    report_id: str = "",
    now_ms: int = 0,
) -> bool:
    if report_id:
        if db.execute("SELECT 1 FROM usage_reports WHERE id = ?", (report_id,)).fetchone():
            return False
        db.execute("INSERT INTO usage_reports (id, at_ms) VALUES (?, ?)", (report_id, now_ms))
        db.execute("DELETE FROM usage_reports WHERE at_ms < ?", (now_ms - REPORTS_KEPT_MS,))
    for period in sorted(set(participant_ms) | set(recording_ms)):
        db.execute(
            "INSERT INTO usage (project, period_ms, participant_ms, recording_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (project, period_ms) DO UPDATE SET "
            "participant_ms = participant_ms + excluded.participant_ms, "
            "recording_ms = recording_ms + excluded.recording_ms",
            (project, period, participant_ms.get(period, 0), recording_ms.get(period, 0)),
        )
    return True


def read(db: sqlite3.Connection, project: str, period_ms: int) -> tuple[int, int]:
    row = db.execute(
        "SELECT participant_ms, recording_ms FROM usage WHERE project = ? AND period_ms = ?", (project, period_ms)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
