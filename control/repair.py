"""Background repairs after a node's report (``ControlService.register``/``heartbeat``): close the
empty copy of a room another node took back, and place again the rooms a restarted node no longer
has.  Each runs as its own task; ``close()`` cancels what is left.  A failure is logged: an empty
copy left open is closed by its node's empty-room timeout, a room left lost is placed again by the
next ``POST /v1/rooms`` or ``POST /v1/tokens``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from control.model import RoomSpec, RoomState, Taken
from control.nodeclient import NodeCallOutcome, delete_room, room_participants
from control.store import Store
from levelchat.errors import ApiError
from levelchat.tasks import cancel_and_wait

log = logging.getLogger("levelchat.control")

#: node calls closing empty copies at once (beyond this many, later ones wait)
MAX_CLOSE_CALLS = 64


class Repairs:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float,
        now_ms: Callable[[], int],
        room_token: Callable[[str, str], str],
        place: Callable[[RoomSpec], Awaitable[str]],
    ) -> None:
        """``room_token(room, scope)`` mints the control plane's token for a node call;
        ``place(spec)`` places a room (``ControlService.ensure_room``) and names its node."""
        self._store = store
        self._session = session
        self._timeout_s = timeout_s
        self._now_ms = now_ms
        self._room_token = room_token
        self._place = place
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_slots = asyncio.Semaphore(MAX_CLOSE_CALLS)

    async def close(self) -> None:
        for task in list(self._tasks):
            await cancel_and_wait(task)

    def close_copies(self, node_id: str, taken: list[Taken]) -> None:
        """Rooms ``node_id`` took back (it reports participants in them): close the other node's
        copy, when it is still empty."""
        for t in taken:
            log.warning("room %s: node %s reports participants in it; taken back from node %s", t.room, node_id, t.from_node)
            self._spawn(self._close_empty_copy(t))

    def place_again(self, node_id: str, rooms: list[str]) -> None:
        """Rooms ``node_id`` held and no longer has (it restarted): placed again now (back on it,
        when it can take them), so that joiners already sent to it find them."""
        if rooms:
            self._spawn(self._place_again(node_id, rooms))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background room repair failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_empty_copy(self, t: Taken) -> None:
        async with self._close_slots:
            node = await self._store.get_node(t.from_node)
            if node is None or not node.lease_alive(self._now_ms()):
                return
            token = self._room_token(t.room, "room:admin")
            count = await room_participants(self._session, node.url, token, t.room, self._timeout_s)
            if count != 0:
                log.warning("room %s: node %s's copy has %s participant(s): left open", t.room, node.id, count)
                return
            result = await delete_room(self._session, node.url, token, t.room, self._timeout_s)
            if result.outcome is NodeCallOutcome.FAILED:
                log.warning("room %s: could not close the empty copy on node %s: %s", t.room, node.id, result.detail)
            else:
                log.info("room %s: closed the empty copy on node %s", t.room, node.id)

    async def _place_again(self, node_id: str, rooms: list[str]) -> None:
        for name in rooms:
            room = await self._store.get_room(name)
            if room is None or room.node_id != node_id or room.state is not RoomState.LOST:
                continue
            try:
                placed_on = await self._place(room.spec)
            except ApiError as exc:
                log.warning("room %s: could not place it again after node %s registered: %s", name, node_id, exc.detail)
                continue
            log.info("room %s placed again on node %s after node %s registered without it", name, placed_on, node_id)
