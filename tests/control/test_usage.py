"""Usage on the control plane, with both stores: reports added once per id (a retried heartbeat),
``GET /v1/usage``, the quota on ``POST /v1/tokens``, two control planes on one store agreeing, a
restart losing nothing, bad reports refused with a problem."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from control.store import Store, open_store
from levelchat.usage.meter import period_start_ms
from tests.control.harness import ControlPlane, StandInNode, make_config, token

T0 = 1_700_000_000_000
P = period_start_ms(T0)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, prefix="usage-test:")
    yield s
    await s.close()


async def test_the_store_adds_per_project_and_period_and_each_report_once(store: Store) -> None:
    assert await store.get_usage("proj", P) == (0, 0)
    assert await store.add_usage("proj", {P: 1000}, {P: 10}, "r-1", T0)
    assert not await store.add_usage("proj", {P: 1000}, {P: 10}, "r-1", T0 + 1)  # the retry
    assert await store.add_usage("proj", {P: 500, P - 1: 7}, {}, "r-2", T0 + 2)
    assert await store.add_usage("other", {P: 1}, {}, "r-3", T0 + 3)
    assert await store.add_usage("proj", {P: 1}, {}, "", T0 + 4)  # no id: always added
    assert await store.get_usage("proj", P) == (1501, 10)
    assert await store.get_usage("proj", P - 1) == (7, 0)
    assert await store.get_usage("other", P) == (1, 0)


def report(rid: str, ms: int, period: int | None = None) -> dict[str, object]:
    period = period_start_ms(int(time.time() * 1000)) if period is None else period
    return {"id": rid, "participant_ms": {str(period): ms}, "recording_ms": {str(period): ms // 10}}


async def test_heartbeat_reports_count_once_and_the_quota_refuses_tokens(store_url: str) -> None:
    node = await StandInNode("node-1").start()
    a = await ControlPlane(make_config(store_url, quota_participant_minutes=1.0)).start()
    b = await ControlPlane(make_config(store_url, quota_participant_minutes=1.0)).start()
    try:
        assert (await a.register(node)).status == 201
        first = await a.call("GET", "/v1/usage", scopes=("room:admin",))
        assert first.status == 200, first.body
        assert first.body["participant_minutes"] == 0 and first.body["quota"] == {"participant_minutes": 1.0}
        ok = await a.heartbeat("node-1", usage=report("UR_x-1", 30_000))
        assert ok.status == 200 and ok.body["usage"]["participant_ms"] == 30_000, ok.body
        again = await b.heartbeat("node-1", usage=report("UR_x-1", 30_000))  # retried, on the other replica
        assert again.status == 200 and again.body["usage"]["participant_ms"] == 30_000, again.body
        tok = await b.call("POST", "/v1/tokens", {"room": "room-q", "identity": "ann"}, scopes=("room:admin",))
        assert tok.status != 402, tok.body  # half the quota: tokens still come
        assert (await a.heartbeat("node-1", usage=report("UR_x-2", 30_000))).status == 200
        for plane in (a, b):  # both replicas see the same total
            seen = await plane.call("GET", "/v1/usage", scopes=("room:admin",))
            assert seen.body["participant_minutes"] == 1.0 and seen.body["recording_minutes"] == 0.1, seen.body
            refused = await plane.call("POST", "/v1/tokens", {"room": "room-q", "identity": "bob"}, scopes=("room:admin",))
            assert refused.status == 402 and refused.body["code"] == "quota_exceeded", refused.body
    finally:
        await a.stop()
        await b.stop()
        await node.stop()
    restarted = await ControlPlane(make_config(store_url)).start()  # no quota configured now
    try:
        seen = await restarted.call("GET", "/v1/usage", scopes=("room:admin",))
        assert seen.body["participant_minutes"] == 1.0 and seen.body["quota"] == {}, seen.body
    finally:
        await restarted.stop()


@pytest.mark.parametrize(
    "usage",
    [
        "x",
        {"participant_ms": {}},  # no id
        {"id": "", "participant_ms": {}},
        {"id": "r", "participant_ms": {"abc": 1}},
        {"id": "r", "participant_ms": {"1": -1}},
        {"id": "r", "participant_ms": {"1": True}},
        {"id": "r", "participant_ms": {str(i): 1 for i in range(5)}},
        {"id": "r", "extra": 1},
    ],
)
async def test_a_bad_report_is_a_problem(cp: ControlPlane, usage: object) -> None:
    node = await StandInNode("node-1").start()
    try:
        assert (await cp.register(node)).status == 201
        reply = await cp.heartbeat("node-1", usage=usage)
        assert reply.status == 400 and reply.body["code"] == "bad_request", reply.body
    finally:
        await node.stop()


async def test_usage_needs_a_project_wide_admin_token(cp: ControlPlane) -> None:
    for scopes, room in ((("room:create",), None), (("room:admin",), "room-x")):
        reply = await cp.call("GET", "/v1/usage", tok=token(*scopes, room=room))
        assert reply.status == 401 and reply.body["code"] == "token/unauthorized", reply.body
