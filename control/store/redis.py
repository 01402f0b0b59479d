"""Redis store (redis-py asyncio): every write is one Lua script, atomic across control-plane replicas."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from control.fields import MAX_LIVE_ROOMS
from control.model import (
    Capacity,
    Heartbeat,
    HeartbeatOutcome,
    Load,
    Node,
    NodeRegistration,
    Placement,
    PlacementOutcome,
    RegisterOutcome,
    Room,
    RoomSpec,
    RoomState,
    Taken,
    unpack_media_host,
)
from control.store import redis_scripts as lua
from control.store.base import Store, call_bound_s
from levelchat.usage.book import REPORTS_KEPT_MS


def _opt_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _node(h: Mapping[str, str]) -> Node:
    media_host, media_hosts = unpack_media_host(h["media_host"])
    return Node(
        id=h["id"],
        url=h["url"],
        media_host=media_host,
        media_hosts=media_hosts,
        media_port=int(h["media_port"]),
        region=h.get("region") or None,
        capacity=Capacity(max_participants=int(h["max_participants"]), max_rooms=int(h["max_rooms"])),
        version=h.get("version", ""),
        registered_at=int(h["registered_at"]),
        lease_expires_at=int(h["lease_expires_at"]),
        revoked=h.get("revoked") == "1",
        healthy=h.get("healthy") == "1",
        draining=h.get("draining") == "1",
        load=Load(
            rooms=int(h.get("load_rooms", "0")),
            participants=int(h.get("load_participants", "0")),
            cpu=float(h.get("load_cpu", "0")),
            packets_per_s=float(h.get("load_pps", "0")),
        ),
        placed_since_report=int(h.get("placed", "0")),
        media_tcp_port=int(h["media_tcp_port"]) if h.get("media_tcp_port") else None,
        instance=h.get("instance") or None,
    )


def _room(h: Mapping[str, str]) -> Room:
    spec = RoomSpec(
        room=h["room"],
        max_participants=_opt_int(h.get("max_participants")),
        codecs=tuple(json.loads(h.get("codecs") or "[]")),
        region=h.get("region") or None,
        empty_timeout_s=_opt_int(h.get("empty_timeout_s")),
        recording=h.get("recording") == "1",
    )
    return Room(spec=spec, node_id=h["node_id"], state=RoomState(h["state"]), placed_at=int(h["placed_at"]),
                participants=int(h.get("participants") or 0))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _s(value: object) -> str:
    return "" if value is None else str(value)


def _learnt_settings(reg: NodeRegistration) -> str:
    """``{room: [max_participants, codecs JSON, empty_timeout_s, recording]}`` as the hash fields of a room
    learnt from a registering node (``REGISTER``)."""
    out: dict[str, list[str]] = {}
    for room, _ in reg.listing():
        spec = reg.settings_of(room)
        out[room] = [_s(spec.max_participants), json.dumps(list(spec.codecs)), _s(spec.empty_timeout_s),
                     "1" if spec.recording else "0"]
    return json.dumps(out)


def _listing(listing: tuple[tuple[str, int | None], ...]) -> list[object]:
    return [x for room, count in listing for x in (room, count)]


def _taken(flat: Sequence[str]) -> list[Taken]:
    return [Taken(room, node) for room, node in _pairs(flat).items()]


#: a registration or heartbeat listing more rooms than this goes through the client whose reads
#: wait for the largest bound (``call_bound_s``): its script may run longer than ``timeout_s``
BULK_FROM_ROOMS = 100


class RedisStore(Store):
    def __init__(self, client: aioredis.Redis, prefix: str, bulk: aioredis.Redis | None = None) -> None:
        self._r = client
        self._bulk = bulk if bulk is not None else client
        self._p = prefix
        self._register = client.register_script(lua.REGISTER)
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._revoke = client.register_script(lua.REVOKE)
        self._provision = client.register_script(lua.PROVISION)
        self._unhealthy = client.register_script(lua.MARK_UNHEALTHY)
        self._place = client.register_script(lua.PLACE)
        self._release = client.register_script(lua.RELEASE)
        self._expire = client.register_script(lua.EXPIRE)
        self._add_usage = client.register_script(lua.ADD_USAGE)

    @classmethod
    async def open(cls, url: str, prefix: str, *, timeout_s: float = 1.0) -> RedisStore:
        """A client whose connects and reads give up after ``timeout_s`` (a stalled Redis must not
        hold a request), retrying a command once at once when the connection failed (Redis
        dropped it) but never after a read timed out: the script may have run (a registration
        run twice answered its own node ``node_exists``).  A second client, for a node's
        registration or heartbeat with many rooms, waits for replies as long as such a call may
        take (``call_bound_s``)."""

        def client(read_timeout_s: float) -> aioredis.Redis:
            return aioredis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=read_timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )

        store = cls(client(timeout_s), prefix, client(call_bound_s(timeout_s, 2 * MAX_LIVE_ROOMS)))
        await store.ping()
        return store

    async def close(self) -> None:
        await self._r.aclose()
        if self._bulk is not self._r:
            await self._bulk.aclose()

    async def ping(self) -> None:
        await self._r.ping()

    async def _call(self, script: Any, *args: object, listed_rooms: int = 0) -> Any:
        client = self._bulk if listed_rooms > BULK_FROM_ROOMS else self._r
        return await script(keys=[], args=[self._p, *(_s(a) for a in args)], client=client)

    async def register_node(
        self, reg: NodeRegistration, now_ms: int, lease_ms: int, *, takeover: bool = False
    ) -> tuple[RegisterOutcome, Node | None, list[Taken], list[str]]:
        listing = reg.listing()
        outcome, taken, dropped = await self._call(
            self._register, reg.id, now_ms, now_ms + lease_ms, reg.url, reg.stored_media_host, reg.media_port,
            reg.region, reg.capacity.max_participants, reg.capacity.max_rooms, reg.version, reg.instance,
            int(takeover), _learnt_settings(reg), reg.media_tcp_port, *_listing(listing), listed_rooms=len(listing),
        )
        return RegisterOutcome(outcome), await self.get_node(reg.id), _taken(taken), [str(r) for r in dropped]

    async def heartbeat(
        self, node_id: str, hb: Heartbeat, now_ms: int, lease_ms: int
    ) -> tuple[HeartbeatOutcome, Node | None, list[Taken]]:
        listing = hb.listing()
        outcome, taken = await self._call(
            self._heartbeat, node_id, now_ms, now_ms + lease_ms, int(hb.healthy), int(hb.draining),
            hb.load.rooms, hb.load.participants, repr(hb.load.cpu), repr(hb.load.packets_per_s), hb.instance,
            *_listing(listing), listed_rooms=len(listing),
        )
        return HeartbeatOutcome(outcome), await self.get_node(node_id), _taken(taken)

    async def revoke(self, node_id: str, now_ms: int) -> Node | None:
        if not await self._call(self._revoke, node_id, now_ms):
            return None
        return await self.get_node(node_id)

    async def provision(self, node_id: str, now_ms: int) -> Node | None:
        if not await self._call(self._provision, node_id):
            return None
        return await self.get_node(node_id)

    async def mark_unhealthy(self, node_id: str) -> None:
        await self._call(self._unhealthy, node_id)

    async def add_usage(
        self, project: str, participant_ms: dict[int, int], recording_ms: dict[int, int], report_id: str, now_ms: int
    ) -> bool:
        triples: list[object] = []
        for period in sorted(set(participant_ms) | set(recording_ms)):
            triples += [period, participant_ms.get(period, 0), recording_ms.get(period, 0)]
        return bool(await self._call(self._add_usage, project, report_id, REPORTS_KEPT_MS, *triples))

    async def get_usage(self, project: str, period_ms: int) -> tuple[int, int]:
        p_ms, r_ms = await self._r.hmget(f"{self._p}usage:{project}:{period_ms}", ["participant_ms", "recording_ms"])
        return int(p_ms or 0), int(r_ms or 0)

    async def get_node(self, node_id: str) -> Node | None:
        h = cast("dict[str, str]", await self._r.hgetall(f"{self._p}node:{node_id}"))
        return _node(h) if h else None

    async def list_nodes(self) -> list[Node]:
        ids = sorted(cast("set[str]", await self._r.smembers(f"{self._p}nodes")))
        async with self._r.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(f"{self._p}node:{node_id}")
            hashes = await pipe.execute()
        return [_node(h) for h in hashes if h]

    async def place_room(
        self, spec: RoomSpec, now_ms: int, exclude: frozenset[str], grace_ms: int = 0
    ) -> Placement:
        outcome, node_id, live, passing, prev_flat, retry_at = await self._call(
            self._place, spec.room, now_ms, spec.region, json.dumps(sorted(exclude)),
            spec.max_participants, json.dumps(list(spec.codecs)), spec.region, spec.empty_timeout_s, grace_ms,
            int(spec.recording),
        )
        result = PlacementOutcome(outcome)
        previous = _room(_pairs(prev_flat)) if prev_flat else None
        if result is PlacementOutcome.AWAY:
            return Placement(result, previous, await self.get_node(node_id), retry_at=int(retry_at))
        if result not in (PlacementOutcome.PLACED, PlacementOutcome.EXISTING):
            return Placement(result, live_nodes=int(live), passing_nodes=int(passing))
        node = await self.get_node(node_id)
        if result is PlacementOutcome.EXISTING:
            return Placement(result, previous, node)
        room = Room(spec=spec, node_id=node_id, state=RoomState.LIVE, placed_at=now_ms)
        return Placement(result, room, node, previous, int(live), int(passing))

    async def release_room(self, room: str, node_id: str, restore: Room | None) -> None:
        fields: list[object] = ["0"]
        if restore is not None:
            s = restore.spec
            fields = ["1", restore.node_id, restore.state.value, restore.placed_at, s.max_participants,
                      json.dumps(list(s.codecs)), s.region, s.empty_timeout_s, restore.participants,
                      int(s.recording)]
        await self._call(self._release, room, node_id, *fields)

    async def get_room(self, room: str) -> Room | None:
        h = cast("dict[str, str]", await self._r.hgetall(f"{self._p}room:{room}"))
        return _room(h) if h else None

    async def expire_leases(self, now_ms: int) -> list[str]:
        ids = await self._call(self._expire, now_ms)
        return sorted(str(i) for i in ids)
