"""Usage totals in SQLite: one row per (project, period), increments in one transaction each
(several processes may share the file: a multi-worker node's workers), and the ids of the reports
already applied, so a report sent twice (a retried heartbeat) counts once."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable

from levelchat.sqlitefile import retry_busy

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
#: a multi-worker node under a control plane: what its front reported of the file's totals
#: (``usage_cursor``), and the report on its way (``usage_outbox``: re-sent after a restart)
OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_cursor (
    project TEXT NOT NULL,
    period_ms INTEGER NOT NULL,
    participant_ms INTEGER NOT NULL,
    recording_ms INTEGER NOT NULL,
    PRIMARY KEY (project, period_ms)
);
CREATE TABLE IF NOT EXISTS usage_outbox (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
"""
#: how long opening waits for the other processes that open the same file at once
OPEN_TIMEOUT_S = 10.0
#: applied report ids are kept this long (a retry comes within seconds)
REPORTS_KEPT_MS = 86_400_000


class UsageBook:
    """Blocking calls (small and rare: every few seconds); async callers use ``asyncio.to_thread``."""

    def __init__(self, path: str) -> None:
        if path != ":memory:" and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            retry_busy(lambda: self._setup(path), OPEN_TIMEOUT_S)
        except BaseException:
            self._db.close()
            raise

    def _setup(self, path: str) -> None:
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA + OUTBOX_SCHEMA)

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

    # -- the outbox of a front that reports the file's totals -----------------------------------
    def outbox(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(str(r[0]), str(r[1])) for r in self._db.execute("SELECT id, body FROM usage_outbox ORDER BY id")]

    def next_report(
        self, project: str, periods: list[int], report_id: str, encode: Callable[[dict[int, int], dict[int, int]], str]
    ) -> tuple[dict[int, int], dict[int, int]] | None:
        """In one transaction: what the periods' totals grew by since the cursor, the cursor moved
        to the totals and the report (``encode``d) put in the outbox; None when nothing grew."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                participants: dict[int, int] = {}
                recording: dict[int, int] = {}
                totals = {period: read(self._db, project, period) for period in periods}
                for period, (p_ms, r_ms) in totals.items():
                    row = self._db.execute(
                        "SELECT participant_ms, recording_ms FROM usage_cursor WHERE project = ? AND period_ms = ?",
                        (project, period),
                    ).fetchone()
                    seen_p, seen_r = (int(row[0]), int(row[1])) if row else (0, 0)
                    if p_ms > seen_p:
                        participants[period] = p_ms - seen_p
                    if r_ms > seen_r:
                        recording[period] = r_ms - seen_r
                if not participants and not recording:
                    self._db.execute("ROLLBACK")
                    return None
                for period, (p_ms, r_ms) in totals.items():
                    self._db.execute(
                        "INSERT INTO usage_cursor (project, period_ms, participant_ms, recording_ms) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (project, period_ms) DO UPDATE SET "
                        "participant_ms = excluded.participant_ms, recording_ms = excluded.recording_ms",
                        (project, period, p_ms, r_ms),
                    )
                self._db.execute(
                    "INSERT INTO usage_outbox (id, body) VALUES (?, ?)", (report_id, encode(participants, recording))
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return participants, recording

    def sent(self, report_id: str) -> None:
        """The control plane answered the report: out of the outbox."""
        with self._lock:
            self._db.execute("DELETE FROM usage_outbox WHERE id = ?", (report_id,))


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
