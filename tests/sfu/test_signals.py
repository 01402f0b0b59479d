import asyncio
import os
import signal

from sfu.signals import stop_on_signals


class _Drainable:
    def __init__(self) -> None:
        self.drained = asyncio.Event()
        self.deadlines: list[float] = []

    def start_drain(self, deadline_s: float) -> None:
        self.deadlines.append(deadline_s)


def _remove_handlers() -> None:
    loop = asyncio.get_running_loop()
    loop.remove_signal_handler(signal.SIGINT)
    loop.remove_signal_handler(signal.SIGTERM)


async def test_first_sigterm_drains_and_stops_when_drained() -> None:
    node = _Drainable()
    announced: list[bool] = []
    stop = stop_on_signals(node, 7.5, lambda: announced.append(True))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert node.deadlines == [7.5] and announced == [True]
        assert not stop.is_set()  # still draining
        node.drained.set()
        await asyncio.wait_for(stop.wait(), 2)
    finally:
        _remove_handlers()


async def test_second_sigterm_stops_at_once() -> None:
    node = _Drainable()
    stop = stop_on_signals(node, 30)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
        assert node.deadlines == [30]  # one drain only
    finally:
        _remove_handlers()


async def test_sigint_stops_at_once() -> None:
    node = _Drainable()
    stop = stop_on_signals(node, 30)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stop.wait(), 2)
        assert node.deadlines == []
    finally:
        _remove_handlers()
