"""The node's webhooks: room events from the router's observer feed, queued (never blocking the
router: ``WebhookDispatcher.emit`` only appends), and ``/v1/webhooks`` (``room:admin``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.tokens import TokenVerifier
from levelchat.web import bearer_token
from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.http import WebhookApi, add_routes
from levelchat.webhooks.model import make_event
from sfu.routing.events import RoomEvent, RoomEventKind

if TYPE_CHECKING:
    from sfu.config import NodeConfig
    from sfu.routing.participant import Participant
    from sfu.routing.rooms import Room
    from sfu.routing.track import PublishedTrack

log = logging.getLogger(__name__)


def _room(room: Room) -> dict[str, Any]:
    return {"name": room.id, "sid": room.sid}


def _participant(p: Participant) -> dict[str, Any]:
    return {"identity": p.identity, "sid": p.sid, "name": p.name, "kind": p.kind.value}


def _track(t: PublishedTrack) -> dict[str, Any]:
    return {"sid": t.sid, "kind": t.kind, "codec": t.codec.name, "mid": t.mid, "rid": t.rid}


class NodeWebhooks:
    """Holds the dispatcher (opened at start when endpoints are configured or the queue file
    exists, else by the first ``POST /v1/webhooks``) and turns ``RoomEvent``s into events."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.dispatcher: WebhookDispatcher | None = None
        self.node_id = ""
        self._db_path = ""
        self._started_rooms: set[str] = set()  # room sids whose room_started was sent
        self._tracks: dict[str, dict[int, dict[str, Any]]] = {}  # participant sid -> published tracks
        #: events of the moments between the HTTP API's start and the queue's (bounded)
        self._early: list[dict[str, Any]] | None = []
        self._opening = asyncio.Lock()

    async def start(self, node_id: str, http_port: int) -> None:
        self.node_id = node_id
        self._db_path = self.config.webhooks_db_at(http_port)
        opened = None
        if self.config.webhooks or (self._db_path != ":memory:" and os.path.exists(self._db_path)):
            opened = await self.ensure()
        early, self._early = self._early or [], None  # from now on events go to the dispatcher or nowhere
        if opened is not None:
            for body in early:
                opened.emit({**body, "node": {"id": node_id}})

    async def ensure(self) -> WebhookDispatcher:
        async with self._opening:
            return await self._open()

    async def _open(self) -> WebhookDispatcher:
        if self.dispatcher is None:
            d = WebhookDispatcher(
                db_path=self._db_path,
                configured=self.config.webhooks,
                api_keys=self.config.api_keys,
                settings=self.config.webhook_settings,
            )
            await d.start()
            self.dispatcher = d
            log.info("webhooks: %d endpoint(s), queue %s (%d waiting)", len(d.endpoints), self._db_path, d.queue_depth())
        return self.dispatcher

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None

    def emit(self, event: str, **objects: dict[str, Any] | None) -> None:
        d = self.dispatcher
        if d is None:
            if self._early is not None and len(self._early) < self.config.webhooks_queue_max:
                self._early.append(make_event(event, node={"id": self.node_id}, **objects))
            return
        if d.takers(event):
            d.emit(make_event(event, node={"id": self.node_id}, **objects))

    def room_created(self, room: Room) -> None:
        if room.sid not in self._started_rooms:
            self._started_rooms.add(room.sid)
            self.emit("room_started", room=_room(room))

    def on_event(self, event: RoomEvent) -> None:
        """The router's observer: enqueue only.  A relayed participant's events are its own
        worker's to send (sfu.routing.relay)."""
        kind, room, p = event.kind, event.room, event.participant
        if p is not None and p.relay:
            return
        if kind is RoomEventKind.JOINED and p is not None:
            self.room_created(room)
            self.emit("participant_joined", room=_room(room), participant=_participant(p))
        elif kind is RoomEventKind.PUBLISHED and p is not None:
            mine = self._tracks.setdefault(p.sid, {})
            for t in event.tracks:
                mine[t.ssrc] = _track(t)
                self.emit("track_published", room=_room(room), participant=_participant(p), track=mine[t.ssrc])
        elif kind is RoomEventKind.UNPUBLISHED and p is not None:
            for t in event.tracks:
                view = self._tracks.get(p.sid, {}).pop(t.ssrc, None) or _track(t)
                self.emit("track_unpublished", room=_room(room), participant=_participant(p), track=view)
        elif kind is RoomEventKind.LEFT and p is not None:
            self._left(room, p, event.reason.value if event.reason is not None else None)
        elif kind is RoomEventKind.ROOM_CLOSED:
            for gone in event.participants:
                if not gone.relay:
                    self._left(room, gone, event.reason.value if event.reason is not None else None)
            self._started_rooms.discard(room.sid)
            self.emit("room_finished", room=_room(room))

    def _left(self, room: Room, p: Participant, reason: str | None) -> None:
        for view in self._tracks.pop(p.sid, {}).values():
            self.emit("track_unpublished", room=_room(room), participant=_participant(p), track=view)
        self.emit("participant_left", room=_room(room), participant={**_participant(p), "reason": reason})


# -- /v1/webhooks (levelchat.webhooks.http) ------------------------------------------------------
def setup(app: web.Application, hooks: NodeWebhooks, verifier: TokenVerifier) -> None:
    def authorize(request: web.Request) -> None:
        """A node-wide operator token: ``room:admin`` and no ``room`` claim."""
        claims = verifier.verify(bearer_token(request), time.time())
        claims.require("room:admin")
        if claims.room is not None:
            raise ApiError("token/unauthorized", "webhooks are node-wide: the token must not be bound to a room")

    add_routes(
        app,
        WebhookApi(
            authorize=authorize,
            current=lambda: hooks.dispatcher,
            ensure=hooks.ensure,
            source=lambda: {"node": {"id": hooks.node_id}},
        ),
    )
