"""``levelchat.tasks``: cancellation that holds when the code under it swallows the exception."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from levelchat.tasks import cancel_and_wait, cancel_requests, raise_if_cancel_swallowed


async def swallow_once() -> None:
    with contextlib.suppress(asyncio.CancelledError):  # what a faulty library does
        await asyncio.sleep(10)


async def test_swallowed_cancel_is_raised_again() -> None:
    reached = asyncio.Event()

    async def worker() -> str:
        before = cancel_requests()
        await swallow_once()
        reached.set()
        raise_if_cancel_swallowed(before)
        return "went on"

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached.is_set()


async def test_nothing_raised_without_a_cancel() -> None:
    before = cancel_requests()
    await asyncio.sleep(0)
    raise_if_cancel_swallowed(before)
    # a timeout's own cancellation is taken back by the timeout: not a pending request
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    raise_if_cancel_swallowed(before)
    assert cancel_requests() == before


@pytest.mark.parametrize("swallowed", [0, 1, 3])
async def test_cancel_and_wait_outlasts_swallowed_cancels(swallowed: int) -> None:
    attempts = []

    async def stubborn() -> None:
        for _ in range(swallowed):
            attempts.append(1)
            await swallow_once()
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, again_s=0.05), timeout=5)
    assert task.cancelled()
    assert len(attempts) == swallowed


async def test_cancel_and_wait_takes_a_finished_tasks_exception() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # not raised here, and not logged as never retrieved
    assert isinstance(task.exception(), RuntimeError)
