"""A cancelled task that was calling the store stops, even when the Redis client swallows the
cancellation (redis-py does now and then: a control plane's shutdown once waited forever on its
lease reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from control.store import unavailable_errors
from control.store.base import StoreUnavailable
from control.store.bounded import BoundedStore
from control.store.redis import RedisStore
from levelchat.tasks import cancel_and_wait
from tests.control.harness import flush_redis

ROUNDS = 400


async def test_cancelled_reaper_stops_on_redis(redis_server: str) -> None:
    flush_redis(redis_server)
    inner = await RedisStore.open(redis_server, "levelchat:cancel:", timeout_s=1.0)
    store = BoundedStore(inner, 1.0, unavailable_errors())

    async def reaper() -> None:  # the shape of control.app's lease reaper
        while True:
            try:
                await store.expire_leases(int(time.time() * 1000))
                await store.list_nodes()
            except StoreUnavailable:
                pass
            await asyncio.sleep(0)

    rng = random.Random(7)
    stuck = []
    try:
        for i in range(ROUNDS):
            task = asyncio.create_task(reaper())
            await asyncio.sleep(rng.random() * 0.003)  # cancelled anywhere in a command
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2.0)
            if not done:
                stuck.append(i)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel_and_wait(task, again_s=0.1), timeout=5.0)
                break
            assert task.cancelled()
    finally:
        await store.close()
    assert stuck == [], f"a cancelled task went on (round {stuck[0]} of {ROUNDS})"
    assert store.available  # a cancellation is not an outage
