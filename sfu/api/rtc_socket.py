"""Bounds on one signaling WebSocket (``/v1/rtc``), kept apart from what the frames mean.

- ``Outbox``: the frames queued for the client, bounded in bytes (``signaling_send_queue_bytes``).
  A client that does not read fills it; the socket is then closed with 1008 and what was queued
  is let go at once.
- ``FrameRate``: frames per one-second window (``signaling_frames_per_s``).  Past the rate a frame
  is counted as dropped; the first as many again are still read for their id so that a request
  gets ``rate_limited`` (a notification gets nothing); later ones are not even parsed.
- ``FloodLog``: one log line per interval for the whole node about frames dropped that way, and
  ``LogBudget``: a few lines per interval per socket for refused requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sfu.config import NodeConfig
from sfu.counters import SignalingCounters, WsDrop

log = logging.getLogger("sfu.api.rtc")

LOG_INTERVAL_S = 10.0
#: refused-request lines per socket per ``LOG_INTERVAL_S`` (the rest are counted in the next line)
LOG_LINES_PER_INTERVAL = 5


@dataclass(frozen=True)
class SocketPolicy:
    join_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    frames_per_s: int = 50
    send_queue_bytes: int = 1_048_576
    resume_grace_s: float = 15.0

    @classmethod
    def of(cls, config: NodeConfig) -> SocketPolicy:
        return cls(
            join_timeout_s=config.signaling_join_timeout_s,
            heartbeat_s=config.signaling_heartbeat_s,
            frames_per_s=config.signaling_frames_per_s,
            send_queue_bytes=config.signaling_send_queue_bytes,
            resume_grace_s=config.signaling_resume_grace_s,
        )


class Outbox:
    """Text frames for one client, then at most one close; ``put`` refuses past ``limit`` bytes
    and calls ``on_overflow`` once (the frames are JSON with ASCII escapes: characters = bytes)."""

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self.limit = limit
        self.size = 0
        self.overflowed = False
        self.closing: tuple[int, str] | None = None
        self._frames: deque[str] = deque()
        self._wake = asyncio.Event()
        self._on_overflow = on_overflow

    def put(self, text: str) -> bool:
        if self.overflowed or self.closing is not None:
            return False
        if self.size + len(text) > self.limit:
            self.overflowed = True
            self._frames.clear()
            self.size = 0
            self._wake.set()
            self._on_overflow()
            return False
        self._frames.append(text)
        self.size += len(text)
        self._wake.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Close after what is queued (the first close asked for wins)."""
        if self.closing is None:
            self.closing = (code, reason)
            self._wake.set()

    async def next(self) -> str | None:
        """The next frame to send; None when the socket is to close now (``closing``) or overflowed."""
        while True:
            if self.overflowed:
                return None
            if self._frames:
                text = self._frames.popleft()
                self.size -= len(text)
                return text
            if self.closing is not None:
                return None
            self._wake.clear()
            await self._wake.wait()


class FrameRate:
    """Frames of one socket in the current one-second window."""

    __slots__ = ("limit", "window_start", "frames")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.window_start = time.monotonic()
        self.frames = 0

    def count(self) -> int:
        """Count one frame; its number in the current window (``> limit``: over the rate)."""
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window_start, self.frames = now, 0
        self.frames += 1
        return self.frames


class FloodLog:
    """Frames dropped over the rate, node-wide: logged once per interval, not once per frame."""

    def __init__(self, counters: SignalingCounters, interval_s: float = LOG_INTERVAL_S) -> None:
        self.counters = counters
        self.interval_s = interval_s
        self._last_at = -interval_s
        self._since = 0
        self._identities: set[str] = set()

    def dropped(self, identity: str) -> None:
        self.counters.dropped[WsDrop.RATE_LIMITED] += 1
        self._since += 1
        if len(self._identities) < 8:
            self._identities.add(identity)
        now = time.monotonic()
        if now - self._last_at >= self.interval_s:
            log.warning(
                "signaling: %d frames over the rate limit dropped in the last %.0f s (from %s)",
                self._since, min(now - self._last_at, self.interval_s), ", ".join(sorted(self._identities)),
            )
            self._last_at, self._since = now, 0
            self._identities.clear()


class LogBudget:
    """A few log lines per interval for one socket; ``take()`` says whether this one may go out
    and how many were held back since the last that did."""

    __slots__ = ("_start", "_lines", "_held")

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._lines = 0
        self._held = 0

    def take(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._start >= LOG_INTERVAL_S:
            self._start, self._lines = now, 0
        if self._lines >= LOG_LINES_PER_INTERVAL:
            self._held += 1
            return False, 0
        self._lines += 1
        held, self._held = self._held, 0
        return True, held
