"""The node's one clock: monotonic milliseconds. Logic takes ``now_ms`` as an argument; only
the edges (socket reader, timers, request handlers) read it here."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.monotonic() * 1000)
