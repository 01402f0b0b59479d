"""Opening a SQLite file that other processes open at the same moment.

Switching a new file to WAL (and recovering one a crashed process left) takes a lock that SQLite
does not wait for with the connection's busy timeout: processes that open the file together get
"database is locked" at once. Seen in CI: the two workers of a node open the node's usage file as
they start, and worker 0 exited. Openers run their set-up steps through ``retry_busy``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable


def retry_busy(step: Callable[[], None], timeout_s: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Run ``step`` until it is not refused for a lock, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + delay > deadline:
                raise
        sleep(delay)
        delay = min(delay * 2, 0.2)
