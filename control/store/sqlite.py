"""SQLite store: stdlib ``sqlite3`` on one worker thread, every write in ``BEGIN IMMEDIATE``.

One connection serves the process; ``BEGIN IMMEDIATE`` takes the database write lock before
reading, so choose-and-count is atomic also against other processes sharing the file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from control.placement import choose
from control.store.base import Store
from levelchat.sqlitefile import retry_busy
from levelchat.usage import book as usage_book

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    media_host TEXT NOT NULL,  -- the candidate addresses, space-separated, media.host first
    media_port INTEGER NOT NULL,
    region TEXT,
    max_participants INTEGER NOT NULL,
    max_rooms INTEGER NOT NULL,
    version TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    healthy INTEGER NOT NULL DEFAULT 1,
    draining INTEGER NOT NULL DEFAULT 0,
    load_rooms INTEGER NOT NULL DEFAULT 0,
    load_participants INTEGER NOT NULL DEFAULT 0,
    load_cpu REAL NOT NULL DEFAULT 0,
    load_pps REAL NOT NULL DEFAULT 0,
    placed INTEGER NOT NULL DEFAULT 0,
    instance TEXT,
    media_tcp_port INTEGER  -- ICE-TCP; NULL: none
);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    state TEXT NOT NULL,
    placed_at INTEGER NOT NULL,
    max_participants INTEGER,
    codecs TEXT NOT NULL DEFAULT '[]',
    region TEXT,
    empty_timeout_s INTEGER,
    participants INTEGER NOT NULL DEFAULT 0,
    seen_at INTEGER NOT NULL DEFAULT 0,
    recording INTEGER NOT NULL DEFAULT 0  -- the room's recording policy
);
CREATE INDEX IF NOT EXISTS rooms_by_node ON rooms (node_id, state);
""" + usage_book.SCHEMA
#: columns added after the first release: (table, column, definition), added to older files on open
MIGRATIONS = (
    ("nodes", "instance", "TEXT"),
    ("rooms", "participants", "INTEGER NOT NULL DEFAULT 0"),
    ("rooms", "seen_at", "INTEGER NOT NULL DEFAULT 0"),  # when its node last listed it
    ("nodes", "media_tcp_port", "INTEGER"),  # ICE-TCP; NULL: none
    ("rooms", "recording", "INTEGER NOT NULL DEFAULT 0"),
)

NODE_COLS = (
    "id, url, media_host, media_port, region, max_participants, max_rooms, version, registered_at, "
    "lease_expires_at, revoked, healthy, draining, load_rooms, load_participants, load_cpu, load_pps, placed, instance, "
    "media_tcp_port"
)
ROOM_COLS = "room, node_id, state, placed_at, max_participants, codecs, region, empty_timeout_s, participants, recording"


def _node(row: sqlite3.Row) -> Node:
    media_host, media_hosts = unpack_media_host(row["media_host"])
    return Node(
        id=row["id"],
        url=row["url"],
        media_host=media_host,
        media_hosts=media_hosts,
        media_port=row["media_port"],
        region=row["region"],
        capacity=Capacity(max_participants=row["max_participants"], max_rooms=row["max_rooms"]),
        version=row["version"],
        registered_at=row["registered_at"],
        lease_expires_at=row["lease_expires_at"],
        revoked=bool(row["revoked"]),
        healthy=bool(row["healthy"]),
        draining=bool(row["draining"]),
        load=Load(row["load_rooms"], row["load_participants"], row["load_cpu"], row["load_pps"]),
        placed_since_report=row["placed"],
        instance=row["instance"],
        media_tcp_port=row["media_tcp_port"],
    )


def _room(row: sqlite3.Row) -> Room:
    spec = RoomSpec(
        room=row["room"],
        max_participants=row["max_participants"],
        codecs=tuple(json.loads(row["codecs"])),
        region=row["region"],
        empty_timeout_s=row["empty_timeout_s"],
        recording=bool(row["recording"]),
    )
    return Room(spec=spec, node_id=row["node_id"], state=RoomState(row["state"]), placed_at=row["placed_at"],
                participants=row["participants"])


def _room_params(room: Room) -> tuple[Any, ...]:
    s = room.spec
    return (s.room, room.node_id, room.state.value, room.placed_at, s.max_participants,
            json.dumps(list(s.codecs)), s.region, s.empty_timeout_s, room.participants, int(s.recording))


class SqliteStore(Store):
    """``path`` is a file name or ``:memory:``."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-sqlite")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        store = cls(path)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.row_factory = sqlite3.Row

        def setup() -> None:
            if self._path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
            for table, column, definition in MIGRATIONS:
                have = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

        try:
            retry_busy(setup, 10.0)  # replicas (or a restart) opening the file together
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            conn = self._conn
            if conn is None:
                raise RuntimeError("sqlite store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._run(work)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            if self._conn is None:
                raise RuntimeError("sqlite store is closed")
            return fn(self._conn)

        return await self._run(work)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(shut)
        self._pool.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def add_usage(
        self, project: str, participant_ms: dict[int, int], recording_ms: dict[int, int], report_id: str, now_ms: int
    ) -> bool:
        return await self._tx(
            lambda c: usage_book.apply(c, project, participant_ms, recording_ms, report_id=report_id, now_ms=now_ms))

    async def get_usage(self, project: str, period_ms: int) -> tuple[int, int]:
        return await self._read(lambda c: usage_book.read(c, project, period_ms))

    @staticmethod
    def _get_node(c: sqlite3.Connection, node_id: str) -> Node | None:
        row = c.execute(f"SELECT {NODE_COLS} FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return _node(row) if row is not None else None

    @staticmethod
    def _lose_rooms(c: sqlite3.Connection, node_id: str) -> int:
        cur = c.execute("UPDATE rooms SET state = 'lost' WHERE node_id = ? AND state = 'live'", (node_id,))
        return cur.rowcount

    def _claim(
        self, c: sqlite3.Connection, node_id: str, listing: tuple[tuple[str, int | None], ...], now_ms: int,
        settings: Callable[[str], RoomSpec] | None = None,
    ) -> list[Taken]:
        """``claim_rule`` (``control.store.base``) for the rooms ``node_id`` lists; a room the store
        does not know (learnt back after a store loss) takes the settings the node reported."""
        taken: list[Taken] = []
        for room, count in listing:
            row = c.execute("SELECT node_id, state, participants FROM rooms WHERE room = ?", (room,)).fetchone()
            if row is None:
                spec = settings(room) if settings is not None else RoomSpec(room=room)
                learnt = Room(spec=spec, node_id=node_id, state=RoomState.LIVE, placed_at=now_ms, participants=count or 0)
                c.execute(f"INSERT INTO rooms ({ROOM_COLS}, seen_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                          (*_room_params(learnt), now_ms))
                continue
            if row["node_id"] != node_id:
                holder = self._get_node(c, row["node_id"])
                away = holder is None or not holder.lease_alive(now_ms) or row["state"] != RoomState.LIVE.value
                if away and count == 0:
                    continue  # an empty copy: the away node may come back with the participants
                if not away and not (count and row["participants"] == 0):
                    continue
                if not away:
                    taken.append(Taken(room, row["node_id"]))
            c.execute(
                "UPDATE rooms SET node_id = ?, state = 'live', participants = COALESCE(?, participants), "
                "seen_at = ? WHERE room = ?",
                (node_id, count, now_ms, room),
            )
        return taken

    async def register_node(
        self, reg: NodeRegistration, now_ms: int, lease_ms: int, *, takeover: bool = False
    ) -> tuple[RegisterOutcome, Node | None, list[Taken], list[str]]:
        def tx(c: sqlite3.Connection) -> tuple[RegisterOutcome, Node | None, list[Taken], list[str]]:
            old = self._get_node(c, reg.id)
            if old is not None and old.revoked:
                return RegisterOutcome.REVOKED, old, [], []
            same = reg.instance is not None and old is not None and old.instance == reg.instance
            if old is not None and old.lease_expires_at > now_ms and not (takeover or same):
                return RegisterOutcome.EXISTS, old, [], []
            if old is not None:
                self._lose_rooms(c, reg.id)
            c.execute(
                f"INSERT OR REPLACE INTO nodes ({NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,0,1,0,0,0,0,0,0,?,?)",
                (reg.id, reg.url, reg.stored_media_host, reg.media_port, reg.region, reg.capacity.max_participants,
                 reg.capacity.max_rooms, reg.version, now_ms, now_ms + lease_ms, reg.instance, reg.media_tcp_port),
            )
            taken = self._claim(c, reg.id, reg.listing(), now_ms, reg.settings_of)
            dropped: list[str] = []
            if old is not None and reg.instance is not None and old.instance != reg.instance:
                # a restart: the rooms the old process still had (listed or placed within about a
                # lease of its last report; older records are rooms that ended there long ago)
                since = old.lease_expires_at - 2 * lease_ms
                dropped = [r["room"] for r in c.execute(
                    "SELECT room FROM rooms WHERE node_id = ? AND state = 'lost' AND MAX(placed_at, seen_at) >= ? "
                    "ORDER BY room", (reg.id, since))]
            outcome = RegisterOutcome.CREATED if old is None else RegisterOutcome.REREGISTERED
            return outcome, self._get_node(c, reg.id), taken, dropped

        return await self._tx(tx)

    async def heartbeat(
        self, node_id: str, hb: Heartbeat, now_ms: int, lease_ms: int
    ) -> tuple[HeartbeatOutcome, Node | None, list[Taken]]:
        def tx(c: sqlite3.Connection) -> tuple[HeartbeatOutcome, Node | None, list[Taken]]:
            old = self._get_node(c, node_id)
            if old is None:
                return HeartbeatOutcome.UNKNOWN, None, []
            if old.revoked:
                return HeartbeatOutcome.REVOKED, old, []
            if hb.instance is not None and old.instance is not None and hb.instance != old.instance:
                return HeartbeatOutcome.SUPERSEDED, old, []
            if old.lease_expires_at <= now_ms:
                return HeartbeatOutcome.EXPIRED, old, []
            c.execute(
                "UPDATE nodes SET healthy = ?, draining = ?, load_rooms = ?, load_participants = ?, "
                "load_cpu = ?, load_pps = ?, placed = 0, lease_expires_at = ? WHERE id = ?",
                (int(hb.healthy), int(hb.draining), hb.load.rooms, hb.load.participants, hb.load.cpu,
                 hb.load.packets_per_s, now_ms + lease_ms, node_id),
            )
            taken = self._claim(c, node_id, hb.listing(), now_ms)
            return HeartbeatOutcome.OK, self._get_node(c, node_id), taken

        return await self._tx(tx)

    async def revoke(self, node_id: str, now_ms: int) -> Node | None:
        def tx(c: sqlite3.Connection) -> Node | None:
            if self._get_node(c, node_id) is None:
                return None
            c.execute(
                "UPDATE nodes SET revoked = 1, lease_expires_at = MIN(lease_expires_at, ?) WHERE id = ?",
                (now_ms, node_id),
            )
            self._lose_rooms(c, node_id)
            return self._get_node(c, node_id)

        return await self._tx(tx)

    async def provision(self, node_id: str, now_ms: int) -> Node | None:
        def tx(c: sqlite3.Connection) -> Node | None:
            c.execute(
                "UPDATE nodes SET revoked = 0, healthy = 1, draining = 0, placed = 0 WHERE id = ?", (node_id,)
            )
            return self._get_node(c, node_id)

        return await self._tx(tx)

    async def mark_unhealthy(self, node_id: str) -> None:
        await self._tx(lambda c: c.execute("UPDATE nodes SET healthy = 0 WHERE id = ?", (node_id,)))

    async def get_node(self, node_id: str) -> Node | None:
        return await self._read(lambda c: self._get_node(c, node_id))

    async def list_nodes(self) -> list[Node]:
        return await self._read(
            lambda c: [_node(r) for r in c.execute(f"SELECT {NODE_COLS} FROM nodes ORDER BY id")]
        )

    async def place_room(
        self, spec: RoomSpec, now_ms: int, exclude: frozenset[str], grace_ms: int = 0
    ) -> Placement:
        def tx(c: sqlite3.Connection) -> Placement:
            row = c.execute(f"SELECT {ROOM_COLS} FROM rooms WHERE room = ?", (spec.room,)).fetchone()
            previous = _room(row) if row is not None else None
            if previous is not None and previous.state is not RoomState.CLOSED:
                holder = self._get_node(c, previous.node_id)
                if holder is not None and previous.state is RoomState.LIVE and holder.lease_alive(now_ms):
                    return Placement(PlacementOutcome.EXISTING, previous, holder)
                until = holder.away_until(now_ms, grace_ms) if holder is not None else None
                if until is not None:
                    return Placement(PlacementOutcome.AWAY, previous, holder, retry_at=until)
            nodes = [_node(r) for r in c.execute(f"SELECT {NODE_COLS} FROM nodes")]
            choice = choose(nodes, now_ms, spec.region, exclude, previous.node_id if previous is not None else None)
            if choice.node is None:
                return Placement(choice.outcome, live_nodes=choice.live_nodes, passing_nodes=choice.passing_nodes)
            c.execute("UPDATE nodes SET placed = placed + 1 WHERE id = ?", (choice.node.id,))
            room = Room(spec=spec, node_id=choice.node.id, state=RoomState.LIVE, placed_at=now_ms)
            c.execute(f"INSERT OR REPLACE INTO rooms ({ROOM_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", _room_params(room))
            return Placement(
                PlacementOutcome.PLACED, room, self._get_node(c, choice.node.id), previous,
                choice.live_nodes, choice.passing_nodes,
            )

        return await self._tx(tx)

    async def release_room(self, room: str, node_id: str, restore: Room | None) -> None:
        def tx(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT node_id, state FROM rooms WHERE room = ?", (room,)).fetchone()
            # lost too: the node's lease may have lapsed while the failed call waited on it
            if row is None or row["node_id"] != node_id or row["state"] not in ("live", "lost"):
                return
            c.execute("UPDATE nodes SET placed = MAX(placed - 1, 0) WHERE id = ?", (node_id,))
            if restore is None:
                c.execute("DELETE FROM rooms WHERE room = ?", (room,))
            else:
                c.execute(
                    f"INSERT OR REPLACE INTO rooms ({ROOM_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", _room_params(restore)
                )

        await self._tx(tx)

    async def get_room(self, room: str) -> Room | None:
        def read(c: sqlite3.Connection) -> Room | None:
            row = c.execute(f"SELECT {ROOM_COLS} FROM rooms WHERE room = ?", (room,)).fetchone()
            return _room(row) if row is not None else None

        return await self._read(read)

    async def expire_leases(self, now_ms: int) -> list[str]:
        def tx(c: sqlite3.Connection) -> list[str]:
            ids = [
                r["node_id"]
                for r in c.execute(
                    "SELECT DISTINCT rooms.node_id AS node_id FROM rooms JOIN nodes ON nodes.id = rooms.node_id "
                    "WHERE rooms.state = 'live' AND (nodes.lease_expires_at <= ? OR nodes.revoked = 1)",
                    (now_ms,),
                )
            ]
            for node_id in ids:
                self._lose_rooms(c, node_id)
            return sorted(ids)

        return await self._tx(tx)
