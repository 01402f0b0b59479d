"""Webhooks from a real control-plane process: node_registered, node_revoked and node_unhealthy
(a node killed, its lease lapsed) arrive signed at a real receiver; the API takes ``room:admin``
bound to no room (contracts.md) or ``node:admin``, refuses a room's token, and answers
``no_valid_recipients``; events queued while the receiver is down
survive a kill -9 of the control plane (the queue is a table in its SQLite store)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.e2e.clients import wait_for
from tests.e2e.procs import Proc, Procs, admin_token, call, wait_nodes_state
from tests.e2e.webhook_support import Receiver, metric


async def _control(procs: Procs, tmp_path: Path, rx: Receiver) -> Proc:
    env = {
        "LEVELCHAT_CONTROL_STORE": f"sqlite:///{tmp_path / 'control.db'}",
        "LEVELCHAT_CONTROL_WEBHOOKS": json.dumps([{"url": rx.url, "events": ["node_registered", "node_revoked",
                                                                              "node_unhealthy"]}]),
        "LEVELCHAT_CONTROL_WEBHOOKS_RETRY_BASE_S": "0.2",
        "LEVELCHAT_CONTROL_WEBHOOKS_RETRY_MAX_S": "1.0",
    }
    control = procs.control(env=env)
    await control.wait_healthy()
    return control


def _events(rx: Receiver) -> set[tuple[str, str]]:
    return {(d.body["event"], d.body["node"]["id"]) for d in rx.accepted()}


async def test_node_events_arrive_signed_and_survive_a_control_plane_crash(procs: Procs, tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    try:
        control = await _control(procs, tmp_path, rx)
        url = control.url + "/v1/webhooks"
        for refused in (admin_token("room:join"), admin_token("room:admin", room="some-room")):
            reply = await call("GET", url, token=refused)
            assert reply.status == 401 and reply.body["code"] == "token/unauthorized", reply.body
        for taken in (admin_token("room:admin"), admin_token("node:admin")):
            assert (await call("GET", url, token=taken)).status == 200
        listed = (await call("GET", url)).body["webhooks"]
        assert [(h["url"], h["source"]) for h in listed] == [(rx.url, "config")]
        reply = await call("POST", url + "/test", {"event": "room_started"})
        assert (reply.status, reply.body["code"]) == (400, "no_valid_recipients")

        keep = procs.node("cp-keep", control.url)
        doomed = procs.node("cp-doomed", control.url)
        await keep.wait_healthy()
        await doomed.wait_healthy()
        await wait_nodes_state(control.url, ["cp-keep", "cp-doomed"], "live", 20)
        await wait_for(lambda: {("node_registered", "cp-keep"), ("node_registered", "cp-doomed")} <= _events(rx),
                     20, "node_registered twice")
        assert (await call("DELETE", control.url + "/v1/nodes/cp-keep")).status == 200
        await wait_for(lambda: ("node_revoked", "cp-keep") in _events(rx), 20, "node_revoked")
        assert all(d.signed and d.headers["LevelChat-Event-Id"] == d.body["id"] for d in rx.got)

        await rx.stop()  # receiver away: the lapse of the next node is queued, then the control plane dies
        doomed.kill9()
        await _until_metric(control, "levelchat_webhooks_retried_total", 1)
        assert await metric(control.url, "levelchat_webhooks_queue_depth") >= 1
        control.kill9()
        control = await _control(procs, tmp_path, rx)  # same store file, same queue
        await rx.start()
        await wait_for(lambda: ("node_unhealthy", "cp-doomed") in _events(rx), 30, "node_unhealthy after the crash")
        unhealthy = next(d.body for d in rx.accepted() if d.body["event"] == "node_unhealthy")
        assert unhealthy["node"]["reason"] == "lease lapsed"
        await _until_metric(control, "levelchat_webhooks_delivered_total", 1)
    finally:
        await rx.stop()


async def _until_metric(proc: Proc, name: str, value: float) -> None:
    end = time.monotonic() + 30
    while (got := await metric(proc.url, name)) < value:
        if time.monotonic() > end:
            raise AssertionError(f"{name} = {got}, waited for >= {value}")
        await asyncio.sleep(0.1)
