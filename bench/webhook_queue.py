"""What queuing webhook events costs the event loop: ``python -m bench.webhook_queue``.

Prints the loop-side cost of ``WebhookDispatcher.emit`` (event made, rows handed to the writer
thread), how long the writer takes to commit a burst, the loop lag seen while it commits, and the
enqueue-to-committed latency of single events.  Nothing is delivered (the endpoint is unreachable
and retried only hours later)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.model import WebhookEndpoint, WebhookSettings, make_event


async def run(n: int = 20_000) -> None:
    directory = tempfile.mkdtemp()
    d = WebhookDispatcher(
        db_path=os.path.join(directory, "q.db"),
        configured=(WebhookEndpoint(url="http://127.0.0.1:9/unreachable"),),
        api_keys={"k": "s"},
        settings=WebhookSettings(retry_base_s=3600, retry_max_s=3600, queue_max=1_000_000),
    )
    await d.start()
    lags: list[float] = []

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    prober = asyncio.create_task(probe())
    costs = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        d.emit(make_event("participant_joined", room={"name": "r", "sid": "RM_x"}, participant={"identity": f"p{i}"}))
        costs.append(time.perf_counter() - t)
        if i % 500 == 0:
            await asyncio.sleep(0)
    await d.queue.flush()
    t1 = time.perf_counter()
    prober.cancel()
    costs.sort()
    print(
        f"emit: median {costs[n // 2] * 1e6:.1f} us, p99 {costs[n * 99 // 100] * 1e6:.1f} us per event; "
        f"{n} events committed {t1 - t0:.2f} s after the first; loop lag meanwhile max {max(lags or [0]) * 1e3:.1f} ms"
    )
    single = []
    for _ in range(200):
        t = time.perf_counter()
        d.emit(make_event("room_started"))
        await d.queue.flush()
        single.append(time.perf_counter() - t)
    single.sort()
    print(f"one event enqueued to committed: median {single[100] * 1e3:.2f} ms, p99 {single[198] * 1e3:.2f} ms")
    await d.stop()


if __name__ == "__main__":
    asyncio.run(run())
