"""The one storage interface the control plane uses; every method is atomic on its own.

Times are milliseconds passed in by the caller.  Implementations: ``SqliteStore`` (one file or
memory, survives restarts) and ``RedisStore`` (shared by several control-plane replicas).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from control.model import (
    Heartbeat,
    HeartbeatOutcome,
    Node,
    NodeRegistration,
    Placement,
    RegisterOutcome,
    Room,
    RoomSpec,
    Taken,
)


class StoreUnavailable(ConnectionError):
    """The store did not answer in time or cannot be reached (``control.store.bounded``)."""


#: a node's registration or heartbeat is one store call over every room it lists (up to 10,000
#: reported rooms, ``control.fields.MAX_LIVE_ROOMS``, each in ``rooms`` and in ``room_participants``):
#: its bound grows by this much per listed room.  10,000 rooms on Redis took 0.3 s unloaded and
#: 1.1 s on a loaded 2-core machine (0.15 s of it packing the command in Python); with the plain
#: 1 s bound, such a node got ``service_unavailable`` and the control plane went into an outage.
PER_LISTED_ROOM_S = 0.0005


def call_bound_s(timeout_s: float, listed_rooms: int = 0) -> float:
    """How long one store call may take: ``timeout_s``, and ``PER_LISTED_ROOM_S`` for each room
    the call carries (a stalled store is still noticed within ``timeout_s`` by every other call)."""
    if listed_rooms < 0:
        raise ValueError(f"listed_rooms must be >= 0, got {listed_rooms}")
    return timeout_s + listed_rooms * PER_LISTED_ROOM_S


class Store(ABC):
    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot serve requests."""

    @abstractmethod
    async def register_node(
        self, reg: NodeRegistration, now_ms: int, lease_ms: int, *, takeover: bool = False
    ) -> tuple[RegisterOutcome, Node | None, list[Taken], list[str]]:
        """Create or take over the node record; the rooms it took back (``Taken``) and, when it is a
        new instance of the node (a restart), the rooms it held and no longer lists (lost, to be
        placed again at once: ``dropped``; the same process not listing a room means it ended).

        REVOKED when the id is revoked; EXISTS (with the current record) while its lease is alive,
        unless ``takeover`` or the registration comes from the instance holding the lease;
        otherwise the record is (re)written with fresh load, a new lease, and the rooms it held
        and does not list marked lost.  The rooms it lists are claimed (``claim_rule`` below).
        """

    @abstractmethod
    async def heartbeat(
        self, node_id: str, hb: Heartbeat, now_ms: int, lease_ms: int
    ) -> tuple[HeartbeatOutcome, Node | None, list[Taken]]:
        """Renew a live lease and store the report (resetting rooms placed since the last one);
        SUPERSEDED when the report names another instance than the lease's.  The rooms it lists
        are claimed (``claim_rule``)."""

    @abstractmethod
    async def revoke(self, node_id: str, now_ms: int) -> Node | None:
        """Mark revoked, end the lease and mark its rooms lost; ``None`` when unknown."""

    @abstractmethod
    async def provision(self, node_id: str, now_ms: int) -> Node | None:
        """Clear revocation (the node registers again); ``None`` when unknown."""

    @abstractmethod
    async def mark_unhealthy(self, node_id: str) -> None:
        """Until its next heartbeat (the control plane could not create a room there)."""

    @abstractmethod
    async def get_node(self, node_id: str) -> Node | None: ...

    @abstractmethod
    async def list_nodes(self) -> list[Node]: ...

    @abstractmethod
    async def place_room(
        self, spec: RoomSpec, now_ms: int, exclude: frozenset[str], grace_ms: int = 0
    ) -> Placement:
        """Atomically: return the room if it is live on a node with a live lease (EXISTING); AWAY
        when its node's lease lapsed less than ``grace_ms`` ago (not revoked: it may come back with
        the room); else choose a node (``control.placement``, preferring the room's previous node),
        count the placement on it and record the room."""

    @abstractmethod
    async def release_room(self, room: str, node_id: str, restore: Room | None) -> None:
        """Undo a placement on ``node_id`` whose creation failed (the record is still on that node,
        live or lost), restoring the previous record."""

    @abstractmethod
    async def get_room(self, room: str) -> Room | None: ...

    @abstractmethod
    async def expire_leases(self, now_ms: int) -> list[str]:
        """Mark live rooms of nodes whose lease lapsed as lost; the ids of those nodes."""

    @abstractmethod
    async def add_usage(
        self, project: str, participant_ms: dict[int, int], recording_ms: dict[int, int], report_id: str, now_ms: int
    ) -> bool:
        """Add milliseconds per period start (``levelchat.usage``); False, adding nothing, when
        ``report_id`` was applied already (a retried heartbeat)."""

    @abstractmethod
    async def get_usage(self, project: str, period_ms: int) -> tuple[int, int]:
        """The period's (participant ms, recording ms)."""



# claim_rule: how a node's list of live rooms (registration or heartbeat) updates the records, per
# room.  Unknown: recorded live on the node.  On the node already: live, with the reported
# participants.  On another node that is away (lease lapsed, revoked, unknown) or whose record is
# lost or closed: moved to the reporting node, unless its copy is empty (0 participants).  On another live node whose last reported
# participants are 0 while the reporting node reports participants: moved too, and that node's
# (empty) copy is to be closed (a ``Taken``).  Otherwise (both copies have participants, or the
# reporting copy has none) left where it is: a room is never taken from a copy with participants.
