"""A room spread over the two workers of one node (``relay_spread``): real processes, aiortc
participants over the WebSocket, media between the workers over their relay."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.clients import WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs, call
from tests.e2e.test_rtc_data import DataClient
from tests.e2e.test_rtc_signaling import RtcClient, receives_from
from tests.e2e.test_workers import wait_for_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def _workers(url: str) -> list[dict[str, Any]]:
    reply = await call("GET", url + "/healthz")
    workers: list[dict[str, Any]] = reply.body["workers"]
    return workers


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        return await resp.text()


def _value(text: str, name: str, worker: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("worker") == worker:
                return float(sample.value)
    raise AssertionError(f"{name} of worker {worker} not in /metrics")


async def test_a_room_spread_over_two_workers(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    node = procs.node("relay-2w", None, extra_args=("--workers", "2"), env={"LEVELCHAT_SFU_RELAY_SPREAD": "true"})
    clients: list[RtcClient] = []
    try:
        await node.wait_healthy()
        await wait_for_ready(node)
        room = "spread"
        async with aiohttp.ClientSession() as http:  # a policy of its own, on its home worker
            tok = token(room, "admin", scopes=("room:create",))
            async with http.post(f"{node.url}/v1/rooms", json={"room": room, "max_participants": 7},
                                 headers={"Authorization": f"Bearer {tok}"}) as resp:
                assert resp.status == 201, await resp.text()
        alice, bob, carol = (RtcClient(node, room, n) for n in ("alice", "bob", "carol"))  # type: ignore[arg-type]
        clients += [alice, bob, carol]
        await alice.join()  # worker 0 (the room's home)
        await alice.publish()
        # worker 1 asks worker 0 for the room before it seats bob: the join answers as one worker's
        bob_joined = await bob.join()
        assert bob_joined["room"]["max_participants"] == 7  # the room's policy came along
        assert [p["identity"] for p in bob_joined["participants"]] == ["alice"]
        assert {t["sid"] for t in bob_joined["participants"][0]["tracks"]} == {t["sid"] for t in alice.published}
        await carol.join()  # worker 0 again
        await wait_for(receives_from(bob, ["alice"], 30), 30, "bob (worker 1) decodes alice (worker 0)")
        await wait_for(receives_from(carol, ["alice"], 30), 30, "carol (worker 0) decodes alice")
        # a publisher on worker 1 is seen on worker 0: the same events as in one worker
        await bob.publish()
        await wait_for(receives_from(alice, ["bob"], 30), 30, "alice (worker 0) decodes bob (worker 1)")
        assert [p["participant"]["identity"] for p in alice.named("participant_joined")] == ["bob", "carol"]
        assert {(p["participant"], p["track"]["kind"]) for p in alice.named("track_published")} == {
            ("bob", "audio"), ("bob", "video")
        }
        bob_tracks = {t["sid"] for t in bob.published}
        assert {p["track"]["sid"] for p in alice.named("track_published")} == bob_tracks
        # keyframe requests from worker 1's viewers crossed the relay to alice's worker (bob's
        # subscription asked for one), and the relay is counted
        text = await _metrics(node.url)
        assert _value(text, "levelchat_sfu_relays", "0") == 1 and _value(text, "levelchat_sfu_relays", "1") == 1
        assert _value(text, "levelchat_sfu_relay_keyframe_requests_total", "0") >= 1
        assert _value(text, "levelchat_sfu_relayed_tracks_out", "0") == 2  # alice's two, once each
        # worker 1 is killed: worker 0's participants see bob's tracks and bob go; alice's media
        # to carol never stops
        pid = next(w["pid"] for w in await _workers(node.url) if w["index"] == 1)
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: any(p["participant"] == "bob" for p in alice.named("participant_left")), 15, "bob left")
        await wait_for(lambda: {p["participant"] for p in carol.named("track_unpublished")} >= {"bob"}, 10, "carol told")
        before = {mid: r.frames for mid, r in carol.flowing().items() if r.participant == "alice"}
        await wait_for(
            lambda: all(carol.flowing()[m].frames > n + 20 for m, n in before.items()), 20, "carol still decodes alice"
        )
        # the worker comes back: the relay is set up again and a new viewer there sees alice
        assert (await wait_for_ready(node, 60)).status == 200
        dave = RtcClient(node, room, "dave")  # type: ignore[arg-type]
        clients.append(dave)
        dave_joined = await dave.join()  # worker 1 (no session of the room there)
        assert [p["identity"] for p in dave_joined["participants"]] == ["alice", "carol"]
        await wait_for(receives_from(dave, ["alice"], 20), 30, "dave (worker 1 again) decodes alice")
        text = await _metrics(node.url)
        assert _value(text, "levelchat_sfu_relays", "1") == 1
        assert _value(text, "levelchat_sfu_relayed_tracks_in", "1") == 2  # alice's, into worker 1
    finally:
        for c in clients:
            await c.close()
        procs.stop_all()


async def test_data_messages_reach_everyone_across_the_workers(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    node = procs.node("relay-data", None, extra_args=("--workers", "2"), env={"LEVELCHAT_SFU_RELAY_SPREAD": "true"})
    clients: list[DataClient] = []
    try:
        await node.wait_healthy()
        await wait_for_ready(node)
        for name in ("alice", "bob", "carol"):  # workers 0, 1, 0
            c = DataClient(node, "spread-data", name)  # type: ignore[arg-type]
            clients.append(c)
            await c.join()
            await c.open_data()
        alice, bob, carol = clients
        await wait_for(lambda: len(alice.named("participant_joined")) == 2, 10, "alice sees bob and carol")
        alice.send_text("hello all")
        bob.send_bytes(b"\x00from bob")
        bob.send_text("only alice", to=("alice",))
        await wait_for(lambda: bob.from_("alice") == ["hello all"] and carol.from_("alice") == ["hello all"], 10, "alice's")
        await wait_for(lambda: alice.from_("bob") == [b"\x00from bob", "only alice"], 10, "bob's to alice")
        await wait_for(lambda: carol.from_("bob") == [b"\x00from bob"], 10, "bob's to carol")
        await asyncio.sleep(0.3)
        assert "only alice" not in carol.from_("bob")  # destinations hold across the relay
        assert alice.from_("alice") == bob.from_("bob") == []  # never echoed
        assert len(bob.from_("alice")) == 1 and len(carol.from_("alice")) == 1  # exactly once
    finally:
        for c in clients:
            await c.close()
        procs.stop_all()


async def test_a_whip_publisher_is_seen_by_websocket_viewers_on_both_workers(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    node = procs.node("relay-whip", None, extra_args=("--workers", "2"), env={"LEVELCHAT_SFU_RELAY_SPREAD": "true"})
    pub: WhipPublisher | None = None
    viewers: list[RtcClient] = []
    try:
        await node.wait_healthy()
        await wait_for_ready(node)
        room = "spread-whip"
        pub = WhipPublisher(node.url, room, token(room, "cam"))
        await pub.connect()  # the room's home, worker 0
        for name, before in (("v0", ["cam"]), ("v1", ["cam", "v0"])):  # workers 0 and 1
            v = RtcClient(node, room, name)  # type: ignore[arg-type]
            viewers.append(v)
            joined = await v.join()
            assert [p["identity"] for p in joined["participants"]] == before
        for v in viewers:
            await wait_for(receives_from(v, ["cam"], 30), 30, f"{v.identity} decodes the WHIP publisher")
        text = await _metrics(node.url)
        assert _value(text, "levelchat_sfu_relayed_tracks_in", "1") == 2
    finally:
        for v in viewers:
            await v.close()
        if pub is not None:
            await pub.close()
        procs.stop_all()
