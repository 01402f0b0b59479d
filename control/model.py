"""The control plane's records: nodes, rooms, the messages nodes send, and the outcomes of store operations.

``parse()`` builds a record from decoded JSON and raises ``ValueError`` naming the bad field;
``to_json()`` renders the public view.  Unknown fields are ignored (forward compatibility: a node may
be newer than the control plane).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import urlsplit

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REGION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROOM_ID_RE = re.compile(r"[A-Za-z0-9-]{4,64}")
CODEC_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MAX_CODECS = 16
MAX_VERSION = 64
#: every count a client sends is at most this (SQLite integers are 64-bit; no real count comes near)
MAX_COUNT = 1_000_000_000
#: every other number (cpu, packets per second) at most this
MAX_NUMBER = 1e15


class RoomState(StrEnum):
    LIVE = "live"
    LOST = "lost"  # its node lost its lease or was revoked; the next lookup places it again
    CLOSED = "closed"  # reserved: a room its node reported closed


class NodeState(StrEnum):
    """One label per node for ``levelchat_control_nodes{state}`` and ``GET /v1/nodes``."""

    LIVE = "live"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    EXPIRED = "expired"
    REVOKED = "revoked"


class RegisterOutcome(Enum):
    CREATED = "created"
    REREGISTERED = "reregistered"  # same id after its previous lease lapsed
    EXISTS = "exists"  # another lease on this id is alive
    REVOKED = "revoked"


class HeartbeatOutcome(Enum):
    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"  # the lease lapsed: the node must register again
    REVOKED = "revoked"


class PlacementOutcome(Enum):
    PLACED = "placed"
    EXISTING = "existing"  # already live on a node with a live lease
    NO_NODES = "no_nodes"  # no node holds a live lease
    ALL_FAILING = "all_failing"  # live nodes exist, none healthy and not draining
    FULL = "full"  # healthy nodes exist, all at capacity


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise ValueError(f"field {name!r} is required")
        return None
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"field {name!r} must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"field {name!r} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _count(obj: Mapping[str, Any], name: str, *, required: bool, minimum: int = 0, default: int = 0) -> int:
    value = _field(obj, name, int, required)
    if value is None:
        return default
    if not minimum <= value <= MAX_COUNT:
        raise ValueError(f"field {name!r} must be from {minimum} to {MAX_COUNT}, got {value}")
    return int(value)


def _number(obj: Mapping[str, Any], name: str, *, default: float = 0.0) -> float:
    value = _field(obj, name, (int, float), False)
    if value is None:
        return default
    if not 0 <= value <= MAX_NUMBER:  # NaN fails both comparisons
        raise ValueError(f"field {name!r} must be a number from 0 to {MAX_NUMBER:g}, got {value}")
    return float(value)


def parse_node_id(value: object) -> str:
    if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
        raise ValueError(f"node id {value!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return value


def parse_region(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not REGION_RE.fullmatch(value):
        raise ValueError(f"region {value!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def parse_http_url(value: object, name: str = "url") -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"field {name!r} must be an http(s) URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"field {name!r} must not carry a query or fragment")
    return value.rstrip("/")


@dataclass(frozen=True)
class Capacity:
    max_participants: int
    max_rooms: int

    @classmethod
    def parse(cls, obj: object) -> Capacity:
        if not isinstance(obj, dict):
            raise ValueError("field 'capacity' must be an object")
        return cls(
            max_participants=_count(obj, "max_participants", required=True, minimum=1),
            max_rooms=_count(obj, "max_rooms", required=True, minimum=1),
        )

    def to_json(self) -> dict[str, Any]:
        return {"max_participants": self.max_participants, "max_rooms": self.max_rooms}


@dataclass(frozen=True)
class Load:
    rooms: int = 0
    participants: int = 0
    cpu: float = 0.0  # fraction of the node's CPU budget, 0..1
    packets_per_s: float = 0.0

    @classmethod
    def parse(cls, obj: object) -> Load:
        if not isinstance(obj, dict):
            raise ValueError("field 'load' must be an object")
        return cls(
            rooms=_count(obj, "rooms", required=False),
            participants=_count(obj, "participants", required=False),
            cpu=_number(obj, "cpu"),
            packets_per_s=_number(obj, "packets_per_s"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms,
            "participants": self.participants,
            "cpu": self.cpu,
            "packets_per_s": self.packets_per_s,
        }


@dataclass(frozen=True)
class NodeRegistration:
    """Body of ``POST /v1/nodes``."""

    id: str
    url: str
    media_host: str
    media_port: int
    region: str | None
    capacity: Capacity
    version: str
    #: rooms live on the node as it registers (a node back after its lease lapsed keeps them)
    rooms: tuple[str, ...] = ()
    #: the settings of (some of) those rooms, by room id: a store that lost them learns them back
    room_settings: Mapping[str, RoomSpec] = field(default_factory=dict)

    def settings_of(self, room: str) -> RoomSpec:
        """The room's reported settings, or none (defaults) when the node did not report them."""
        return self.room_settings.get(room) or RoomSpec(room=room)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> NodeRegistration:
        media = _field(obj, "media", dict)
        host = _field(media, "host", str)
        if not host or len(host) > 255:
            raise ValueError("field 'media.host' must be a non-empty host name or address")
        port = _field(media, "port", int)
        if isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"field 'media.port' must be 1..65535, got {port}")
        version = _field(obj, "version", str, required=False) or ""
        if len(version) > MAX_VERSION:
            raise ValueError(f"field 'version' must be at most {MAX_VERSION} characters")
        return cls(
            id=parse_node_id(obj.get("id")),
            url=parse_http_url(obj.get("url")),
            media_host=host,
            media_port=port,
            region=parse_region(obj.get("region")),
            capacity=Capacity.parse(obj.get("capacity")),
            version=version,
            rooms=_parse_live_rooms(obj.get("rooms")),
            room_settings=_parse_room_settings(obj.get("room_settings")),
        )


MAX_LIVE_ROOMS = 10_000
#: ``POST /v1/nodes`` bodies (a node's rooms and their settings) may be this large; other bodies
#: keep ``levelchat.web.MAX_BODY_BYTES``.  Only a caller holding ``node:register`` gets to send it.
MAX_REGISTRATION_BYTES = 4 * 1024 * 1024


def _parse_str_list(
    value: object, limit: int, pattern: re.Pattern[str], too_many: str, bad_item: str
) -> tuple[str, ...]:
    """An optional JSON list of strings matching ``pattern``; messages take ``{item!r}``."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(too_many)
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise ValueError(bad_item.format(item=item))
    return tuple(value)


def _parse_live_rooms(value: object) -> tuple[str, ...]:
    rooms = _parse_str_list(
        value,
        MAX_LIVE_ROOMS,
        ROOM_ID_RE,
        f"field 'rooms' must be a list of at most {MAX_LIVE_ROOMS} room ids",
        "field 'rooms' has an invalid room id: {item!r}",
    )
    return tuple(dict.fromkeys(rooms))


def _parse_room_settings(value: object) -> dict[str, RoomSpec]:
    """``{room id: {"max_participants", "codecs", "empty_timeout_s"}}``, each checked as in
    ``POST /v1/rooms`` (``RoomSpec.parse``); other keys of an entry are ignored."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_LIVE_ROOMS:
        raise ValueError(f"field 'room_settings' must be an object of at most {MAX_LIVE_ROOMS} rooms")
    settings: dict[str, RoomSpec] = {}
    for room, entry in value.items():
        if not ROOM_ID_RE.fullmatch(room):
            raise ValueError(f"field 'room_settings' has an invalid room id: {room!r}")
        if not isinstance(entry, dict):
            raise ValueError(f"field 'room_settings.{room}' must be an object")
        try:
            spec = RoomSpec.parse({k: entry.get(k) for k in ("max_participants", "codecs", "empty_timeout_s")}, room)
        except ValueError as exc:
            raise ValueError(f"room_settings.{room}: {exc}") from None
        settings[room] = spec
    return settings


@dataclass(frozen=True)
class Heartbeat:
    """Body of ``PUT /v1/nodes/{id}/status``."""

    healthy: bool = True
    draining: bool = False
    load: Load = field(default_factory=Load)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Heartbeat:
        healthy = _field(obj, "healthy", bool, required=False)
        draining = _field(obj, "draining", bool, required=False)
        load = obj.get("load")
        return cls(
            healthy=True if healthy is None else healthy,
            draining=False if draining is None else draining,
            load=Load() if load is None else Load.parse(load),
        )


@dataclass(frozen=True)
class Node:
    id: str
    url: str
    media_host: str
    media_port: int
    region: str | None
    capacity: Capacity
    version: str
    registered_at: int  # ms
    lease_expires_at: int  # ms
    revoked: bool = False
    healthy: bool = True
    draining: bool = False
    load: Load = field(default_factory=Load)
    placed_since_report: int = 0

    def lease_alive(self, now_ms: int) -> bool:
        return not self.revoked and self.lease_expires_at > now_ms

    def state(self, now_ms: int) -> NodeState:
        if self.revoked:
            return NodeState.REVOKED
        if self.lease_expires_at <= now_ms:
            return NodeState.EXPIRED
        if not self.healthy:
            return NodeState.UNHEALTHY
        if self.draining:
            return NodeState.DRAINING
        return NodeState.LIVE

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "media": {"host": self.media_host, "port": self.media_port},
            "region": self.region,
            "capacity": self.capacity.to_json(),
            "version": self.version,
            "state": self.state(now_ms).value,
            "registered_at": self.registered_at,
            "lease": {
                "expires_at": self.lease_expires_at,
                "remaining_ms": max(0, self.lease_expires_at - now_ms) if not self.revoked else 0,
                "alive": self.lease_alive(now_ms),
            },
            "revoked": self.revoked,
            "healthy": self.healthy,
            "draining": self.draining,
            "load": self.load.to_json(),
            "rooms_placed_since_report": self.placed_since_report,
        }


def _parse_codecs(value: object) -> tuple[str, ...]:
    return _parse_str_list(
        value,
        MAX_CODECS,
        CODEC_RE,
        f"field 'codecs' must be a list of at most {MAX_CODECS} codec names",
        "codec {item!r} must be 1 to 32 letters, digits, '.', '_' or '-'",
    )


@dataclass(frozen=True)
class RoomSpec:
    """What a room needs; the room id is validated by the caller (``levelchat.tokens.validate_room``)."""

    room: str
    max_participants: int | None = None
    codecs: tuple[str, ...] = ()
    region: str | None = None
    empty_timeout_s: int | None = None

    @classmethod
    def parse(cls, obj: Mapping[str, Any], room: str) -> RoomSpec:
        maxp = _field(obj, "max_participants", int, required=False)
        if maxp is not None and not 1 <= maxp <= MAX_COUNT:
            raise ValueError(f"field 'max_participants' must be from 1 to {MAX_COUNT}, got {maxp}")
        timeout = _field(obj, "empty_timeout_s", int, required=False)
        if timeout is not None and not 0 <= timeout <= MAX_COUNT:
            raise ValueError(f"field 'empty_timeout_s' must be from 0 to {MAX_COUNT}, got {timeout}")
        return cls(
            room=room,
            max_participants=maxp,
            codecs=_parse_codecs(obj.get("codecs")),
            region=parse_region(obj.get("region")),
            empty_timeout_s=timeout,
        )

    def node_body(self) -> dict[str, Any]:
        """The body of the node's ``POST /v1/rooms``."""
        body: dict[str, Any] = {"room": self.room}
        if self.max_participants is not None:
            body["max_participants"] = self.max_participants
        if self.codecs:
            body["codecs"] = list(self.codecs)
        if self.empty_timeout_s is not None:
            body["empty_timeout_s"] = self.empty_timeout_s
        return body


@dataclass(frozen=True)
class Room:
    spec: RoomSpec
    node_id: str
    state: RoomState
    placed_at: int  # ms

    @property
    def room(self) -> str:
        return self.spec.room

    def to_json(self, node: Node | None) -> dict[str, Any]:
        return {
            "room": self.spec.room,
            "node": {"id": self.node_id, "url": node.url if node is not None else None},
            "state": self.state.value,
            "placed_at": self.placed_at,
            "max_participants": self.spec.max_participants,
            "codecs": list(self.spec.codecs),
            "region": self.spec.region,
        }


@dataclass(frozen=True)
class Placement:
    """Result of the atomic choose-and-count: ``room``/``node`` set for PLACED and EXISTING."""

    outcome: PlacementOutcome
    room: Room | None = None
    node: Node | None = None
    previous: Room | None = None  # the record this placement replaced (a lost room), for release
    live_nodes: int = 0
    passing_nodes: int = 0
