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
)


class StoreUnavailable(ConnectionError):
    """The store did not answer in time or cannot be reached (``control.store.bounded``)."""


class Store(ABC):
    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot serve requests."""

    @abstractmethod
    async def register_node(
        self, reg: NodeRegistration, now_ms: int, lease_ms: int
    ) -> tuple[RegisterOutcome, Node | None]:
        """Create or take over the node record.

        REVOKED when the id is revoked; EXISTS (with the current record) while its lease is alive;
        otherwise the record is (re)written with fresh load, a new lease, and the rooms it held
        marked lost (a restarted node has none of them).
        """

    @abstractmethod
    async def heartbeat(
        self, node_id: str, hb: Heartbeat, now_ms: int, lease_ms: int
    ) -> tuple[HeartbeatOutcome, Node | None]:
        """Renew a live lease and store the report (resetting rooms placed since the last one)."""

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
    async def place_room(self, spec: RoomSpec, now_ms: int, exclude: frozenset[str]) -> Placement:
        """Atomically: return the room if it is live on a node with a live lease (EXISTING), else
        choose a node (``control.placement``), count the placement on it and record the room."""

    @abstractmethod
    async def release_room(self, room: str, node_id: str, restore: Room | None) -> None:
        """Undo a placement on ``node_id`` whose creation failed, restoring the previous record."""

    @abstractmethod
    async def get_room(self, room: str) -> Room | None: ...

    @abstractmethod
    async def expire_leases(self, now_ms: int) -> list[str]:
        """Mark live rooms of nodes whose lease lapsed as lost; the ids of those nodes."""
