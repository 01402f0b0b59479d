"""Relays between the workers of one node: the worker's end (``RelayHub``) and its control channel.

The front sets each relay up (``POST /internal/relay`` to both workers, with the relay's id, a
fresh 32-byte secret, each end's label and the other's media address and unix socket); it tears
them down when a worker dies (``POST /internal/relay/close``) and sets them up again when it is
back.  Media goes over the media ports (``sfu.transport.relay``); room state over a WebSocket
between the two workers' private unix sockets (the dialing end is the lower index), one JSON
``RelayMessage`` per text frame, in order.

A room is shared over a relay when it is open at both ends: a worker that sees a room's first
join tells its relays (``open``); an end that has the room open answers ``open`` and sends what it
has (``RelayLink.share``).  The secret authenticates the WebSocket too (its HMAC of the relay id).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from levelchat.errors import ApiError
from sfu import clock
from sfu.metrics import PREFIX
from sfu.routing.data import MAX_DESTINATIONS, DataKind, DataRelay
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.relay import RelayLink
from sfu.routing.relay_wire import RelayMessage, RelayOp
from sfu.signaling import sdp
from sfu.transport.peer import CloseReason
from sfu.transport.relay import RelayTransport, relay_keys
from sfu.transport.srtp import SrtpProfile
from sfu.workers.relay_json import RelaySetup, channel_proof, describe, parse_policy, policy_json, undescribe

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

RELAY_WS = "/internal/relay/ws"
#: the control channel's own message: "room open here" (not a RelayMessage: no identity)
OPEN = "open"
#: a worker about to seat a join of a room it does not have asks the far ends (``ask``); they
#: answer ``here`` (then a snapshot, then ``shared``) or ``none``; a room closed says ``closed``
ASK, HERE, NONE, SHARED, CLOSED = "ask", "here", "none", "shared", "closed"
_ROOM_OPS = frozenset({ASK, HERE, NONE, SHARED, CLOSED})
#: how long a join waits for the far ends' answers about its room
ASK_TIMEOUT_S = 1.0
#: relays one worker keeps (one per other worker of the node)
MAX_RELAYS = 64
#: a relay control message queue that grows past this is a stuck peer: the relay is torn down
MAX_QUEUED = 10_000


class Relay:
    """One relay at this end: its link and its control channel."""

    def __init__(self, hub: RelayHub, setup: RelaySetup, link: RelayLink) -> None:
        self.hub = hub
        self.setup = setup
        self.link = link
        self.queue: asyncio.Queue[RelayMessage | dict[str, Any] | None] = asyncio.Queue()
        #: the far end's tracks as their publishers negotiated them (sid -> description): the
        #: subscriber offers here are built from them (``SessionService.other_descriptions``)
        self.descriptions: dict[str, sdp.TrackDescription] = {}
        self.ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.session: aiohttp.ClientSession | None = None
        self.opened: set[str] = set()  # rooms we said "open" for
        self._needs_due = False
        link.on_needs = self.needs_changed
        #: rooms asked about (``ask``), answered when the far end's snapshot is in
        self.asks: dict[str, asyncio.Future[None]] = {}

    def send(self, obj: RelayMessage | dict[str, Any]) -> None:
        if self.queue.qsize() > MAX_QUEUED:
            log.error("relay %s: control channel stuck; tearing it down", self.setup.relay_id)
            self.hub.close(self.setup.relay_id, CloseReason.CONSENT_EXPIRED)
            return
        self.queue.put_nowait(obj)

    def send_all(self, msgs: list[RelayMessage]) -> None:
        for m in msgs:
            self.send(m)

    def _encode(self, item: RelayMessage | dict[str, Any]) -> str:
        """A message as it goes out; a publication takes its track's description now (a signaling
        publish registers it just after the router's event that made the message)."""
        if isinstance(item, dict):
            return json.dumps(item)
        obj = item.to_json()
        if item.op is RelayOp.PUBLISH and item.track is not None:
            found = self.hub.node.sessions.description(item.track.sid)
            if found is not None:
                obj["track"]["description"] = describe(found)
        return json.dumps(obj)

    def flush_needs(self) -> None:
        self._needs_due = False
        msg = self.link.needs()
        if msg is not None and not self.link.closed:
            self.send(msg)

    def needs_changed(self) -> None:
        """A relayed track here got its first subscriber: tell the far end now (once per turn)."""
        if not self._needs_due:
            self._needs_due = True
            asyncio.get_running_loop().call_soon(self.flush_needs)

    def say_open(self, room_id: str) -> None:
        if room_id not in self.opened:
            self.opened.add(room_id)
            self.send({"op": OPEN, "room": room_id})

    async def run(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        """Serve the channel until it closes; then the relay goes."""
        self.ws = ws
        writer = asyncio.ensure_future(self._write(ws))
        try:
            for room in self.hub.open_rooms():
                self.say_open(room)
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    break
                self.on_frame(frame.data)
        finally:
            writer.cancel()
            self.hub.close(self.setup.relay_id, CloseReason.CONSENT_EXPIRED)

    async def _write(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            await ws.send_str(self._encode(item))

    def on_frame(self, data: str) -> None:
        now = clock.now_ms()
        try:
            obj = json.loads(data)
            op = obj.get("op") if isinstance(obj, dict) else None
            if op in _ROOM_OPS:
                self._on_room_op(str(op), obj, now)
                return
            if op == OPEN:
                room_id = obj.get("room")
                room = self.hub.node.rooms.rooms.get(room_id) if isinstance(room_id, str) else None
                if room is not None and room.id not in self.link.rooms:
                    # ours first (the far end shares back on it, unless it already has), then
                    # what is here: the far end applies it once the room is shared there
                    self.opened.add(room.id)
                    self.send({"op": OPEN, "room": room.id})
                    self.send_all(self.link.share(room, now))
                return
            msg = RelayMessage.parse(obj)
            if msg.op is RelayOp.DATA:
                self._on_data(msg, now)
                return
            if msg.op is RelayOp.PUBLISH and msg.track is not None:
                if msg.track.description is None:
                    raise ValueError(f"track {msg.track.sid} came without its description")
                self.descriptions[msg.track.sid] = undescribe(msg.track.description)
            elif msg.op is RelayOp.UNPUBLISH:
                gone = self.link.imported.get(msg.ssrc)
                if gone is not None:
                    self.descriptions.pop(gone.sid, None)
            self.link.apply(msg, now)
        except (ValueError, ApiError) as exc:
            log.warning("relay %s: message refused: %s", self.setup.relay_id, exc)

    def _on_room_op(self, op: str, obj: dict[str, Any], now_ms: int) -> None:
        """``ask`` (a worker about to seat a join of a room it does not have) and its answers:
        ``here`` (the room's policy; a snapshot and ``shared`` follow) or ``none``; ``closed``
        (the room closed at the far end: no longer shared)."""
        room_id = obj.get("room")
        if not isinstance(room_id, str) or not room_id:
            raise ValueError(f"{op}: room missing")
        node = self.hub.node
        room = node.rooms.rooms.get(room_id)
        if op == ASK:
            if room is None:
                self.send({"op": NONE, "room": room_id})
                return
            self.opened.add(room_id)
            self.send({"op": HERE, "room": room_id, "policy": policy_json(room.policy)})
            self.send_all(self.link.share(room, now_ms))
            self.send({"op": SHARED, "room": room_id})
        elif op == HERE:
            if room is None:
                node.check_accepting_rooms()
                room, _ = node.rooms.create(room_id, parse_policy(obj.get("policy")), now_ms)
            self.opened.add(room_id)
            self.send_all(self.link.share(room, now_ms))
        elif op in (NONE, SHARED):
            waiter = self.asks.pop(room_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif op == CLOSED:
            if room_id in self.link.rooms:
                self.link.unshare(room_id, now_ms)
            self.opened.discard(room_id)

    async def ask(self, room_id: str) -> None:
        """Ask the far end for the room (its answer, and what it has there, arrive before this
        returns; or nothing, after ``ASK_TIMEOUT_S``)."""
        if self.ws is None:
            return
        waiter = self.asks.get(room_id)
        if waiter is None:
            waiter = self.asks[room_id] = asyncio.get_running_loop().create_future()
            self.send({"op": ASK, "room": room_id})
        try:
            await asyncio.wait_for(asyncio.shield(waiter), ASK_TIMEOUT_S)
        except TimeoutError:
            self.asks.pop(room_id, None)
            log.warning("relay %s: no answer about room %s in %.1f s", self.setup.relay_id, room_id, ASK_TIMEOUT_S)

    def _on_data(self, msg: RelayMessage, now_ms: int) -> None:
        data = self.hub.data
        if data is None or msg.room not in self.link.rooms:
            raise ValueError(f"data for room {msg.room!r}, not shared over relay {self.setup.relay_id}")
        d = msg.data or {}
        kind, text, to = d.get("kind"), d.get("text"), d.get("to", [])
        if kind not in (0, 1) or not isinstance(text, bool) or not isinstance(to, list) or len(to) > MAX_DESTINATIONS:
            raise ValueError("data: kind 0 or 1, text a boolean, to a list of identities")
        try:
            envelope = base64.b64decode(str(d.get("envelope", "")), validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("data: envelope is not base64") from None
        data.deliver_relayed(msg.room, DataKind(kind), envelope, text, frozenset(str(t) for t in to), now_ms)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        others = self.hub.node.sessions.other_descriptions
        if self.descriptions in others:
            others.remove(self.descriptions)
        for t in self.tasks:
            t.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


class RelayHub:
    """This worker's relays to the other workers of its node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.relays: dict[str, Relay] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.closed_total = 0
        self._retired: dict[str, float] = {}
        #: the node's data relay (its WebSocket service's): messages cross to the far ends too
        self.data: DataRelay | None = None

    def attach_data(self, data: DataRelay) -> None:
        self.data = data
        data.outlets.append(self._on_local_data)

    def _on_local_data(
        self, room_id: str, kind: DataKind, envelope: bytes, text: bool, to: frozenset[str], now_ms: int
    ) -> None:
        for relay in list(self.relays.values()):
            if room_id in relay.link.rooms:
                payload = {"kind": int(kind), "text": text, "to": sorted(to), "envelope": base64.b64encode(envelope).decode()}
                relay.send(RelayMessage(RelayOp.DATA, room_id, "-", data=payload))

    def _start(self) -> None:
        """With the first relay: the router's events and the once-a-second tick."""
        if self._ticker is None:
            self.node.router.observers.append(self.on_event)
            self._ticker = asyncio.ensure_future(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for relay_id in list(self.relays):
            self.close(relay_id, CloseReason.NODE_SHUTDOWN)

    def open_rooms(self) -> list[str]:
        return [r.id for r in self.node.rooms.public_rooms()]

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = clock.now_ms()
            for relay in list(self.relays.values()):
                relay.link.tick(now)
                relay.flush_needs()

    async def prepare(self, room_id: str) -> bool:
        """Before a join of a room this worker does not have: ask the far ends for it, so the
        join finds it open here with the far end's participants in it (and its policy).  True
        when the room is open here afterwards."""
        if room_id not in self.node.rooms.rooms:
            await asyncio.gather(*(r.ask(room_id) for r in list(self.relays.values())))
        return room_id in self.node.rooms.rooms

    def on_event(self, event: RoomEvent) -> None:
        now = clock.now_ms()
        for relay in list(self.relays.values()):
            if event.kind is RoomEventKind.JOINED and event.room.id not in relay.link.rooms:
                if event.participant is not None and not event.participant.relay:
                    relay.say_open(event.room.id)
                continue
            shared = event.room.id in relay.link.rooms
            relay.send_all(relay.link.on_event(event, now))
            if event.kind is RoomEventKind.ROOM_CLOSED:
                relay.opened.discard(event.room.id)
                if shared:
                    relay.send({"op": CLOSED, "room": event.room.id})

    def add(self, setup: RelaySetup) -> Relay:
        """Set a relay up (replacing one to the same peer)."""
        for old in [r for r in self.relays.values() if r.setup.remote == setup.remote]:
            self.close(old.setup.relay_id, CloseReason.REPLACED)
        if len(self.relays) >= MAX_RELAYS:
            raise ValueError(f"this worker keeps at most {MAX_RELAYS} relays")
        self._start()
        node = self.node
        now = clock.now_ms()
        transport = RelayTransport(
            port=node.port, certificate=node.certificate, counters=node.counters, now_ms=now,
            loop=asyncio.get_running_loop(),
        )
        link = RelayLink(node.router, setup.relay_id, transport, node.counters, on_closed=self._link_closed)
        profile = SrtpProfile.AEAD_AES_128_GCM
        transport.start((setup.peer_host, setup.peer_port), relay_keys(profile, setup.secret, setup.relay_id, setup.local, setup.remote), now)
        relay = Relay(self, setup, link)
        node.sessions.other_descriptions.append(relay.descriptions)
        self.relays[setup.relay_id] = relay
        if setup.dial:
            relay.tasks.append(asyncio.ensure_future(self._dial(relay)))
        log.info("relay %s up: %s <-> %s at %s:%d", setup.relay_id, setup.local, setup.remote, setup.peer_host, setup.peer_port)
        return relay

    async def _dial(self, relay: Relay) -> None:
        s = relay.setup
        relay.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=s.peer_socket))
        for _ in range(50):
            try:
                ws = await relay.session.ws_connect(
                    f"http://worker{RELAY_WS}?relay={s.relay_id}&proof={channel_proof(s.secret, s.relay_id)}",
                    heartbeat=5.0,
                )
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.1)  # the far end's setup may not have landed yet
                continue
            await relay.run(ws)
            return
        log.error("relay %s: the control channel to %s did not connect", s.relay_id, s.remote)
        self.close(s.relay_id, CloseReason.SETUP_TIMEOUT)

    async def accept(self, request: web.Request) -> web.StreamResponse:
        relay = self.relays.get(request.query.get("relay", ""))
        if relay is None or not hmac.compare_digest(
            request.query.get("proof", ""), channel_proof(relay.setup.secret, relay.setup.relay_id)
        ):
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse(heartbeat=5.0)
        await ws.prepare(request)
        await relay.run(ws)
        return ws

    def _link_closed(self, link: RelayLink, reason: CloseReason) -> None:
        relay = self.relays.pop(link.link_id, None)
        if relay is not None:
            self.closed_total += 1
            for name, value in self._figures([link]).items():  # counters never go back
                self._retired[name] = self._retired.get(name, 0) + value
            log.warning("relay %s down (%s)", link.link_id, reason.value)
            asyncio.ensure_future(relay.close())

    def close(self, relay_id: str, reason: CloseReason) -> None:
        relay = self.relays.get(relay_id)
        if relay is not None:
            relay.link.close(reason)  # _link_closed forgets it

    def close_peer(self, remote: str) -> int:
        ids = [i for i, r in self.relays.items() if r.setup.remote == remote]
        for i in ids:
            self.close(i, CloseReason.CONSENT_EXPIRED)
        return len(ids)

    # -- figures -------------------------------------------------------------------------------
    def gauges(self) -> dict[str, float]:
        links = [r.link for r in self.relays.values()]
        return {
            "sfu_relays": len(links),
            "sfu_relayed_tracks_out": sum(len(k.exported) for k in links),
            "sfu_relayed_tracks_in": sum(len(k.imported) for k in links),
        }

    def counters(self) -> dict[str, float]:
        """Totals since the worker started: the relays up now and those gone."""
        now = self._figures([r.link for r in self.relays.values()])
        return {name: now[name] + self._retired.get(name, 0) for name in now}

    @staticmethod
    def _figures(links: list[RelayLink]) -> dict[str, float]:
        out_b = in_b = lost = plis = 0
        for link in links:
            o, i = link.octets()
            out_b += o
            in_b += i
            lost += link.lost()
            plis += link.keyframe_requests_in
        return {
            "sfu_relay_bytes_out": out_b,
            "sfu_relay_bytes_in": in_b,
            "sfu_relay_packets_lost": lost,
            "sfu_relay_keyframe_requests": plis,
        }


class RelayCollector:
    """The hub's figures for /metrics (the front relabels them per worker)."""

    def __init__(self, hub: RelayHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[object]:
        for name, value in self.hub.gauges().items():
            g = GaugeMetricFamily(PREFIX + name, name.replace("_", " "))
            g.add_metric([], value)
            yield g
        for name, value in self.hub.counters().items():
            yield CounterMetricFamily(PREFIX + name, name.replace("_", " "), value=value)
