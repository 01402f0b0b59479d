"""The durable webhook queue: one row per (endpoint, event) in SQLite (WAL), bounded.

Every database call runs on one private thread, so the event loop never waits on the disk:
``enqueue`` only appends to a list and schedules a batched commit; the delivery loops await
their (small) reads and writes.  A committed row survives a crash of the process (``kill -9``);
rows enqueued in the last few milliseconds before a crash, not yet committed, are lost (a clean
stop commits them: ``close``).  Above ``queue_max`` rows the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from levelchat.sqlitefile import retry_busy
from levelchat.webhooks.model import WebhookEndpoint

log = logging.getLogger("levelchat.webhooks")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    first_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_queue_endpoint ON webhook_queue (endpoint, seq);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    key TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class QueuedEvent:
    seq: int
    endpoint: str
    event_id: str
    body: bytes
    attempts: int
    next_at: float
    first_at: float


@dataclass(frozen=True)
class NewRow:
    endpoint: str
    event_id: str
    body: bytes
    at: float


class WebhookQueue:
    def __init__(self, path: str, queue_max: int, on_dropped: Callable[[str, int], None]) -> None:
        """``path``: the SQLite file (its directory is created) or ``:memory:`` (tests only: not
        durable).  ``on_dropped(reason, n)`` is called on the event loop's thread."""
        self.path = path
        self.queue_max = queue_max
        self._on_dropped = on_dropped
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-db")
        self._db: sqlite3.Connection | None = None
        self._pending: list[NewRow] = []
        self._lock = threading.Lock()
        self._flushing: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: rows in the table (kept by the database thread)
        self.depth = 0
        #: called on the loop after a batch was committed (wakes the delivery loops)
        self.on_written: Callable[[], None] = lambda: None

    # -- database thread ---------------------------------------------------------------------------
    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)

        def setup() -> None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a committed row survives a process crash
            db.executescript(SCHEMA)

        try:
            retry_busy(setup, 10.0)
        except BaseException:
            db.close()
            raise
        self._db = db
        self.depth = db.execute("SELECT COUNT(*) FROM webhook_queue").fetchone()[0]
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)

    def _write_pending(self) -> int:
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        db = self._conn()
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO webhook_queue (endpoint, event_id, body, next_at, first_at) VALUES (?, ?, ?, ?, ?)",
            [(r.endpoint, r.event_id, r.body, r.at, r.at) for r in rows],
        )
        dropped = 0
        excess = self.depth + len(rows) - self.queue_max
        if excess > 0:
            dropped = db.execute(
                "DELETE FROM webhook_queue WHERE seq IN (SELECT seq FROM webhook_queue ORDER BY seq LIMIT ?)", (excess,)
            ).rowcount
        db.execute("COMMIT")
        self.depth += len(rows) - dropped
        return dropped

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "queue not open"
        return self._db

    def _head(self, endpoint: str) -> QueuedEvent | None:
        row = self._conn().execute(
            "SELECT seq, endpoint, event_id, body, attempts, next_at, first_at FROM webhook_queue "
            "WHERE endpoint = ? ORDER BY seq LIMIT 1",
            (endpoint,),
        ).fetchone()
        return QueuedEvent(*row) if row is not None else None

    def _delete(self, seq: int) -> None:
        self.depth -= self._conn().execute("DELETE FROM webhook_queue WHERE seq = ?", (seq,)).rowcount

    def _reschedule(self, seq: int, attempts: int, next_at: float) -> None:
        self._conn().execute("UPDATE webhook_queue SET attempts = ?, next_at = ? WHERE seq = ?", (attempts, next_at, seq))

    def _drop_endpoints(self, keep: frozenset[str] | None, drop: str | None) -> int:
        db = self._conn()
        if drop is not None:
            n = db.execute("DELETE FROM webhook_queue WHERE endpoint = ?", (drop,)).rowcount
        else:
            assert keep is not None
            marks = ",".join("?" * len(keep))
            n = db.execute(f"DELETE FROM webhook_queue WHERE endpoint NOT IN ({marks})", tuple(keep)).rowcount
        self.depth -= n
        return n

    # -- event loop side ---------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)

    def enqueue(self, rows: list[NewRow]) -> None:
        """Never blocks: the rows are committed in a batch on the database thread."""
        if not rows:
            return
        with self._lock:
            self._pending.extend(rows)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            try:
                dropped = await self._call(self._write_pending)
            except sqlite3.Error:
                log.exception("webhook queue: a write failed; %d event(s) not queued", len(self._pending))
                continue
            if dropped:
                log.warning("webhook queue full (%d): dropped the %d oldest event(s)", self.queue_max, dropped)
                self._on_dropped("queue_full", dropped)
            self.on_written()

    async def flush(self) -> None:
        """Wait until everything enqueued so far is committed."""
        while self._flushing is not None and not self._flushing.done():
            await self._flushing

    async def head(self, endpoint: str) -> QueuedEvent | None:
        return await self._call(self._head, endpoint)

    async def delete(self, seq: int) -> None:
        await self._call(self._delete, seq)

    async def reschedule(self, seq: int, attempts: int, next_at: float) -> None:
        await self._call(self._reschedule, seq, attempts, next_at)

    async def drop_endpoint(self, endpoint: str) -> int:
        return await self._call(self._drop_endpoints, None, endpoint)

    async def drop_all_but(self, keep: frozenset[str]) -> int:
        return await self._call(self._drop_endpoints, keep, None)

    # -- endpoints added through the API (kept across restarts) --------------------------------------
    async def load_endpoints(self) -> dict[str, WebhookEndpoint]:
        def load() -> dict[str, WebhookEndpoint]:
            rows = self._conn().execute("SELECT id, url, events, key FROM webhook_endpoints ORDER BY rowid").fetchall()
            return {i: WebhookEndpoint(url=u, events=tuple(json.loads(e)), key=k) for i, u, e, k in rows}

        return await self._call(load)

    async def save_endpoint(self, endpoint_id: str, ep: WebhookEndpoint) -> None:
        await self._call(
            self._exec, "INSERT INTO webhook_endpoints (id, url, events, key) VALUES (?, ?, ?, ?)",
            (endpoint_id, ep.url, json.dumps(list(ep.events)), ep.key),
        )

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._call(self._exec, "DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))

    def _exec(self, sql: str, args: tuple[Any, ...]) -> None:
        self._conn().execute(sql, args)

    async def close(self) -> None:
        await self.flush()

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._call(close_db)
        self._executor.shutdown(wait=True)
