"""The load generator's fleet mode given two control-plane URLs (``--control-url A,B``): with the
first one dead, tokens come from the second at once, and later requests stay with it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.loadgen.nodes import ControlPlaneTokens
from levelchat.tokens import TokenVerifier
from tests.e2e.procs import DEV_KEY, PROJECT, Procs, free_port, wait_nodes_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_tokens_fail_over_to_the_live_replica_and_stay_there(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        control = procs.control()
        await control.wait_healthy()
        node = procs.node("lg-fo", control.url)
        await node.wait_healthy()
        await wait_nodes_state(control.url, ["lg-fo"], "live", timeout_s=15)
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        tokens = ControlPlaneTokens(f"{dead},{control.url}", DEV_KEY.key_id, DEV_KEY.secret, PROJECT)
        started = time.monotonic()
        url, token = await asyncio.to_thread(tokens.token, "lg-fo-room", "alice")
        assert time.monotonic() - started < 5.0  # no backoff before the second replica
        assert url == node.url
        claims = TokenVerifier([DEV_KEY], PROJECT).verify(token, time.time())
        assert claims.identity == "alice" and claims.room == "lg-fo-room"
        assert tokens.control_urls[tokens._current] == control.url
        # stuck to the replica that answered: the dead one is not tried first any more
        assert (await asyncio.to_thread(tokens.token, "lg-fo-room", "bob"))[0] == node.url
        assert tokens._current == 1
        # every replica down: the failure surfaces (no endless retry)
        control.kill9()
        with pytest.raises(OSError):
            await asyncio.to_thread(tokens.token, "lg-fo-room", "carol")
    finally:
        procs.stop_all()
