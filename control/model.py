"""The control plane's records: nodes, rooms, the messages nodes send, and the outcomes of store operations.

``parse()`` builds a record from decoded JSON and raises ``ValueError`` naming the bad field;
``to_json()`` renders the public view.  Unknown fields are ignored (forward compatibility: a node may
be newer than the control plane).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from control.fields import (
    MAX_COUNT,
    MAX_EMPTY_TIMEOUT_S,
    MAX_LIVE_ROOMS,
    MAX_RATE,
    MAX_VERSION,
    ROOM_ID_RE,
    count,
    field_of,
    number,
    parse_codecs,
    parse_http_url,
    parse_instance,
    parse_live_rooms,
    parse_node_id,
    parse_region,
    parse_room_participants,
    valid_host,
)


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
    REREGISTERED = "reregistered"  # same id after its previous lease lapsed (or was taken over)
    EXISTS = "exists"  # another lease on this id is alive
    REVOKED = "revoked"


class HeartbeatOutcome(Enum):
    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"  # the lease lapsed: the node must register again
    REVOKED = "revoked"
    SUPERSEDED = "superseded"  # another instance (a restart) holds the id now: register again


class PlacementOutcome(Enum):
    PLACED = "placed"
    EXISTING = "existing"  # already live on a node with a live lease
    NO_NODES = "no_nodes"  # no node holds a live lease
    ALL_FAILING = "all_failing"  # live nodes exist, none healthy and not draining
    FULL = "full"  # healthy nodes exist, all at capacity
    AWAY = "away"  # its node lost its lease and may come back: not placed again before the grace ends


@dataclass(frozen=True)
class Capacity:
    max_participants: int
    max_rooms: int

    @classmethod
    def parse(cls, obj: object) -> Capacity:
        if not isinstance(obj, dict):
            raise ValueError("field 'capacity' must be an object")
        return cls(
            max_participants=count(obj, "max_participants", required=True, minimum=1),
            max_rooms=count(obj, "max_rooms", required=True, minimum=1),
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
            rooms=count(obj, "rooms", required=False),
            participants=count(obj, "participants", required=False),
            cpu=number(obj, "cpu", maximum=1.0),
            packets_per_s=number(obj, "packets_per_s", maximum=MAX_RATE),
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
    #: the reporting process (a new one after each restart): a registration from a new instance of
    #: the same node identity replaces the lease of the old one (see ``ControlService.register``)
    instance: str | None = None
    #: participants per live room, when the node reports them (``room_participants``)
    participants: tuple[tuple[str, int], ...] = ()
    #: the settings of (some of) those rooms, by room id: a store that lost them learns them back
    room_settings: Mapping[str, RoomSpec] = field(default_factory=dict)
    #: ``media.hosts``: every address of the node's candidates (an IPv4 and an IPv6 one on a
    #: dual-stack node), ``media_host`` among them; () when the node sent only ``media.host``
    media_hosts: tuple[str, ...] = ()
    #: ``media.tcp_port``: the node's ICE-TCP port (RFC 6544 passive candidates); None: none
    media_tcp_port: int | None = None

    @property
    def stored_media_host(self) -> str:
        """``media_host`` as the stores keep it: the addresses space-separated, ``media_host``
        first (``unpack_media_host`` reads it back)."""
        return " ".join(dict.fromkeys((self.media_host, *self.media_hosts)))

    def settings_of(self, room: str) -> RoomSpec:
        """The room's reported settings, or none (defaults) when the node did not report them."""
        return self.room_settings.get(room) or RoomSpec(room=room)

    def listing(self) -> tuple[tuple[str, int | None], ...]:
        """Every room the node lists, with its participant count when known."""
        counts = dict(self.participants)
        rooms = dict.fromkeys((*self.rooms, *counts))
        return tuple((r, counts.get(r)) for r in rooms)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> NodeRegistration:
        media = field_of(obj, "media", dict)
        host = field_of(media, "host", str)
        if not valid_host(host):
            raise ValueError(f"field 'media.host' must be a DNS name, an IPv4 or an IPv6 address, got {host[:300]!r}")
        port = field_of(media, "port", int)
        if not 1 <= port <= 65535:
            raise ValueError(f"field 'media.port' must be 1..65535, got {port}")
        hosts = parse_media_hosts(media.get("hosts"), host)
        tcp_port = field_of(media, "tcp_port", int, required=False)
        if tcp_port is not None and not 1 <= tcp_port <= 65535:
            raise ValueError(f"field 'media.tcp_port' must be 1..65535, got {tcp_port}")
        version = field_of(obj, "version", str, required=False) or ""
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
            rooms=parse_live_rooms(obj.get("rooms")),
            instance=parse_instance(obj.get("instance")),
            participants=parse_room_participants(obj.get("room_participants")) or (),
            room_settings=_parse_room_settings(obj.get("room_settings")),
            media_hosts=hosts,
            media_tcp_port=tcp_port,
        )


def parse_media_hosts(value: Any, host: str) -> tuple[str, ...]:
    """``media.hosts``: absent, or a list of at most one IPv4 and one IPv6 address that holds
    ``media.host``."""
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        raise ValueError("field 'media.hosts' must be a list of one or two IP addresses")
    families: set[int] = set()
    for item in value:
        try:
            if not isinstance(item, str) or "%" in item:
                raise ValueError
            version = ipaddress.ip_address(item).version
        except ValueError:
            raise ValueError(f"field 'media.hosts' must hold IP addresses, got {str(item)[:60]!r}") from None
        if version in families:
            raise ValueError(f"field 'media.hosts' holds at most one IPv4 and one IPv6 address, got two IPv{version}")
        families.add(version)
    if host not in value:
        raise ValueError(f"field 'media.hosts' must include 'media.host' ({host[:60]!r})")
    return tuple(value)


def unpack_media_host(stored: str) -> tuple[str, tuple[str, ...]]:
    """A store's ``media_host`` (``NodeRegistration.stored_media_host``): the first address, and
    all of them when there are several."""
    parts = stored.split()
    if len(parts) < 2:
        return stored, ()
    return parts[0], tuple(parts)


#: ``POST /v1/nodes`` and heartbeat bodies (a node's rooms, their participants and settings) may be
#: this large; other bodies keep ``levelchat.web.MAX_BODY_BYTES``.  Only ``node:register`` sends them.
MAX_REGISTRATION_BYTES = 4 * 1024 * 1024


def _parse_room_settings(value: object) -> dict[str, RoomSpec]:
    """``{room id: {"max_participants", "codecs", "empty_timeout_s", "recording"}}``, each checked as in
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
            keys = ("max_participants", "codecs", "empty_timeout_s", "recording")
            spec = RoomSpec.parse({k: entry.get(k) for k in keys}, room)
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
    instance: str | None = None
    #: the node's live rooms and their participants; ``None`` when it does not report them
    participants: tuple[tuple[str, int], ...] | None = None

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Heartbeat:
        healthy = field_of(obj, "healthy", bool, required=False)
        draining = field_of(obj, "draining", bool, required=False)
        load = obj.get("load")
        return cls(
            healthy=True if healthy is None else healthy,
            draining=False if draining is None else draining,
            load=Load() if load is None else Load.parse(load),
            instance=parse_instance(obj.get("instance")),
            participants=parse_room_participants(obj.get("room_participants")),
        )

    def listing(self) -> tuple[tuple[str, int | None], ...]:
        return tuple(self.participants or ())


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
    instance: str | None = None
    #: every candidate address (``NodeRegistration.media_hosts``); () = ``media_host`` alone
    media_hosts: tuple[str, ...] = ()
    #: the ICE-TCP port (``NodeRegistration.media_tcp_port``); None: none
    media_tcp_port: int | None = None

    def lease_alive(self, now_ms: int) -> bool:
        return not self.revoked and self.lease_expires_at > now_ms

    def away_until(self, now_ms: int, grace_ms: int) -> int | None:
        """When the node's lease lapsed less than ``grace_ms`` ago (it may come back and still host
        its rooms): the time the grace ends; else ``None`` (live, revoked, or away for longer)."""
        if self.revoked or self.lease_expires_at > now_ms:
            return None
        end = self.lease_expires_at + grace_ms
        return end if now_ms < end else None

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
            "media": {
                "host": self.media_host,
                "port": self.media_port,
                "hosts": list(self.media_hosts or (self.media_host,)),
                "tcp_port": self.media_tcp_port,
            },
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
            "instance": self.instance,
        }


@dataclass(frozen=True)
class RoomSpec:
    """What a room needs; the room id is validated by the caller (``levelchat.tokens.validate_room``)."""

    room: str
    max_participants: int | None = None
    codecs: tuple[str, ...] = ()
    region: str | None = None
    empty_timeout_s: int | None = None
    #: the room's recording policy (the node's ``POST /v1/rooms`` ``recording``): may it be recorded
    recording: bool = False

    @classmethod
    def parse(cls, obj: Mapping[str, Any], room: str) -> RoomSpec:
        maxp = field_of(obj, "max_participants", int, required=False)
        if maxp is not None and not 1 <= maxp <= MAX_COUNT:
            raise ValueError(f"field 'max_participants' must be an integer from 1 to {MAX_COUNT}")
        timeout = field_of(obj, "empty_timeout_s", int, required=False)
        if timeout is not None and not 0 <= timeout <= MAX_EMPTY_TIMEOUT_S:
            raise ValueError(f"field 'empty_timeout_s' must be an integer from 0 to {MAX_EMPTY_TIMEOUT_S}")
        return cls(
            room=room,
            max_participants=maxp,
            codecs=parse_codecs(obj.get("codecs")),
            region=parse_region(obj.get("region")),
            empty_timeout_s=timeout,
            recording=bool(field_of(obj, "recording", bool, required=False)),
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
        if self.recording:
            body["recording"] = True
        return body


@dataclass(frozen=True)
class Room:
    spec: RoomSpec
    node_id: str
    state: RoomState
    placed_at: int  # ms
    participants: int = 0  # as its node last reported (0 when it never did)

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
            "recording": self.spec.recording,
            "participants": self.participants,
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
    retry_at: int | None = None  # AWAY: when the grace of the room's node ends (ms)


@dataclass(frozen=True)
class Taken:
    """A room a node's report took back from another node (whose copy is empty, or gone)."""

    room: str
    from_node: str
