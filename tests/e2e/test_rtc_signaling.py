"""The signaling WebSocket (``GET /v1/rtc``) with aiortc peers: a publisher transport the client
offers, a subscriber transport the node offers, JSON-RPC 2.0 on a real aiohttp socket."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from av import AudioFrame

from sfu.node import Node
from sfu.transport.peer import CloseReason
from tests.e2e.clients import NO_ICE_SERVERS, PatternVideoTrack, RtpLog, _log_rtp, wait_for
from tests.e2e.conftest import token

pytestmark = pytest.mark.timeout(90)
ALL = ("room:join", "room:publish", "room:subscribe")
#: aiortc's default (balanced) bundle policy gives a second section of a kind the first one's
#: transport, then stops that transport when it folds the bundle: an offer with two audio
#: sections never connects.  max-bundle creates every transceiver on the one transport.
MAX_BUNDLE = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def candidates_everywhere(offer: str) -> str:
    """The node lists its candidate in the bundle's first section only (JSEP); aiortc under
    max-bundle keeps the candidates of the last section it reads: copy them into every section."""
    lines = offer.split("\r\n")
    cands = [ln for ln in lines if ln.startswith("a=candidate:") or ln == "a=end-of-candidates"]
    out: list[str] = []
    for ln in lines:
        if ln in cands:
            continue
        out.append(ln)
        if ln.startswith("a=mid:"):
            out.extend(cands)
    return "\r\n".join(out)


class ToneTrack(AudioStreamTrack):
    """A loud 440 Hz tone: aiortc puts its level (a few dBov) in the ssrc-audio-level extension."""

    def __init__(self) -> None:
        super().__init__()
        self._t = 0

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        n = frame.samples
        t = (np.arange(n) + self._t) / 48000
        self._t += n
        pcm = (np.sin(2 * math.pi * 440 * t) * 20000).astype(np.int16).reshape(1, -1)
        out = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        out.sample_rate, out.pts, out.time_base = 48000, frame.pts, fractions.Fraction(1, 48000)
        return out


class RpcFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(json.dumps(error))
        self.error = error

    @property
    def problem(self) -> dict[str, Any]:
        data: dict[str, Any] = self.error["data"]
        return data


@dataclass
class Received:
    """One track this client receives (by the subscriber transport's mid)."""

    participant: str
    kind: str
    track: str
    log: RtpLog = field(default_factory=RtpLog)
    frames: int = 0


class RtcClient:
    """A participant: a WebSocket, an aiortc publisher pc and an aiortc subscriber pc."""

    def __init__(self, node: Node, room: str, identity: str, scopes: tuple[str, ...] = ALL) -> None:
        self.url = node.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token(room, identity, scopes)
        self.identity = identity
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 1
        self.pub = RTCPeerConnection(NO_ICE_SERVERS)
        self.sub = RTCPeerConnection(MAX_BUNDLE)
        self.received: dict[str, Received] = {}  # by mid
        self.offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.answers: list[dict[str, Any]] = []
        self.closed_with: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._hooked: set[str] = set()
        self.published: list[dict[str, Any]] = []

        @self.sub.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url)
        self._tasks.append(asyncio.ensure_future(self._read()))
        self._tasks.append(asyncio.ensure_future(self._answer_offers()))

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if "method" in frame:
                self.events.append((frame["method"], frame["params"]))
                if frame["method"] == "offer":
                    self.offers.put_nowait(frame["params"])
            else:
                fut = self.pending.pop(frame["id"], None) if frame.get("id") is not None else None
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                elif frame.get("id") is None:
                    self.events.append(("error", frame))
        self.closed_with = self.ws.close_code

    async def _answer_offers(self) -> None:
        while True:
            offer = await self.offers.get()
            await self.sub.setRemoteDescription(RTCSessionDescription(sdp=candidates_everywhere(offer["sdp"]), type="offer"))
            vp8 = {int(line.split()[0].split(":")[1]) for line in offer["sdp"].splitlines() if "VP8/90000" in line}
            for t in offer["tracks"]:
                self.received.setdefault(t["mid"], Received(t["participant"], t["kind"], t["track"]))
            for tr in self.sub.getTransceivers():
                if tr.mid in self.received and tr.mid not in self._hooked:
                    self._hooked.add(tr.mid)
                    _log_rtp(tr.receiver, self.received[tr.mid].log, vp8)
            await self.sub.setLocalDescription(await self.sub.createAnswer())
            self.answers.append(await self.call("answer", {"sdp": self.sub.localDescription.sdp}))

    async def _consume(self, track: MediaStreamTrack) -> None:
        mid = next((t.mid for t in self.sub.getTransceivers() if t.receiver.track is track), None)
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if mid in self.received:
                self.received[mid].frames += 1

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.ws is not None
        rid = self.next_id
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}))
        frame = await asyncio.wait_for(fut, 10)
        if "error" in frame:
            raise RpcFailure(frame["error"])
        result: dict[str, Any] = frame["result"]
        return result

    async def join(self) -> dict[str, Any]:
        await self.connect()
        return await self.call("join", {"name": self.identity.title()})

    async def publish(self, *, video: bool = True, audio: bool = True, audio_track: MediaStreamTrack | None = None) -> dict[str, Any]:
        if video:
            self.pub.addTransceiver(PatternVideoTrack(), direction="sendonly")
        if audio:
            self.pub.addTransceiver(audio_track or AudioStreamTrack(), direction="sendonly")
        await self.pub.setLocalDescription(await self.pub.createOffer())
        result = await self.call("publish", {"sdp": self.pub.localDescription.sdp})
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=result["sdp"], type="answer"))
        await wait_for(lambda: self.pub.connectionState == "connected", 10, f"{self.identity} publisher connected")
        self.published = result["tracks"]
        return result

    def named(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.events if m == method]

    def flowing(self) -> dict[str, Received]:
        """The tracks of the latest offer (mid -> what it carries)."""
        offers = self.named("offer")
        if not offers:
            return {}
        return {t["mid"]: self.received[t["mid"]] for t in offers[-1]["tracks"] if t["mid"] in self.received}

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()
        await self.pub.close()
        await self.sub.close()


def receives_from(client: RtcClient, others: list[str], frames: int) -> Callable[[], bool]:
    def check() -> bool:
        got = client.flowing()
        kinds = {(r.participant, r.kind) for r in got.values() if r.frames >= frames}
        return all((o, k) in kinds for o in others for k in ("audio", "video"))

    return check


def holes(clients: list[RtcClient]) -> dict[tuple[str, str, str], list[int]]:
    """Sequence numbers missing between the first and last packet of each received stream:
    none for video (the node answers NACKs); audio is not retransmitted (no NACK for opus), so
    a datagram lost on this loaded loopback stays lost: at most 1 in 200 of audio is tolerated."""
    found: dict[tuple[str, str, str], list[int]] = {}
    for c in clients:
        for r in c.flowing().values():
            missing = r.log.missing()
            if missing and (r.kind == "video" or len(missing) * 200 > len(r.log.packets)):
                found[(c.identity, r.participant, r.kind)] = missing
    return found


async def wait_complete(clients: list[RtcClient], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while holes(clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert holes(clients) == {}


async def test_three_participants_receive_each_other_and_see_leave_and_rejoin(node: Node) -> None:
    room = "rtc-three"
    names = ["alice", "bob", "carol"]
    clients = [RtcClient(node, room, n) for n in names]
    try:
        joined = []
        for c in clients:
            joined.append(await c.join())
            await c.publish()
        assert joined[0]["participants"] == []
        assert [p["identity"] for p in joined[2]["participants"]] == ["alice", "bob"]
        assert joined[2]["participant"]["name"] == "Carol"
        for c in clients:
            others = [n for n in names if n != c.identity]
            await wait_for(receives_from(c, others, 20), 30, f"{c.identity} receives {others}")
        # continuity: no hole left in any received stream (a loaded machine can drop loopback
        # datagrams; NACKed retransmissions fill video holes within a moment)
        await wait_complete(clients)
        for c in clients:
            assert all(a["refused"] == [] for a in c.answers)
        alice, bob, carol = clients
        assert [p["participant"]["identity"] for p in alice.named("participant_joined")] == ["bob", "carol"]
        assert {(p["participant"], p["track"]["kind"]) for p in alice.named("track_published")} == {
            (n, k) for n in ("bob", "carol") for k in ("audio", "video")
        }

        # carol leaves: the others are told, and their next offer takes her tracks away
        assert await carol.call("leave") == {}
        await wait_for(lambda: carol.closed_with == 1000, 5, "carol's socket closed")
        for c in (alice, bob):
            await wait_for(lambda c=c: c.named("participant_left"), 5, "participant_left")
            left = c.named("participant_left")[0]
            assert (left["participant"], left["reason"]) == ("carol", "left")
            await wait_for(lambda c=c: {r.participant for r in c.flowing().values()} == {"alice", "bob"} - {c.identity}, 5, "offer without carol")
        assert "carol" not in node.rooms.rooms[room].participants

        # carol comes back in a new session: joined again, her new tracks reach both
        carol2 = RtcClient(node, room, "carol")
        clients.append(carol2)
        rejoin = await carol2.join()
        assert {p["identity"] for p in rejoin["participants"]} == {"alice", "bob"}
        await carol2.publish()
        for c in (alice, bob):
            carols = lambda c=c: [p for p in c.named("participant_joined") if p["participant"]["identity"] == "carol"]  # noqa: E731
            await wait_for(lambda carols=carols: len(carols()) == 2, 5, "participant_joined again")
            assert carols()[1]["participant"]["sid"] == rejoin["participant"]["sid"]
            others = [n for n in names if n != c.identity]
            await wait_for(receives_from(c, others, 20), 20, f"{c.identity} receives carol again")
            await wait_complete([c])
        await wait_for(receives_from(carol2, ["alice", "bob"], 20), 20, "carol receives again")
    finally:
        for c in clients:
            await c.close()


async def test_unpublish_renegotiates_the_track_away_and_mute_pauses_it(node: Node) -> None:
    room = "rtc-unpub"
    alice, bob = RtcClient(node, room, "alice"), RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await alice.join()
        await alice.publish()
        await bob.join()
        await wait_for(receives_from(bob, ["alice"], 15), 20, "bob receives alice")
        audio = next(t for t in alice.published if t["kind"] == "audio")
        video = next(t for t in alice.published if t["kind"] == "video")

        # mute: bob is told, and alice's audio stops reaching him until she unmutes
        assert await alice.call("mute", {"track": audio["sid"], "muted": True}) == {"track": audio["sid"], "muted": True}
        await wait_for(lambda: bob.named("track_muted"), 5, "track_muted")
        assert bob.named("track_muted")[0] == {"participant": "alice", "track": audio["sid"], "muted": True}
        got = next(r for r in bob.flowing().values() if r.kind == "audio")
        await asyncio.sleep(0.3)
        before = len(got.log.packets)
        await asyncio.sleep(1.0)
        assert len(got.log.packets) == before, "audio kept flowing while muted"
        await alice.call("mute", {"track": audio["sid"], "muted": False})
        await wait_for(lambda: len(got.log.packets) > before + 20, 5, "audio resumes")
        assert got.log.gaps() == [], "the subscriber's sequence numbers must stay continuous across a mute"

        # unpublish: bob gets track_unpublished and an offer whose video section is inactive
        offers_before = len(bob.named("offer"))
        assert await alice.call("unpublish", {"track": video["sid"]}) == {}
        await wait_for(lambda: len(bob.named("offer")) > offers_before and len(bob.answers) > offers_before, 5, "renegotiated")
        assert bob.named("track_unpublished") == [{"participant": "alice", "track": video["sid"]}]
        last = bob.named("offer")[-1]
        assert [t["kind"] for t in last["tracks"]] == ["audio"]
        video_mid = next(m for m, r in bob.received.items() if r.kind == "video")
        assert f"a=mid:{video_mid}\r\na=inactive" in last["sdp"] or "a=inactive" in last["sdp"].split(f"a=mid:{video_mid}")[1].split("m=")[0]
        tr = next(t for t in bob.sub.getTransceivers() if t.mid == video_mid)
        assert tr.currentDirection == "inactive"
        vlog = bob.received[video_mid].log
        await asyncio.sleep(0.3)
        n = len(vlog.packets)
        await asyncio.sleep(1.0)
        assert len(vlog.packets) == n, "video kept flowing after unpublish"
        assert node.router.participants  # alice still there, publishing audio
        assert [t.kind for t in node.rooms.rooms[room].participants["alice"].tracks.values()] == ["audio"]
    finally:
        await alice.close()
        await bob.close()


async def _refused_upgrade(node: Node, query: str) -> tuple[dict[str, Any], int | None]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.url.replace("http://", "ws://") + "/v1/rtc" + query) as ws:
            msg = await ws.receive(timeout=5)
            frame = json.loads(msg.data)
            await ws.receive(timeout=5)
            return frame, ws.close_code


#: the query of each refused upgrade, made when the test runs (a token minted at collection time
#: would have expired by then in a long run)
_REFUSED_QUERIES: dict[str, Callable[[], str]] = {
    "none": lambda: "",
    "nonsense": lambda: "?access_token=nonsense",
    "no-join-scope": lambda: "?access_token=" + token("rtc-errs", "eve", ("room:publish",)),
    "other-room": lambda: "?access_token=" + token("rtc-errs", "eve") + "&room=other-room",
    "expired": lambda: "?access_token=" + token("rtc-errs", "eve", ttl_s=-120),
}


@pytest.mark.parametrize(
    ("query", "code", "status"),
    [
        ("none", "unauthorized", 401),
        ("nonsense", "token/invalid", 401),
        ("no-join-scope", "token/unauthorized", 401),
        ("other-room", "token/unauthorized", 401),
        ("expired", "token/expired", 401),
    ],
)
async def test_refused_connections_get_a_jsonrpc_error_with_the_problem(
    node: Node, query: str, code: str, status: int
) -> None:
    frame, close_code = await _refused_upgrade(node, _REFUSED_QUERIES[query]())
    assert frame["jsonrpc"] == "2.0" and frame["id"] is None
    err = frame["error"]
    assert err["code"] == -32000
    assert err["data"]["code"] == code and err["data"]["status"] == status
    assert err["message"] == err["data"]["title"]
    assert err["data"]["type"] == f"https://levelchat.io/errors/{code}"
    assert err["data"]["request_id"].startswith("req_")
    assert close_code == 4000 + status


async def test_method_errors_are_jsonrpc_errors_with_catalogue_problems(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory()
    room = "rtc-errs"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            node.url + "/v1/rooms",
            json={"room": "rtc-cap1", "max_participants": 1},
            headers={"Authorization": "Bearer " + token("rtc-cap1", "admin", ("room:create",))},
        ) as resp:
            assert resp.status == 201
    viewer = RtcClient(node, room, "viewer", ("room:join", "room:subscribe"))
    first, second = RtcClient(node, "rtc-cap1", "first"), RtcClient(node, "rtc-cap1", "second")
    try:
        await viewer.connect()
        with pytest.raises(RpcFailure) as before_join:
            await viewer.call("mute", {"track": "x", "muted": True})
        assert before_join.value.problem["code"] == "bad_request"
        await viewer.call("join")
        assert viewer.ws is not None
        cases: list[tuple[str, Any, int, str]] = [
            ("publish", {"sdp": "v=0\r\n"}, -32000, "token/unauthorized"),  # no room:publish
            ("nonsense", {}, -32601, "bad_request"),
            ("answer", {"sdp": "v=0"}, -32000, "bad_request"),  # no offer outstanding
            ("mute", {"track": "TR_nope", "muted": True}, -32000, "not_found"),
            ("join", {}, -32000, "conflict"),
            ("mute", [], -32602, "bad_request"),
        ]
        for method, params, rpc_code, code in cases:
            with pytest.raises(RpcFailure) as info:
                await viewer.call(method, params)
            assert info.value.error["code"] == rpc_code, (method, info.value.error)
            assert info.value.problem["code"] == code, (method, info.value.error)
            assert info.value.problem["instance"] == "/v1/rtc"
        # a full room and a bad SDP offer
        await first.join()
        await second.connect()
        with pytest.raises(RpcFailure) as cap:
            await second.call("join")
        assert (cap.value.problem["code"], cap.value.problem["status"]) == ("room/cap-denied", 429)
        with pytest.raises(RpcFailure) as bad_sdp:
            await first.call("publish", {"sdp": "v=0\r\nthis is not sdp"})
        assert bad_sdp.value.problem["code"] == "bad_request"
        assert "SDP" in bad_sdp.value.problem["detail"]
        # the session is still usable after every refusal
        assert "now_ms" in await viewer.call("ping")
    finally:
        for c in (viewer, first, second):
            await c.close()


async def test_unparsable_frames_get_parse_and_request_errors(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token("rtc-frames", "z")) as ws:
            for raw, rid, rpc_code in (
                ("{nope", None, -32700),
                (json.dumps({"id": 5, "method": "ping"}), 5, -32600),
                (json.dumps({"jsonrpc": "2.0", "id": 6, "method": "ping", "params": [1]}), 6, -32602),
                (json.dumps([1, 2]), None, -32600),
            ):
                await ws.send_str(raw)
                frame = json.loads((await ws.receive(timeout=5)).data)
                assert frame["id"] == rid and frame["error"]["code"] == rpc_code, frame
                assert frame["error"]["data"]["code"] == "bad_request"
                assert frame["error"]["data"]["status"] == 400


async def test_rtc_upgrades_are_rate_limited(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(rate_limit_ip_per_s=0.5, rate_limit_ip_burst=3)
    url = node.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token("rtc-limit", "rl")
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(6):
            try:
                async with http.ws_connect(url) as ws:
                    statuses.append(101)
                    await ws.close()
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
                assert exc.headers is not None and "Retry-After" in exc.headers
        async with http.get(node.url + "/v1/rtc?access_token=" + token("rtc-limit", "rl")) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["code"] == "rate_limited"
            assert "X-RateLimit-Reset" in resp.headers
    assert statuses == [101, 101, 101, 429, 429, 429]


async def test_active_speakers_follow_the_audio_level_extension(node: Node) -> None:
    room = "rtc-speak"
    loud, quiet = RtcClient(node, room, "loud"), RtcClient(node, room, "quiet")
    listener = RtcClient(node, room, "listener", ("room:join", "room:subscribe"))
    try:
        await listener.join()
        await loud.join()
        await loud.publish(video=False, audio_track=ToneTrack())
        await quiet.join()
        await quiet.publish(video=False)  # aiortc's silence: 127 dBov
        await wait_for(lambda: any(p["speakers"] for p in listener.named("active_speakers")), 10, "a speaker")
        speakers = next(p["speakers"] for p in listener.named("active_speakers") if p["speakers"])
        assert [s["participant"] for s in speakers] == ["loud"]
        assert speakers[0]["track"] == loud.published[0]["sid"] and speakers[0]["level"] > 0.1
        # muting the loud one silences the list
        await loud.call("mute", {"track": loud.published[0]["sid"], "muted": True})
        await wait_for(lambda: listener.named("active_speakers")[-1]["speakers"] == [], 5, "no speaker")
        assert loud.named("active_speakers"), "publishers hear about speakers too"
    finally:
        for c in (loud, quiet, listener):
            await c.close()


async def test_same_identity_replaces_the_older_socket(node: Node) -> None:
    room = "rtc-dup"
    old, new, watcher = RtcClient(node, room, "dup"), RtcClient(node, room, "dup"), RtcClient(node, room, "w")
    try:
        await watcher.join()
        await old.join()
        await old.publish()
        await wait_for(receives_from(watcher, ["dup"], 5), 15, "watcher receives dup")
        joined = await new.join()
        await wait_for(lambda: old.closed_with is not None, 5, "older socket closed")
        assert old.closed_with == 4000
        assert old.named("disconnected")[0]["reason"] == "replaced"
        assert [p["reason"] for p in watcher.named("participant_left")] == ["replaced"]
        assert node.rooms.rooms[room].participants["dup"].sid == joined["participant"]["sid"]
        await new.publish()
        await wait_for(receives_from(watcher, ["dup"], 5), 15, "watcher receives the new dup")
    finally:
        for c in (old, new, watcher):
            await c.close()


async def test_drain_deadline_tells_participants_why(node: Node) -> None:
    room = "rtc-drain"
    a, b = RtcClient(node, room, "a"), RtcClient(node, room, "b")
    try:
        await a.join()
        await a.publish()
        await b.join()
        node.start_drain(1.0)
        await wait_for(lambda: a.named("node_draining") and b.named("node_draining"), 3, "node_draining")
        assert a.named("node_draining")[0] == {"reason": "draining"}
        await wait_for(lambda: a.closed_with is not None and b.closed_with is not None, 5, "sockets closed")
        for c in (a, b):
            assert c.named("room_closed") == [{"room": room, "reason": "drained"}]
            assert c.closed_with == 4000
        assert not [p for p in node.router.participants.values() if p.room_id == room]
    finally:
        for c in (a, b):
            await c.close()


async def test_room_delete_and_revocation_reasons(node: Node) -> None:
    room = "rtc-del"
    a = RtcClient(node, room, "a")
    try:
        await a.join()
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                node.url + f"/v1/rooms/{room}", headers={"Authorization": "Bearer " + token(room, "op", ("room:admin",))}
            ) as resp:
                assert resp.status == 204
        await wait_for(lambda: a.closed_with is not None, 5, "socket closed")
        assert a.named("room_closed") == [{"room": room, "reason": "room_closed"}]
    finally:
        await a.close()
    b = RtcClient(node, "rtc-rev", "b")
    try:
        await b.join()
        node.revoke()
        await wait_for(lambda: b.named("node_draining"), 3, "told of the revocation")
        assert b.named("node_draining")[0] == {"reason": "node_revoked"}
        node.close_all_rooms(CloseReason.DRAINED)  # what the agent does at the revocation's drain deadline
        await wait_for(lambda: b.closed_with is not None, 5, "socket closed")
        assert b.named("room_closed") == [{"room": "rtc-rev", "reason": "node_revoked"}]
        late = RtcClient(node, "rtc-rev", "late")
        try:
            await late.connect()
            with pytest.raises(RpcFailure) as info:
                await late.call("join")
            assert info.value.problem["code"] == "node_revoked"
        finally:
            await late.close()
    finally:
        await b.close()


async def test_client_disconnect_frees_everything(node: Node) -> None:
    room = "rtc-gone"
    a, b = RtcClient(node, room, "a"), RtcClient(node, room, "b")
    try:
        await a.join()
        await a.publish()
        await b.join()
        await wait_for(receives_from(b, ["a"], 5), 15, "b receives a")
        peers = node.port.peer_count
        assert b.ws is not None
        await b.ws.close()  # no leave: the socket just goes away
        await wait_for(lambda: "b" not in node.rooms.rooms[room].participants, 5, "b released")
        assert node.port.peer_count == peers - 1  # b's subscriber transport
        await wait_for(lambda: a.named("participant_left"), 5, "a told")
        assert a.named("participant_left")[0]["participant"] == "b"
        start = time.monotonic()
        await a.call("leave")
        assert time.monotonic() - start < 2
        await wait_for(lambda: room not in node.rooms.rooms or not node.rooms.rooms[room].participants, 5, "empty")
    finally:
        await a.close()
        await b.close()
