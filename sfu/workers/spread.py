"""The front's side of rooms spread over workers: where a WebSocket join goes, and the relays
between the workers (set up with a fresh secret, torn down when a worker dies, set up again when
it is back).  The workers' side is ``sfu.workers.relay``; the design is ``docs/relays.md``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from sfu.config import NodeConfig
from sfu.workers.relay_json import new_secret
from sfu.workers.supervisor import Supervisor, Worker
from sfu.workers.worker import INTERNAL

log = logging.getLogger(__name__)


class FrontRelays:
    def __init__(self, config: NodeConfig, supervisor: Supervisor) -> None:
        self.config = config
        self.supervisor = supervisor
        self._serial = 0
        #: live WebSocket sessions proxied per (room, worker): where a spread room's next join goes
        self.room_sockets: dict[tuple[str, int], int] = {}

    @property
    def workers(self) -> list[Worker]:
        return self.supervisor.workers

    async def request(self, w: Worker, method: str, path: str, body: Any = None) -> Any:
        """A private call whose failure is logged, not raised (the worker may be going)."""
        try:
            return await self.supervisor.request(w, method, path, body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("worker %d: %s %s failed: %s", w.index, method, path, exc)
            return None

    # -- relays ------------------------------------------------------------------------------------
    async def setup(self, a: Worker, b: Worker) -> None:
        """A relay between two workers: a fresh secret to both; the lower index dials the
        control channel."""
        if a.index > b.index:
            a, b = b, a
        self._serial += 1
        relay_id = f"w{a.index}-w{b.index}-{self._serial}"
        secret = new_secret()
        host = self.config.media_host if self.config.media_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        for me, peer, dial in ((b, a, False), (a, b, True)):
            body = {
                "relay_id": relay_id, "secret": secret, "local": f"w{me.index}", "remote": f"w{peer.index}",
                "peer_host": host, "peer_port": peer.media_port, "peer_socket": peer.socket_path, "dial": dial,
            }
            await self.request(me, "POST", INTERNAL + "/relay", body)

    async def setup_all(self) -> None:
        for i, a in enumerate(self.workers):
            for b in self.workers[i + 1 :]:
                await self.setup(a, b)

    async def worker_up(self, w: Worker) -> None:
        """A restarted worker: its relays to the others again."""
        for other in self.workers:
            if other is not w and other.up:
                await self.setup(w, other)

    def worker_down(self, w: Worker, spawn: Callable[[Any], None]) -> None:
        """The other workers' relays to it go now (their participants see its tracks unpublished),
        not after the relays' silence."""
        for other in self.workers:
            if other is not w and other.up:
                spawn(self.request(other, "POST", INTERNAL + "/relay/close", {"remote": f"w{w.index}"}))

    # -- where a join goes -------------------------------------------------------------------------
    def choose(self, room: str, home: Worker) -> Worker:
        """Where a WebSocket join of a room whose home is ``home`` goes: ``home`` while it has a
        seat; else (or always with ``relay_spread``) the up and ready worker with the fewest of
        the room's sessions (then the lowest index): relays carry the room between them."""
        status = home.status or {}
        full = isinstance(status.get("participants"), int) and status["participants"] >= home.config.max_participants
        if not (self.config.relay_spread or full) or len(self.workers) < 2:
            return home
        ready = [w for w in self.workers if w.up and bool((w.status or {}).get("ready")) and w.session is not None]
        if full:
            ready = [w for w in ready if w is not home]
        if not ready:
            return home
        return min(ready, key=lambda w: (self.room_sockets.get((room, w.index), 0), w.index))

    async def prepare(self, w: Worker, room: str) -> None:
        """The room may not be open on ``w`` yet: it asks its relays for it first (the join then
        finds it with the other workers' participants)."""
        await self.request(w, "POST", INTERNAL + "/relay/open", {"room": room})

    @contextmanager
    def session(self, room: str, w: Worker) -> Iterator[None]:
        """Count a live session of ``room`` on ``w`` while the block runs."""
        key = (room, w.index)
        self.room_sockets[key] = self.room_sockets.get(key, 0) + 1
        try:
            yield
        finally:
            left = self.room_sockets[key] - 1
            if left:
                self.room_sockets[key] = left
            else:
                del self.room_sockets[key]
