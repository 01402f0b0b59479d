"""Does the node keep memory per session?  ``python -m bench.leakcheck --cycles 8``

A node runs in this process (dev config, rate limits off, uvloop like ``python -m sfu``); each
cycle a child process (``bench.leakclient``) opens ``--rooms`` x ``--publishers`` WHIP sessions
and ``--viewers`` WHEP sessions per publisher, sends media, and DELETEs them all.  Once the node
has let go of them (and, with ``--empty-timeout``, closed the rooms) this process measures:

* ``rss`` (``/proc/self/statm``) before and after a full garbage collection, and glibc's bytes in
  use after it (``mallinfo2``: what ``malloc`` hands out, whatever the fragmentation);
* ``held``, ``cyclic``: the malloc'd megabytes and the objects only the cycle collector freed
  (by type, ``gc.DEBUG_SAVEALL``): session objects there are released late, with whatever C
  memory they hold (``--no-gc`` skips the collection: what a node does between its rare full
  collections);
* live session objects (transports, DTLS endpoints and their OpenSSL connections, open libsrtp
  sessions, participants, tracks, downtracks, retransmission caches), the node's tables (router,
  media port, sessions, rooms open and closed, signaling, rate-limiter buckets, asyncio tasks);
* the types whose live count grew most since the baseline (the state after the first cycle), and
  with ``--tracemalloc`` the source lines whose allocations grew most.

A leak is growth that goes on cycle after cycle; allocator behaviour levels off.  Each line of
output is one cycle; ``--json FILE`` writes every figure.  Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.leakclient import CycleResult
from sfu.config import load
from sfu.node import Node

PAGE = os.sysconf("SC_PAGE_SIZE")
SETTLE_TIMEOUT_S = 20.0
#: the classes whose live instances are session state (module-qualified type names)
SESSION_TYPES = {
    "sfu.transport.peer.PeerTransport": "transports",
    "sfu.transport.dtls.DtlsEndpoint": "dtls",
    "OpenSSL.SSL.Connection": "ssl_connections",
    "sfu.routing.participant.Participant": "participants",
    "sfu.routing.track.PublishedTrack": "tracks",
    "sfu.routing.downtrack.DownTrack": "downtracks",
    "sfu.routing.rtx_cache.RtxCache": "rtx_caches",
    "sfu.client.lite.LiteEndpoint": "lite_endpoints",
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def malloc_in_use() -> int | None:
    """glibc's bytes handed out (``uordblks`` + mmapped ``hblkhd``), None off glibc."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def _type_name(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def collect_cyclic() -> tuple[int, Counter[str]]:
    """Run a full collection, returning how many objects only it could free, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        types = Counter(_type_name(o) for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    gc.collect()
    return found, types


def live_counts() -> tuple[Counter[str], dict[str, int]]:
    """Live objects by type, and the session classes' counts (libsrtp sessions still open too)."""
    types: Counter[str] = Counter()
    buckets = 0
    from levelchat.ratelimit import TokenBuckets
    from sfu.transport.srtp import live_sessions

    for obj in gc.get_objects():
        types[_type_name(obj)] += 1
        if isinstance(obj, TokenBuckets):
            buckets += len(obj._buckets)
    session = {label: types.get(name, 0) for name, label in SESSION_TYPES.items()}
    session["srtp_open"] = live_sessions()
    session["ratelimit_buckets"] = buckets
    return types, session


def node_tables(node: Node) -> dict[str, int]:
    """Sizes of the node's per-session and per-room tables (public and the self-check's)."""
    from sfu.api.rtc import RTC_SERVICE_KEY

    port = node.port
    tables = {
        "router_participants": len(node.router.participants),
        "port_by_ufrag": len(port._by_ufrag),
        "port_by_addr": len(port._by_addr),
        "port_by_key": len(port._by_key),
        "whip_whep_sessions": len(node.sessions.sessions),
        "published": len(node.sessions.published),
        "rooms_open": node.rooms.room_count,
        "rooms_closed": len(node.rooms.closed),
        "observers": len(node.router.observers),
        "http_counts": len(node.http_counts),
        "tasks": len(asyncio.all_tasks()),
    }
    if node._runner is not None:
        rtc = node._runner.app.get(RTC_SERVICE_KEY)
        if rtc is not None:
            tables["rtc_sessions"] = len(rtc.by_sid)
            tables["rtc_published"] = len(rtc.published) + len(rtc.publisher_roles)
            tables["rtc_data_sessions"] = len(rtc.data.sessions)
    return tables


@dataclass
class Sample:
    cycle: int
    client: dict[str, Any]
    rss_mb: float
    rss_after_gc_mb: float
    malloc_mb: float | None
    #: malloc'd bytes the full collection gave back: held by session objects only cycles kept alive
    cycle_held_mb: float | None
    cyclic: int
    cyclic_types: dict[str, int]
    session: dict[str, int]
    tables: dict[str, int]
    growers: dict[str, int] = field(default_factory=dict)
    traced: list[str] = field(default_factory=list)

    def line(self) -> str:
        s = self.session
        malloc = f"{self.malloc_mb:7.1f}" if self.malloc_mb is not None else "      -"
        held = f"{self.cycle_held_mb:6.1f}" if self.cycle_held_mb is not None else "     -"
        top = ", ".join(f"{k.rsplit('.', 1)[-1]}+{v}" for k, v in list(self.growers.items())[:4])
        return (f"{self.cycle:3d} {self.rss_mb:8.1f} {self.rss_after_gc_mb:8.1f} {malloc} {held} {self.cyclic:7d} "
                f"{s['transports']:5d} {s['srtp_open']:5d} {s['ssl_connections']:4d} {s['tracks']:5d} "
                f"{s['downtracks']:4d} {self.tables['rooms_closed']:6d}  {top}")


HEADER = "cyc   rss MB  after gc malloc   held  cyclic  peers  srtp  ssl tracks  dts closed  top growers since baseline"


async def _settle(node: Node, timeout_s: float, rooms_too: bool) -> None:
    """Wait until the node holds no public participant (and no open public room)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not node.rooms.participant_count and (not rooms_too or node.rooms.room_count == 0):
            return
        await asyncio.sleep(0.1)


async def _client(url: str, rooms: list[str], args: argparse.Namespace) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.leakclient", "--url", url, "--rooms", ",".join(rooms),
        "--publishers", str(args.publishers), "--viewers", str(args.viewers), "--seconds", str(args.seconds),
        stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": "client timed out"}
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"client exited {proc.returncode}"}
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


async def run(args: argparse.Namespace) -> list[Sample]:
    flags = {"http_port": 0, "media_port": 0, "rate_limit_ip_per_s": 0, "rate_limit_key_per_s": 0,
             "max_rooms": 100_000, "log_level": "WARNING"}
    if args.empty_timeout is not None:
        flags["default_empty_timeout_s"] = args.empty_timeout
    node = Node(load(dev=True, flags=flags, environ={}))
    await node.start()
    samples: list[Sample] = []
    baseline: Counter[str] | None = None
    snap0: tracemalloc.Snapshot | None = None
    try:
        print(HEADER, flush=True)
        for cycle in range(args.cycles):
            rooms = [f"leak-{args.room_prefix}{0 if args.same_rooms else cycle}-{r}" for r in range(args.rooms)]
            client = await _client(node.url, rooms, args)
            await _settle(node, SETTLE_TIMEOUT_S, rooms_too=args.empty_timeout is not None)
            await asyncio.sleep(args.pause)
            rss = rss_bytes()
            before = malloc_in_use()
            cyclic, cyclic_types = collect_cyclic() if not args.no_gc else (0, Counter())
            after = malloc_in_use()
            types, session = live_counts()
            sample = Sample(
                cycle=cycle, client=client, rss_mb=rss / 2**20, rss_after_gc_mb=rss_bytes() / 2**20,
                malloc_mb=after / 2**20 if after is not None else None,
                cycle_held_mb=(before - after) / 2**20 if before is not None and after is not None else None,
                cyclic=cyclic,
                cyclic_types=dict(cyclic_types.most_common(12)), session=session, tables=node_tables(node))
            if baseline is None:
                baseline = types
            else:
                grown = Counter({k: v - baseline.get(k, 0) for k, v in types.items() if v > baseline.get(k, 0)})
                sample.growers = dict(grown.most_common(10))
            if tracemalloc.is_tracing():
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)])
                if snap0 is None:
                    snap0 = snap
                else:
                    sample.traced = [str(d) for d in snap.compare_to(snap0, "lineno")[:args.top] if d.size_diff > 0]
            samples.append(sample)
            print(sample.line(), flush=True)
            if "error" in client:
                print(f"    client: {client['error']}", flush=True)
            for t in sample.traced:
                print("    " + t, flush=True)
    finally:
        await node.stop()
    return samples


def slope(values: list[float]) -> float:
    """Least-squares growth per cycle."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def summary(samples: list[Sample]) -> dict[str, Any]:
    tail = samples[1:]  # the first cycle warms caches up: the baseline
    last = samples[-1] if samples else None
    return {
        "cycles": len(samples),
        "rss_mb_per_cycle": round(slope([s.rss_mb for s in tail]), 3),
        "rss_after_gc_mb_per_cycle": round(slope([s.rss_after_gc_mb for s in tail]), 3),
        "malloc_mb_per_cycle": round(slope([s.malloc_mb or 0.0 for s in tail]), 3),
        "objects_per_cycle": round(slope([float(sum(s.growers.values())) for s in tail]), 1),
        "final_session": last.session if last else {},
        "final_tables": last.tables if last else {},
        "final_growers": last.growers if last else {},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.leakcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--rooms", type=int, default=4, help="rooms per cycle")
    ap.add_argument("--publishers", type=int, default=2, help="WHIP sessions per room")
    ap.add_argument("--viewers", type=int, default=2, help="WHEP sessions per publisher")
    ap.add_argument("--seconds", type=float, default=2.0, help="media time per cycle")
    ap.add_argument("--same-rooms", action="store_true", help="reuse the same room names every cycle")
    ap.add_argument("--empty-timeout", type=int, default=1,
                    help="rooms' empty_timeout_s (the check waits for them to close); -1: the node default, no wait")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between settling and measuring")
    ap.add_argument("--no-gc", action="store_true",
                    help="no full collection before measuring (as in production: what cycles keep is counted live)")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations (slower) and list growth by line")
    ap.add_argument("--top", type=int, default=8, help="lines of tracemalloc growth shown")
    ap.add_argument("--room-prefix", default="", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write every sample and the summary here")
    args = ap.parse_args(argv)
    if args.empty_timeout is not None and args.empty_timeout < 0:
        args.empty_timeout = None
    if not 1 <= args.cycles <= 1000:
        ap.error("--cycles must be in 1..1000")
    if args.tracemalloc:
        tracemalloc.start(1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    samples = asyncio.run(run(args))
    result = summary(samples)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("final_")}))
    print("final session objects:", json.dumps(result["final_session"]))
    print("final tables:", json.dumps(result["final_tables"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": result, "samples": [s.__dict__ for s in samples]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CycleResult", "main", "node_tables", "live_counts", "collect_cyclic", "rss_bytes"]
