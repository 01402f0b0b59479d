"""Stop signals for a serving process (a node, a multi-worker front, a forwarding worker).

SIGINT stops at once.  The first SIGTERM starts a graceful drain and stops when it completes; a
second SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Protocol


class Drainable(Protocol):
    @property
    def drained(self) -> asyncio.Event: ...

    def start_drain(self, deadline_s: float) -> None: ...


def stop_on_signals(
    node: Drainable, drain_deadline_s: float, on_drain: Callable[[], None] | None = None
) -> asyncio.Event:
    """Install the handlers on the running loop; the returned event is set when the process should
    stop.  ``on_drain`` runs when the first SIGTERM starts the drain (a CLI announces it)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pending: list[asyncio.Task[None]] = []  # keeps the drain watcher referenced

    async def stop_when_drained() -> None:
        await node.drained.wait()
        stop.set()

    def on_sigterm() -> None:
        if pending:
            stop.set()
            return
        if on_drain is not None:
            on_drain()
        node.start_drain(drain_deadline_s)
        pending.append(loop.create_task(stop_when_drained()))

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    return stop
