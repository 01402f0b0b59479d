"""Cancellation that holds even when a library swallows it.

Some client libraries catch a ``CancelledError`` that arrives at the wrong moment and go on
(redis-py: redis/redis-py#2028, #2551; reproduced here with 5.0 and 8.2 on Python 3.11).  The task
then runs on although ``Task.cancelling()`` still counts the request, and whoever awaits it after
``cancel()`` waits forever.  ``raise_if_cancel_swallowed`` turns the count back into the exception
after such a call; ``cancel_and_wait`` stops a task however often its cancellation is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any


def cancel_requests() -> int:
    """The current task's pending cancellation requests (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_if_cancel_swallowed(before: int) -> None:
    """Raise ``CancelledError`` when the current task was cancelled since ``cancel_requests()``
    returned ``before`` and the code in between did not let the exception through."""
    if cancel_requests() > before:
        raise asyncio.CancelledError()


async def cancel_and_wait(task: asyncio.Task[Any], *, again_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again every ``again_s`` should
    the request be swallowed.  Its result or exception is not raised here."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=again_s)
    if not task.cancelled():
        task.exception()  # retrieved: not logged as never retrieved
