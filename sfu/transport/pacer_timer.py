"""One event-loop timer that drains the pacing queues of all the port's transports that have
one (``sfu.transport.pacer``): every ``tick_ms`` while any has packets queued, none otherwise.
The packets a tick sends go out in one batch (``sendmmsg``) at its end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from sfu import clock


class Paced(Protocol):
    def drain_paced(self, now_ms: int) -> bool:
        """Send what the transport's budget allows now; False when nothing is left queued."""
        ...


class PacingTimer:
    def __init__(self, ring: Any, flush: Callable[[], int], tick_ms: float = 5.0) -> None:
        self.tick_ms = tick_ms
        self._ring = ring  # the port's send ring: its auto_flush is held off during a tick
        self._flush = flush
        self._pending: set[Paced] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def arm(self, peer: Paced, loop: asyncio.AbstractEventLoop) -> None:
        self._pending.add(peer)
        if self._handle is None:
            self._loop = loop
            self._handle = loop.call_later(self.tick_ms / 1000, self._tick)

    def discard(self, peer: Paced) -> None:
        self._pending.discard(peer)
        if not self._pending and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self, now_ms: int) -> None:
        ring = self._ring
        auto = ring.auto_flush
        ring.auto_flush = False
        try:
            done = [peer for peer in self._pending if not peer.drain_paced(now_ms)]
        finally:
            ring.auto_flush = auto
            self._flush()
        for peer in done:
            self._pending.discard(peer)

    def _tick(self) -> None:
        self._handle = None
        self.tick(clock.now_ms())
        if self._pending and self._loop is not None:
            self._handle = self._loop.call_later(self.tick_ms / 1000, self._tick)

    def close(self) -> None:
        self._pending.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
