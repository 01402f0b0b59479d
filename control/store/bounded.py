"""``BoundedStore``: any store, with every call bounded in time and outages logged once.

A stalled store (a Redis that stopped answering, a locked SQLite file) would otherwise hold each
request, ``/readyz`` and the lease reaper as long as the client library lets it.  Here every call
ends within ``timeout_s`` (a node's registration or heartbeat: longer by ``PER_LISTED_ROOM_S`` per
room it lists, ``call_bound_s``); a call that times out or cannot reach the store raises
``StoreUnavailable`` (answered ``service_unavailable`` with ``Retry-After``) and starts an
*outage*: logged once (WARNING) when it starts and once when it ends, with its duration.  During
an outage one call at a time goes to the store (the probe that notices it is back: the lease
reaper makes one every second or so); the others are refused at once instead of each waiting out
the bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
from control.store.base import Store, StoreUnavailable, call_bound_s
from levelchat.tasks import cancel_requests, raise_if_cancel_swallowed

log = logging.getLogger("levelchat.control.store")

T = TypeVar("T")


class BoundedStore(Store):
    def __init__(
        self,
        inner: Store,
        timeout_s: float,
        unavailable: tuple[type[BaseException], ...],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.inner = inner
        self.timeout_s = timeout_s
        self._unavailable = unavailable
        self._clock = clock
        #: monotonic time the current outage started; None while the store answers
        self.outage_since: float | None = None
        self.outages = 0
        self._probing = False

    @property
    def available(self) -> bool:
        return self.outage_since is None

    async def _bounded(self, what: str, call: Callable[[], Awaitable[T]], listed_rooms: int = 0) -> T:
        if self.outage_since is not None and self._probing:
            raise StoreUnavailable(f"the store is unavailable (for {self._clock() - self.outage_since:.0f} s)")
        probe = self.outage_since is not None
        self._probing = self._probing or probe
        bound_s = call_bound_s(self.timeout_s, listed_rooms)
        cancels = cancel_requests()
        try:
            try:
                async with asyncio.timeout(bound_s):
                    result = await call()
            finally:
                # a client library may swallow a cancellation (redis-py does, now and then): the
                # caller's task must still stop, not take it for an outage and go on
                raise_if_cancel_swallowed(cancels)
        except TimeoutError:
            self._down(what, f"no answer within {bound_s:g} s")
            raise StoreUnavailable(f"the store did not answer within {bound_s:g} s") from None
        except self._unavailable as exc:
            self._down(what, f"{type(exc).__name__}: {exc}")
            raise StoreUnavailable(f"the store cannot be reached: {type(exc).__name__}") from None
        finally:
            if probe:
                self._probing = False
        self._up()
        return result

    def _down(self, what: str, why: str) -> None:
        if self.outage_since is None:
            self.outage_since = self._clock()
            self.outages += 1
            log.warning("store outage: %s failed (%s); answering service_unavailable until it is back", what, why)

    def _up(self) -> None:
        if self.outage_since is not None:
            log.warning("store outage ended after %.1f s", self._clock() - self.outage_since)
            self.outage_since = None

    # -- the Store interface, each call bounded ------------------------------------------------

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self._bounded("ping", self.inner.ping)

    async def register_node(
        self, reg: NodeRegistration, now_ms: int, lease_ms: int, *, takeover: bool = False
    ) -> tuple[RegisterOutcome, Node | None, list[Taken], list[str]]:
        return await self._bounded(
            "register_node", lambda: self.inner.register_node(reg, now_ms, lease_ms, takeover=takeover),
            len(reg.listing()))

    async def heartbeat(
        self, node_id: str, hb: Heartbeat, now_ms: int, lease_ms: int
    ) -> tuple[HeartbeatOutcome, Node | None, list[Taken]]:
        return await self._bounded(
            "heartbeat", lambda: self.inner.heartbeat(node_id, hb, now_ms, lease_ms), len(hb.listing()))

    async def revoke(self, node_id: str, now_ms: int) -> Node | None:
        return await self._bounded("revoke", lambda: self.inner.revoke(node_id, now_ms))

    async def provision(self, node_id: str, now_ms: int) -> Node | None:
        return await self._bounded("provision", lambda: self.inner.provision(node_id, now_ms))

    async def mark_unhealthy(self, node_id: str) -> None:
        await self._bounded("mark_unhealthy", lambda: self.inner.mark_unhealthy(node_id))

    async def get_node(self, node_id: str) -> Node | None:
        return await self._bounded("get_node", lambda: self.inner.get_node(node_id))

    async def list_nodes(self) -> list[Node]:
        return await self._bounded("list_nodes", self.inner.list_nodes)

    async def place_room(
        self, spec: RoomSpec, now_ms: int, exclude: frozenset[str], grace_ms: int = 0
    ) -> Placement:
        return await self._bounded("place_room", lambda: self.inner.place_room(spec, now_ms, exclude, grace_ms))

    async def release_room(self, room: str, node_id: str, restore: Room | None) -> None:
        await self._bounded("release_room", lambda: self.inner.release_room(room, node_id, restore))

    async def get_room(self, room: str) -> Room | None:
        return await self._bounded("get_room", lambda: self.inner.get_room(room))

    async def expire_leases(self, now_ms: int) -> list[str]:
        return await self._bounded("expire_leases", lambda: self.inner.expire_leases(now_ms))

    async def add_usage(
        self, project: str, participant_ms: dict[int, int], recording_ms: dict[int, int], report_id: str, now_ms: int
    ) -> bool:
        return await self._bounded(
            "add_usage", lambda: self.inner.add_usage(project, participant_ms, recording_ms, report_id, now_ms))

    async def get_usage(self, project: str, period_ms: int) -> tuple[int, int]:
        return await self._bounded("get_usage", lambda: self.inner.get_usage(project, period_ms))
