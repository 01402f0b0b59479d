"""``python -m bench.loadgen.worker``: one generator process, driven by the runner over stdin/stdout.

stdin, one line each: the ``Assignment`` as JSON; ``subscribe`` (all publishers of the step are up,
open the receivers); ``go`` (start sending).  stdout, one JSON object a line: ``{"event":
"published"}``, ``{"event": "ready"}``, ``{"event": "stats", ...}`` about once a second while
running (cumulative counters, see ``engine.Counters``), ``{"event": "final", ...}`` after the drain,
or ``{"event": "error", "message"}``.  Every wait is bounded; SIGTERM ends the run early.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import sys
from typing import Any

from bench.loadgen.engine import Counters, Engine, Receiver, Sender
from bench.loadgen.plan import Assignment
from bench.loadgen.sessions import SessionOpener
from bench.loadgen.wire import checks_for
from bench.mmsg import wait_for_arrival_stamps
from bench.session import SessionError

#: how long a worker waits for the runner's next command
COMMAND_TIMEOUT_S = 300.0


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _command(timeout_s: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    ready = sel.select(timeout_s)
    sel.close()
    return sys.stdin.readline().strip() if ready else ""


async def _run(job: Assignment) -> int:
    counters = Counters(len(job.streams))
    checks = checks_for(job.streams)
    loop = asyncio.get_running_loop()
    async with SessionOpener(job.streams) as opener:
        try:
            pubs = await opener.publishers(job.publishers)
            emit("published", sessions=len(pubs))
            line = await loop.run_in_executor(None, _command, COMMAND_TIMEOUT_S)
            if line != "subscribe":
                emit("error", message=f"expected 'subscribe', got {line!r}")
                return 3
            subs = await opener.subscribers(job.subscribers)
        except SessionError as exc:
            emit("error", message=str(exc))
            await opener.close()
            return 2
        senders = [Sender(o.sock, o.remote, o.key, [job.streams[i] for i in p.streams], checks, counters,
                          o.keepalive) for p, o in zip(job.publishers, pubs, strict=True)]
        receivers = [Receiver(o.sock, o.key, checks, counters, job.verify_every, o.keepalive) for o in subs]
        engine = Engine(senders, receivers, counters)
        if receivers:  # else the first latencies could be read times (see bench.mmsg.enable_rx_timestamps)
            await loop.run_in_executor(None, wait_for_arrival_stamps)
        emit("ready", publishers=len(senders), receivers=len(receivers))
        line = await loop.run_in_executor(None, _command, COMMAND_TIMEOUT_S)
        if line != "go":
            emit("error", message=f"expected 'go', got {line!r}")
            await opener.close()
            return 3

        def on_term(signum: int, frame: Any) -> None:
            engine.stop_requested = True

        signal.signal(signal.SIGTERM, on_term)
        final = engine.run(job.seconds, job.drain_s, lambda snap: emit("stats", **snap))
        engine.close()
        final["deleted"] = await opener.close()
        emit("final", **final)
    return 0


def main() -> int:
    line = sys.stdin.readline()
    if not line.strip():
        emit("error", message="no assignment on stdin")
        return 2
    job = Assignment.from_json(json.loads(line))
    return asyncio.run(_run(job))


if __name__ == "__main__":
    sys.exit(main())
