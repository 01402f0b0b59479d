"""SRTP traffic for the bench: a paced source and a set of verifying sinks (127.0.0.1 only).

``python -m bench.traffic source --port P --key HEX --count N [--pps R] [--seconds S]``
    sends N synthetic RTP packets (see ``bench.packet``), each stamped with its send time and
    SRTP-protected once, at R packets/s (0: as fast as the kernel takes them), then prints JSON.
``python -m bench.traffic sink --key HEX [--key HEX ...] --expect N [--verify-every V]``
    opens one UDP socket per key, prints ``READY p1,p2,...``, receives with recvmmsg, follows the
    RTP sequence, and for every V-th packet unprotects it, checks every payload byte and records
    the one-way latency; prints JSON when each socket got N packets, after ``--idle-ms`` of silence,
    after ``--seconds`` or on SIGTERM.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.mmsg import Ring, sockaddr_in
from bench.packet import MAGIC, PAYLOAD_TYPE, RTP_HEADER_LEN, STAMP_LEN, FillerTable
from bench.proc import Deadline, announce_ready, emit_json, self_cpu_seconds
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key
from bench.stats import SeqTracker, latency_summary_ms

HOST = "127.0.0.1"
SOCKET_BUFFER = 8 << 20
#: A paced source sends a burst every ~1 ms rather than one packet at a time (syscall cost).
PACING_TICK_S = 0.001
_STAMP = struct.Struct("!IIQ")
_SEQ = struct.Struct("!H")
_TS = struct.Struct("!I")
_SSRC = struct.Struct("!I")


def open_udp(port: int = 0, blocking: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((HOST, port))
    sock.setblocking(blocking)
    return sock


@dataclass(frozen=True)
class SourceConfig:
    port: int
    key: Key
    count: int
    pps: float  # 0: as fast as allowed
    seconds: float
    size: int = 1200
    batch: int = 32
    ssrc: int = 0x1EE7B0B0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if not 0 < self.count <= 100_000_000:
            raise ValueError(f"count must be 1..1e8, got {self.count}")
        if self.pps < 0:
            raise ValueError(f"pps must be >= 0, got {self.pps}")
        if not RTP_HEADER_LEN + STAMP_LEN <= self.size <= 1400:
            raise ValueError(f"size must be {RTP_HEADER_LEN + STAMP_LEN}..1400, got {self.size}")
        if not 0 < self.batch <= 256:
            raise ValueError(f"batch must be 1..256, got {self.batch}")


def run_source(cfg: SourceConfig) -> dict[str, Any]:
    """Send ``cfg.count`` packets (or until ``cfg.seconds``) and return the source's stats."""
    deadline = Deadline(cfg.seconds)
    session = InplaceSession(cfg.key, outbound=True)
    ring = Ring(cfg.batch, dests=[sockaddr_in(HOST, cfg.port)])
    fillers = FillerTable(cfg.size)
    view = ring.view
    for j in range(cfg.batch):
        off = j * SLOT_SIZE
        view[off] = 0x80
        view[off + 1] = PAYLOAD_TYPE
        _SSRC.pack_into(view, off + 8, cfg.ssrc)
    sock = open_udp(blocking=True)
    fd = sock.fileno()
    cpu0 = self_cpu_seconds()
    t0 = time.monotonic()
    sent = refused = 0
    burst = max(1, min(cfg.batch, int(cfg.pps * PACING_TICK_S)))
    filler_at = RTP_HEADER_LEN + STAMP_LEN
    end = filler_at + fillers.length
    while sent < cfg.count and not deadline.passed():
        k = min(cfg.batch, cfg.count - sent)
        if cfg.pps > 0:
            due = int((time.monotonic() - t0) * cfg.pps) - sent
            if due < min(burst, k):  # send in bursts of ~1 ms worth, not packet by packet
                time.sleep((min(burst, k) - due) / cfg.pps)
                continue
            k = min(k, due)
        now_ns = time.monotonic_ns()
        for j in range(k):
            seq = sent + j
            off = j * SLOT_SIZE
            _SEQ.pack_into(view, off + 2, seq & 0xFFFF)
            _TS.pack_into(view, off + 4, (seq * 90) & 0xFFFFFFFF)
            _STAMP.pack_into(view, off + RTP_HEADER_LEN, MAGIC, seq, now_ns)
            view[off + filler_at : off + end] = fillers.for_seq(seq)
            ring.set_length(j, session.protect(ring.ptrs[j], cfg.size))
        refused += ring.send(fd, k)
        sent += k
    wall = time.monotonic() - t0
    sock.close()
    session.close()
    return {
        "role": "source",
        "sent": sent,
        "refused": refused,
        "wall_s": round(wall, 6),
        "cpu_s": round(self_cpu_seconds() - cpu0, 6),
        "pps": round(sent / wall, 1) if wall > 0 else 0.0,
    }


@dataclass
class SinkStream:
    """One sink socket with its SRTP session, sequence tracker and receive ring."""

    sock: socket.socket
    session: InplaceSession
    ring: Ring
    tracker: SeqTracker = field(default_factory=SeqTracker)
    verified: int = 0
    corrupt: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class SinkConfig:
    keys: list[Key]
    expect: int  # packets per socket after which the sink is done (0: no such bound)
    seconds: float
    idle_ms: int = 500
    verify_every: int = 1
    size: int = 1200
    batch: int = 64

    def __post_init__(self) -> None:
        if not 0 < len(self.keys) <= 64:
            raise ValueError(f"1..64 sink sockets, got {len(self.keys)}")
        if self.verify_every < 1:
            raise ValueError(f"verify_every must be >= 1, got {self.verify_every}")
        if self.expect < 0:
            raise ValueError(f"expect must be >= 0, got {self.expect}")


class Sinks:
    """N receiving sockets; ``ports`` are known once constructed."""

    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self.streams = [
            SinkStream(open_udp(blocking=False), InplaceSession(key, outbound=False), Ring(cfg.batch))
            for key in cfg.keys
        ]
        self.ports = [s.sock.getsockname()[1] for s in self.streams]
        self.latencies_us: list[float] = []
        self.fillers = FillerTable(cfg.size)
        self.stop_requested = False

    def _drain(self, stream: SinkStream) -> int:
        ring, tracker, view = stream.ring, stream.tracker, stream.ring.view
        every = self.cfg.verify_every
        total = 0
        while True:
            n = ring.recv(stream.sock.fileno(), self.cfg.batch)
            if n == 0:
                return total
            total += n
            recv_ns = time.monotonic_ns()
            nxt = tracker.next16()
            run = 0
            for i in range(n):
                off = i * SLOT_SIZE
                seq16 = (view[off + 2] << 8) | view[off + 3]
                if seq16 == nxt:
                    run += 1
                    nxt = (nxt + 1) & 0xFFFF
                    ext = tracker.extended + run
                else:
                    if run:
                        tracker.in_order(run)
                        run = 0
                    ext = tracker.see(seq16)
                    nxt = tracker.next16()
                if ext % every == 0:
                    self._verify(stream, i, off, seq16, recv_ns)
            if run:
                tracker.in_order(run)

    def _verify(self, stream: SinkStream, i: int, off: int, seq16: int, recv_ns: int) -> None:
        length = stream.session.unprotect(stream.ring.ptrs[i], stream.ring.length(i))
        if length < 0:
            stream.rejected += 1
            return
        view = stream.ring.view
        magic, seq, send_ns = _STAMP.unpack_from(view, off + RTP_HEADER_LEN)
        start = off + RTP_HEADER_LEN + STAMP_LEN
        if (
            magic != MAGIC
            or seq & 0xFFFF != seq16
            or length != self.cfg.size
            or view[start : off + length] != self.fillers.for_seq(seq)
        ):
            stream.corrupt += 1
            return
        stream.verified += 1
        self.latencies_us.append((recv_ns - send_ns) / 1000.0)

    def _done(self) -> bool:
        expect = self.cfg.expect
        return expect > 0 and all(s.tracker.received >= expect for s in self.streams)

    def run(self) -> dict[str, Any]:
        deadline = Deadline(self.cfg.seconds)
        selector = selectors.DefaultSelector()
        for stream in self.streams:
            selector.register(stream.sock, selectors.EVENT_READ, stream)
        cpu0 = self_cpu_seconds()
        last_rx = 0.0
        reason = "seconds"
        while not deadline.passed():
            if self.stop_requested:
                reason = "signal"
                break
            if self._done():
                reason = "expected"
                break
            if last_rx and (time.monotonic() - last_rx) * 1000 >= self.cfg.idle_ms:
                reason = "idle"
                break
            for key, _ in selector.select(timeout=0.02):
                if self._drain(key.data):
                    last_rx = time.monotonic()
        selector.close()
        return self.report(reason, self_cpu_seconds() - cpu0)

    def report(self, reason: str, cpu_s: float) -> dict[str, Any]:
        per = [
            {
                "port": port,
                "received": s.tracker.received,
                "gaps": s.tracker.gaps,
                "late": s.tracker.late,
                "verified": s.verified,
                "corrupt": s.corrupt,
                "rejected": s.rejected,
            }
            for port, s in zip(self.ports, self.streams, strict=True)
        ]
        return {
            "role": "sinks",
            "stop_reason": reason,
            "cpu_s": round(cpu_s, 6),
            "received": sum(p["received"] for p in per),
            "verified": sum(p["verified"] for p in per),
            "corrupt": sum(p["corrupt"] for p in per),
            "rejected": sum(p["rejected"] for p in per),
            "latency_ms": latency_summary_ms(self.latencies_us),
            "latency_samples": len(self.latencies_us),
            "sinks": per,
        }

    def close(self) -> None:
        for stream in self.streams:
            stream.sock.close()
            stream.session.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    src = sub.add_parser("source", help="send SRTP packets to 127.0.0.1:PORT")
    src.add_argument("--port", type=int, required=True)
    src.add_argument("--key", type=Key.parse, required=True)
    src.add_argument("--count", type=int, required=True)
    src.add_argument("--pps", type=float, default=0.0, help="packets per second (0: as fast as allowed)")
    src.add_argument("--seconds", type=float, default=30.0, help="hard time bound")
    src.add_argument("--size", type=int, default=1200)
    src.add_argument("--batch", type=int, default=32)
    snk = sub.add_parser("sink", help="receive and verify on one socket per --key")
    snk.add_argument("--key", type=Key.parse, action="append", required=True)
    snk.add_argument("--expect", type=int, default=0, help="packets per socket, then stop (0: no bound)")
    snk.add_argument("--seconds", type=float, default=30.0, help="hard time bound")
    snk.add_argument("--idle-ms", type=int, default=500, help="stop after this much silence")
    snk.add_argument("--verify-every", type=int, default=1, help="decrypt and check every V-th packet")
    snk.add_argument("--size", type=int, default=1200)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "source":
        cfg = SourceConfig(args.port, args.key, args.count, args.pps, args.seconds, args.size, args.batch)
        emit_json(run_source(cfg))
        return 0
    sinks = Sinks(SinkConfig(args.key, args.expect, args.seconds, args.idle_ms, args.verify_every, args.size))

    def on_term(signum: int, frame: Any) -> None:
        sinks.stop_requested = True

    signal.signal(signal.SIGTERM, on_term)
    announce_ready(",".join(str(p) for p in sinks.ports))
    try:
        emit_json(sinks.run())
    finally:
        sinks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
