"""The participants (moderation) API against a live node with aiortc signaling participants:
what each action does to the affected client (told within 1 s) and to everyone else's media."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import (
    RID_PACKETS,
    SimulcastSender,
    choose_layer,
    payload_logger,
    published_layers,
    simulcast_offer,
    whep_location,
    whip_publish,
)
from tests.e2e.test_rtc_data import DataClient, metric, metrics
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient, receives_from

pytestmark = pytest.mark.timeout(120)
SUB = ("room:join", "room:subscribe")


async def api(
    base: str, method: str, path: str, body: Any = None, *, room: str | None = None, tok: str | None = None
) -> tuple[int, Any]:
    """One admin call (``room:admin`` for ``room``, or the given token); the status and JSON body."""
    headers = {"Authorization": "Bearer " + (tok or token(room or "x", "operator", ("room:admin",)))}
    async with aiohttp.ClientSession() as http, http.request(method, base + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


def packets(client: RtcClient, publisher: str, kind: str) -> int:
    return sum(len(r.log.packets) for r in client.received.values() if r.participant == publisher and r.kind == kind)


async def grows(client: RtcClient, publisher: str, kind: str, by: int = 10, timeout: float = 10.0) -> None:
    start = packets(client, publisher, kind)
    await wait_for(lambda: packets(client, publisher, kind) >= start + by, timeout, f"{client.identity} gets {publisher}'s {kind}")


async def stays(client: RtcClient, publisher: str, kind: str, settle: float = 0.5, hold: float = 1.0) -> None:
    """No more packets of that stream after ``settle`` s (what was in flight), for ``hold`` s."""
    await asyncio.sleep(settle)
    before = packets(client, publisher, kind)
    await asyncio.sleep(hold)
    assert packets(client, publisher, kind) == before, f"{client.identity} still gets {publisher}'s {kind}"


async def test_list_remove_and_rejoin(node: Node) -> None:
    room = "mod-remove"
    alice, bob, carol = RtcClient(node, room, "alice"), RtcClient(node, room, "bob"), RtcClient(node, room, "carol", SUB)
    clients = [alice, bob, carol]
    try:
        for c in (alice, bob):
            await c.join()
            await c.publish()
        await carol.join()
        await wait_for(receives_from(carol, ["alice", "bob"], 10), 30, "carol receives both")

        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        assert status == 200
        by_id = {p["identity"]: p for p in body["participants"]}
        assert set(by_id) == {"alice", "bob", "carol"}
        assert sorted(t["kind"] for t in by_id["alice"]["tracks"]) == ["audio", "video"]
        assert all(t["muted"] is False and t["layers"] == [] and t["id"].startswith("TR_") for t in by_id["alice"]["tracks"])
        assert by_id["carol"]["tracks"] == []
        assert by_id["carol"]["permissions"] == {"can_publish": False, "can_subscribe": True, "can_publish_data": False}
        assert by_id["alice"]["permissions"] == {"can_publish": True, "can_subscribe": True, "can_publish_data": True}
        assert by_id["alice"]["name"] == "Alice" and by_id["alice"]["quality"] in ("excellent", "good", "poor")
        assert isinstance(by_id["alice"]["joined_at"], int) and by_id["alice"]["joined_at"] > 1_700_000_000_000
        assert by_id["alice"]["transport"] == "udp" and by_id["carol"]["transport"] == "udp"
        assert all(t["loss"] == 0.0 for t in by_id["alice"]["tracks"])  # loopback loses nothing

        # the live bit rate: measured between two listings (the first one starts the meter)
        await asyncio.sleep(1.0)
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        rates = {t["kind"]: t["bitrate_bps"] for p in body["participants"] if p["identity"] == "alice" for t in p["tracks"]}
        assert rates["audio"] > 8_000 and rates["video"] > 8_000, rates

        # refusals: not an admin, another room's admin, unknown participant, unknown room
        status, problem = await api(node.url, "GET", f"/v1/rooms/{room}/participants", tok=token(room, "alice"))
        assert (status, problem["code"]) == (401, "token/unauthorized")
        status, problem = await api(node.url, "DELETE", f"/v1/rooms/{room}/participants/bob", tok=token("other", "op", ("room:admin",)))
        assert status in (401, 403) and problem["code"] in ("token/unauthorized", "forbidden")
        status, problem = await api(node.url, "DELETE", f"/v1/rooms/{room}/participants/nobody", room=room)
        assert (status, problem["code"]) == (404, "not_found")
        status, problem = await api(node.url, "GET", "/v1/rooms/no-such-room/participants", room="no-such-room")
        assert (status, problem["code"]) == (404, "room_not_found")

        # remove bob: told within 1 s, socket closed, his media gone from carol, alice's flows on
        status, _ = await api(node.url, "DELETE", f"/v1/rooms/{room}/participants/bob", room=room)
        assert status == 204
        await wait_for(lambda: bob.named("room_closed"), 1.0, "bob told room_closed")
        assert bob.named("room_closed") == [{"room": room, "reason": "removed"}]
        await wait_for(lambda: bob.closed_with is not None, 5, "bob's socket closed")
        await wait_for(lambda: [p["participant"] for p in carol.named("participant_left")] == ["bob"], 5, "carol told")
        assert carol.named("participant_left")[0]["reason"] == "removed"
        await stays(carol, "bob", "video")
        await grows(carol, "alice", "video")
        await grows(carol, "alice", "audio")
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        assert {p["identity"] for p in body["participants"]} == {"alice", "carol"}

        # a removed identity may join again with a valid token (as in LiveKit)
        bob2 = RtcClient(node, room, "bob")
        clients.append(bob2)
        await bob2.join()
        await bob2.publish()
        await wait_for(lambda: packets(carol, "bob", "video") > 0 and len(carol.named("participant_joined")) >= 1, 20, "bob back")
    finally:
        for c in clients:
            await c.close()


async def test_server_mute_stops_forwarding_and_tells_the_publisher(node: Node) -> None:
    room = "mod-mute"
    alice, bob = RtcClient(node, room, "alice"), RtcClient(node, room, "bob", SUB)
    try:
        await alice.join()
        await alice.publish()
        await bob.join()
        await wait_for(receives_from(bob, ["alice"], 10), 30, "bob receives alice")
        audio = next(t["sid"] for t in alice.published if t["kind"] == "audio")
        video = next(t["sid"] for t in alice.published if t["kind"] == "video")
        base = f"/v1/rooms/{room}/participants/alice/tracks"

        status, body = await api(node.url, "POST", f"{base}/{audio}/mute", {"muted": True}, room=room)
        assert (status, body["muted"]) == (200, True)
        await wait_for(lambda: alice.named("track_muted"), 1.0, "alice told of the server mute")
        assert alice.named("track_muted")[0] == {"participant": "alice", "track": audio, "muted": True, "by": "server"}
        await wait_for(lambda: bob.named("track_muted"), 1.0, "bob told")
        await stays(bob, "alice", "audio")
        await grows(bob, "alice", "video")  # the other track flows on
        # the publisher may not undo a server mute itself
        with pytest.raises(RpcFailure) as refused:
            await alice.call("mute", {"track": audio, "muted": False})
        assert refused.value.problem["code"] == "forbidden"
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        alice_view = next(p for p in body["participants"] if p["identity"] == "alice")
        assert {t["id"]: t["muted"] for t in alice_view["tracks"]} == {audio: True, video: False}

        # video: muted then unmuted, it resumes at a keyframe (aiortc decodes frames again)
        await api(node.url, "POST", f"{base}/{video}/mute", {"muted": True}, room=room)
        await stays(bob, "alice", "video")
        got = next(r for r in bob.received.values() if r.kind == "video")
        frames = got.frames
        status, _ = await api(node.url, "POST", f"{base}/{video}/mute", {"muted": False}, room=room)
        assert status == 200
        await wait_for(lambda: got.frames > frames + 5, 10, "video decodes again after the unmute")
        await api(node.url, "POST", f"{base}/{audio}/mute", {"muted": False}, room=room)
        await grows(bob, "alice", "audio")
        assert [e["muted"] for e in alice.named("track_muted")] == [True, True, False, False]

        # refusals
        status, problem = await api(node.url, "POST", f"{base}/TR_nope/mute", {"muted": True}, room=room)
        assert (status, problem["code"]) == (404, "not_found")
        status, problem = await api(node.url, "POST", f"{base}/{audio}/mute", {"muted": "yes"}, room=room)
        assert (status, problem["code"]) == (400, "bad_request")
        status, problem = await api(node.url, "POST", f"{base}/{audio}/mute", {"muted": True}, tok=token(room, "bob"))
        assert (status, problem["code"]) == (401, "token/unauthorized")
    finally:
        await alice.close()
        await bob.close()


async def test_permissions_and_metadata_are_enforced_at_once(node: Node) -> None:
    room = "mod-perms"
    alice, bob = RtcClient(node, room, "alice"), RtcClient(node, room, "bob")
    try:
        await alice.join()
        await alice.publish()
        await bob.join()
        await bob.publish()
        await wait_for(receives_from(bob, ["alice"], 10), 30, "bob receives alice")
        await wait_for(receives_from(alice, ["bob"], 10), 30, "alice receives bob")
        path = f"/v1/rooms/{room}/participants/alice"

        # metadata and name: the whole room is told, alice too
        status, body = await api(node.url, "PATCH", path, {"metadata": '{"hand": "up"}', "name": "Alice L."}, room=room)
        assert status == 200 and body["metadata"] == '{"hand": "up"}' and body["name"] == "Alice L."
        for c in (alice, bob):
            await wait_for(lambda c=c: c.named("participant_updated"), 1.0, f"{c.identity} told of the update")
            upd = c.named("participant_updated")[0]["participant"]
            assert (upd["identity"], upd["metadata"], upd["name"]) == ("alice", '{"hand": "up"}', "Alice L.")

        # can_subscribe false: bob stops receiving at once; true again: he receives again
        status, _ = await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/bob", {"permissions": {"can_subscribe": False}}, room=room)
        assert status == 200
        await stays(bob, "alice", "video")
        await stays(bob, "alice", "audio", settle=0)
        await grows(alice, "bob", "video")  # his publishing is untouched
        status, _ = await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/bob", {"permissions": {"can_subscribe": True}}, room=room)
        assert status == 200
        await wait_for(receives_from(bob, ["alice"], 10), 20, "bob receives again")
        await grows(bob, "alice", "video")

        # can_publish false: her tracks go (bob told, his media from her stops), a new publish is refused
        status, body = await api(node.url, "PATCH", path, {"permissions": {"can_publish": False}}, room=room)
        assert status == 200 and body["permissions"]["can_publish"] is False and body["tracks"] == []
        await wait_for(lambda: len(bob.named("track_unpublished")) == 2, 1.0, "bob told her tracks went")
        await stays(bob, "alice", "video")
        with pytest.raises(RpcFailure) as refused:
            await alice.call("publish", {"sdp": alice.pub.localDescription.sdp})
        assert refused.value.problem["code"] == "forbidden"
        await grows(alice, "bob", "video")  # what she receives goes on

        # refusals: bad bodies, unknown participant
        for bad in ({"permissions": {"can_fly": True}}, {"permissions": {"can_publish": 1}}, {"metadata": 5}, {"colour": "red"}):
            status, problem = await api(node.url, "PATCH", path, bad, room=room)
            assert (status, problem["code"]) == (400, "bad_request"), bad
        status, problem = await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/zed", {"metadata": "x"}, room=room)
        assert (status, problem["code"]) == (404, "not_found")
    finally:
        await alice.close()
        await bob.close()


async def test_server_data_and_can_publish_data(node: Node) -> None:
    room = "mod-data"
    alice, bob, carol = (DataClient(node, room, n) for n in ("alice", "bob", "carol"))
    clients = [alice, bob, carol]
    try:
        for c in clients:
            await c.join()
            await c.open_data()
        path = f"/v1/rooms/{room}/data"
        status, body = await api(node.url, "POST", path, {"data": "hello from the server"}, room=room)
        assert (status, body) == (202, {"recipients": 3})
        for c in clients:
            await wait_for(lambda c=c: c.from_("") == ["hello from the server"], 5, f"{c.identity} gets it")
        status, body = await api(node.url, "POST", path, {"data": "AAEC/w==", "binary": True, "destinations": ["bob"]}, room=room)
        assert (status, body) == (202, {"recipients": 1})
        await wait_for(lambda: bob.from_("")[-1:] == [b"\x00\x01\x02\xff"], 5, "bob gets the binary message")
        await asyncio.sleep(0.3)
        assert len(alice.from_("")) == 1 and len(carol.from_("")) == 1
        for bad in ({"data": 5}, {"data": "!!", "binary": True}, {"data": "x", "destinations": "bob"}, {"data": "x" * 70_000}):
            status, problem = await api(node.url, "POST", path, bad, room=room)
            assert (status, problem["code"]) == (400, "bad_request"), str(bad)[:40]
        status, problem = await api(node.url, "POST", path, {"data": "x"}, tok=token(room, "alice"))
        assert (status, problem["code"]) == (401, "token/unauthorized")

        # can_publish_data false: alice's messages are dropped (counted), the others' flow
        def dropped(text: str) -> float:
            return metric(text, 'levelchat_sfu_data_messages_dropped_total{reason="not_permitted"}')

        before = dropped(await metrics(node))
        status, _ = await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/alice", {"permissions": {"can_publish_data": False}}, room=room)
        assert status == 200
        alice.send_text("still here?")
        bob.send_text("bob speaking")
        await wait_for(lambda: carol.from_("bob") == ["bob speaking"], 5, "bob's message arrives")
        await wait_for(lambda: alice.from_("bob") == ["bob speaking"], 5, "alice still receives")
        await asyncio.sleep(0.3)
        assert carol.from_("alice") == [] and bob.from_("alice") == []
        assert dropped(await metrics(node)) >= before + 1
        await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/alice", {"permissions": {"can_publish_data": True}}, room=room)
        alice.send_text("back")
        await wait_for(lambda: carol.from_("alice") == ["back"], 5, "alice may send again")
    finally:
        for c in clients:
            await c.close()


async def test_whip_and_whep_participants(node: Node) -> None:
    """WHIP and WHEP sessions are participants too: listed, muted, held, removed (URL gone)."""
    room = "mod-whip"
    cam = WhipPublisher(node.url, room, token(room, "cam", ("room:join", "room:publish")))
    viewer = WhepSubscriber(node.url, room, token(room, "viewer", SUB))
    watcher = RtcClient(node, room, "watcher", SUB)
    try:
        await cam.connect(timeout=20)
        status, _ = await viewer.connect(timeout=20)
        assert status == 201
        await watcher.join()
        await wait_for(lambda: viewer.frames["video"] > 5, 20, "viewer decodes video")
        await wait_for(receives_from(watcher, ["cam"], 5), 20, "watcher receives cam")
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        by_id = {p["identity"]: p for p in body["participants"]}
        assert (by_id["cam"]["kind"], by_id["viewer"]["kind"], by_id["watcher"]["kind"]) == ("whip", "whep", "rtc")
        assert sorted(t["kind"] for t in by_id["cam"]["tracks"]) == ["audio", "video"]
        assert by_id["viewer"]["permissions"] == {"can_publish": False, "can_subscribe": True, "can_publish_data": False}
        video = next(t["id"] for t in by_id["cam"]["tracks"] if t["kind"] == "video")

        def viewer_video() -> int:
            return len(viewer.logs["video"].packets)

        async def viewer_stays() -> None:
            await asyncio.sleep(0.5)
            before = viewer_video()
            await asyncio.sleep(1.0)
            assert viewer_video() == before, "the viewer still receives video"

        # server mute of the WHIP track: both kinds of subscriber stop; unmute: decoded again
        status, _ = await api(node.url, "POST", f"/v1/rooms/{room}/participants/cam/tracks/{video}/mute", {"muted": True}, room=room)
        assert status == 200
        await viewer_stays()
        await stays(watcher, "cam", "video", settle=0, hold=0.5)
        frames = viewer.frames["video"]
        await api(node.url, "POST", f"/v1/rooms/{room}/participants/cam/tracks/{video}/mute", {"muted": False}, room=room)
        await wait_for(lambda: viewer.frames["video"] > frames + 5, 10, "viewer decodes again")

        # the WHEP viewer may not subscribe for a while
        path = f"/v1/rooms/{room}/participants/viewer"
        status, _ = await api(node.url, "PATCH", path, {"permissions": {"can_subscribe": False}}, room=room)
        assert status == 200
        await viewer_stays()
        await grows(watcher, "cam", "video")  # others unaffected
        frames = viewer.frames["video"]
        await api(node.url, "PATCH", path, {"permissions": {"can_subscribe": True}}, room=room)
        await wait_for(lambda: viewer.frames["video"] > frames + 5, 10, "viewer decodes after the grant")

        # remove the viewer: its media stops, its session URL is gone
        status, _ = await api(node.url, "DELETE", path, room=room)
        assert status == 204
        await viewer_stays()
        await wait_for(lambda: [p["participant"] for p in watcher.named("participant_left")] == ["viewer"], 5, "told")
        # remove the publisher: the watcher stops receiving it, its WHIP URL is gone
        status, _ = await api(node.url, "DELETE", f"/v1/rooms/{room}/participants/cam", room=room)
        assert status == 204
        await wait_for(lambda: len(watcher.named("participant_left")) == 2, 5, "watcher told cam left")
        assert watcher.named("participant_left")[1]["reason"] == "removed"
        await stays(watcher, "cam", "video")
        assert await cam.delete() == 404
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        assert [p["identity"] for p in body["participants"]] == ["watcher"]
    finally:
        await cam.close()
        await viewer.close()
        await watcher.close()


async def test_granting_subscribe_beyond_the_token_starts_the_subscriber_side(node: Node) -> None:
    room = "mod-grant"
    alice, cam = RtcClient(node, room, "alice"), RtcClient(node, room, "cam", ("room:join", "room:publish"))
    try:
        await alice.join()
        await alice.publish()
        joined = await cam.join()
        assert joined["can_subscribe"] is False
        await asyncio.sleep(0.5)
        assert cam.named("offer") == []  # nothing offered to a publish-only session
        status, body = await api(node.url, "PATCH", f"/v1/rooms/{room}/participants/cam", {"permissions": {"can_subscribe": True}}, room=room)
        assert status == 200 and body["permissions"]["can_subscribe"] is True
        await wait_for(receives_from(cam, ["alice"], 10), 30, "cam receives alice after the grant")
    finally:
        await alice.close()
        await cam.close()


async def test_server_mute_of_a_simulcast_track_mutes_every_layer(node: Node) -> None:
    room = "mod-simulcast"
    sender = SimulcastSender.create()
    viewer = WhepSubscriber(node.url, room, token(room, "viewer", SUB), audio=False)
    seen: list[str] = []
    try:
        answer = await whip_publish(node.url, room, "alice", simulcast_offer(sender.lite))
        await sender.lite.connect(answer)
        sender.start(40)
        await wait_for(lambda: all(n > RID_PACKETS for n in sender.sent.values()), 5, "every layer sending")
        payload_logger(viewer, seen)
        status, _ = await viewer.connect()
        assert status == 201
        await wait_for(lambda: seen.count("f") >= 20, 10, "the viewer gets the highest layer")
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        alice = next(p for p in body["participants"] if p["identity"] == "alice")
        assert [(t["kind"], t["layers"]) for t in alice["tracks"]] == [("video", ["q", "h", "f"])]
        # each layer's bit rate, measured from this listing to the next
        await asyncio.sleep(1.0)
        status, body = await api(node.url, "GET", f"/v1/rooms/{room}/participants", room=room)
        (video,) = next(p for p in body["participants"] if p["identity"] == "alice")["tracks"]
        by_layer = video["layer_bitrates_bps"]
        assert sorted(by_layer) == ["f", "h", "q"] and all(bps > 0 for bps in by_layer.values()), video
        assert video["bitrate_bps"] == sum(by_layer.values())
        track = alice["tracks"][0]["id"]
        path = f"/v1/rooms/{room}/participants/alice/tracks/{track}/mute"
        status, body = await api(node.url, "POST", path, {"muted": True}, room=room)
        assert (status, body["muted"]) == (200, True)
        assert all(t.muted for t in published_layers(node, "alice").values())
        await asyncio.sleep(0.5)
        before = len(seen)
        await asyncio.sleep(1.0)
        assert len(seen) == before, "a layer kept flowing while the source was muted"
        # a layer switch asked for while muted does not bring media back
        await choose_layer(node, whep_location(node, room, "viewer"), token(room, "viewer", SUB), "q")
        await asyncio.sleep(1.0)
        assert len(seen) == before
        status, _ = await api(node.url, "POST", path, {"muted": False}, room=room)
        assert status == 200
        await wait_for(lambda: seen[before:].count("q") >= 20, 10, "the chosen layer after the unmute")
    finally:
        await viewer.close()
        await sender.stop()
