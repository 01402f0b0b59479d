"""``/v1/webhooks`` through a real two-worker node: the front gives an endpoint added through the
API to every worker under one id, so rooms on either worker send their events to it, the list and
the test dispatch answer, and ``DELETE`` removes it from both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.clients import wait_for
from tests.e2e.procs import Procs, call
from tests.e2e.test_webhooks import FAST
from tests.e2e.test_workers import wait_for_ready
from tests.e2e.webhook_support import Receiver

pytestmark = pytest.mark.timeout(120)


async def test_an_endpoint_added_through_the_front_gets_every_workers_events(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    receiver = Receiver()
    await receiver.start()
    try:
        env = {**FAST, "LEVELCHAT_SFU_WEBHOOKS_DB": str(tmp_path / "webhooks.db")}
        node = procs.node("hooks-front", None, env=env, extra_args=("--workers", "2"))
        await node.wait_healthy()
        assert (await wait_for_ready(node)).status == 200
        added = await call("POST", node.url + "/v1/webhooks", {"url": receiver.url, "events": ["room_started"]})
        assert added.status == 201, added.body
        eid = added.body["id"]
        listed = await call("GET", node.url + "/v1/webhooks")
        assert [h["id"] for h in listed.body["webhooks"]] == [eid]

        # rooms until both workers have sent a room_started (placement goes by the polled load)
        senders: set[str] = set()
        for i in range(12):
            assert (await call("POST", node.url + "/v1/rooms", {"room": f"front-hooks-{i}"})).status == 201
            await wait_for(lambda n=i + 1: len(receiver.accepted()) >= n, 20, f"room_started of room {i}")
            senders = {d.body["node"]["id"] for d in receiver.accepted()}
            if len(senders) == 2:
                break
            await asyncio.sleep(0.6)  # the front polls the workers' load
        assert senders == {"hooks-front-w0", "hooks-front-w1"}, senders
        assert all(d.signed for d in receiver.accepted())

        tested = await call("POST", node.url + "/v1/webhooks/test", {"event": "room_started"})
        assert tested.status == 202 and tested.body["endpoints"] == [eid], tested.body
        await wait_for(lambda: tested.body["id"] in receiver.accepted_ids(), 20, "the test event")

        assert (await call("DELETE", f"{node.url}/v1/webhooks/{eid}")).status == 204
        assert (await call("GET", node.url + "/v1/webhooks")).body["webhooks"] == []
        for _ in range(4):  # whichever worker asks, nobody takes it any more
            refused = await call("POST", node.url + "/v1/webhooks/test", {"event": "room_started"})
            assert refused.status == 400 and refused.body["code"] == "no_valid_recipients", refused.body
        before = len(receiver.got)
        for i in range(4):
            assert (await call("POST", node.url + "/v1/rooms", {"room": f"front-after-{i}"})).status == 201
        await asyncio.sleep(1.0)
        assert len(receiver.got) == before  # the rooms after the delete send nothing
    finally:
        procs.stop_all()
        await receiver.stop()
