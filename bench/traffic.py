"""SRTP traffic for the bench: a paced source and a set of verifying sinks (127.0.0.1 only).

``python -m bench.traffic source --port P --key HEX --count N [--pps R] [--seconds S] [--wait-go]``
    sends N synthetic RTP packets (see ``bench.packet``), each stamped with its send time and
    SRTP-protected once, at R packets/s (0: as fast as the kernel takes them), then prints JSON.
    With ``--wait-go`` it prints ``READY <local port>`` first and starts on a line from stdin.
``python -m bench.traffic source --whip URL --token T ...``
    publishes one VP8 video SSRC to an SFU node over WHIP (ICE + DTLS-SRTP, ``bench.session``) and
    sends the same stream there with the DTLS-derived key: every payload then starts with a VP8
    descriptor, the first packet and one every ``--keyframe-s`` seconds marked as a keyframe.
``python -m bench.traffic sink --key HEX [--key HEX ...] --expect N [--verify-every V]``
    opens one UDP socket per key, prints ``READY p1,p2,...``, receives with recvmmsg, follows the
    RTP sequence, and for every V-th packet unprotects it, checks every payload byte and records
    the one-way latency; prints JSON when each socket got N packets, after ``--idle-ms`` of silence,
    after ``--seconds`` or on SIGTERM.
``python -m bench.traffic sink --whep URL --token T [--whep URL --token T ...] ...``
    one WHEP subscription per pair instead, then the same loop; the node rewrites SSRC, sequence
    and timestamp, so continuity is followed on the node's sequence and each sink learns the
    offset between it and the sequence in the payload (which must then stay constant).  RTCP
    (the node's sender reports) and STUN (consent responses) are skipped, never counted.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.mmsg import Ring, sockaddr_in
from bench.packet import (
    MAGIC,
    PAYLOAD_TYPE,
    RTP_HEADER_LEN,
    STAMP_LEN,
    TWCC_BLOCK,
    TWCC_BLOCK_LEN,
    TWCC_EXT_ID,
    TWCC_SEQ_AT,
    VP8_DESCRIPTOR,
    VP8_INTERFRAME,
    VP8_KEYFRAME,
    FillerTable,
    stamp_offset,
)
from bench.proc import Deadline, announce_ready, emit_json, self_cpu_seconds
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key
from bench.stats import SeqTracker, latency_summary_ms

HOST = "127.0.0.1"
SOCKET_BUFFER = 8 << 20
#: A paced source sends a burst every ~1 ms rather than one packet at a time (syscall cost).
PACING_TICK_S = 0.001
#: Session mode: an ICE consent check this often (the node expires sessions after 30 s without).
KEEPALIVE_S = 5.0
#: How long a ``--wait-go`` source waits for its go line.
GO_TIMEOUT_S = 60.0
_STAMP = struct.Struct("!IIQ")
_VP8_STAMP = struct.Struct("!BBIIQ")  # VP8 descriptor, payload header byte 0, then the stamp
_SEQ = struct.Struct("!H")
_TS = struct.Struct("!I")
_SSRC = struct.Struct("!I")

Keepalive = Callable[[], None]


def open_udp(port: int = 0, blocking: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((HOST, port))
    sock.setblocking(blocking)
    return sock


@dataclass(frozen=True)
class SourceConfig:
    count: int
    pps: float  # 0: as fast as allowed
    seconds: float
    size: int = 1200
    batch: int = 32
    ssrc: int = 0x1EE7B0B0
    vp8: bool = False  # payloads start with a VP8 descriptor (streams through the SFU node)
    keyframe_s: float = 2.0  # vp8: a keyframe first and then this often
    twcc: bool = False  # a transport-wide sequence number extension on every packet

    def __post_init__(self) -> None:
        if not 0 < self.count <= 100_000_000:
            raise ValueError(f"count must be 1..1e8, got {self.count}")
        if self.pps < 0:
            raise ValueError(f"pps must be >= 0, got {self.pps}")
        low = stamp_offset(self.vp8, self.twcc) + STAMP_LEN
        if not low <= self.size <= 1400:
            raise ValueError(f"size must be {low}..1400, got {self.size}")
        if not 0 < self.batch <= 256:
            raise ValueError(f"batch must be 1..256, got {self.batch}")
        if self.keyframe_s <= 0:
            raise ValueError(f"keyframe_s must be > 0, got {self.keyframe_s}")


@dataclass
class SourceLink:
    """Where the source's packets go and how: its socket, the forwarder's address, its SRTP key."""

    sock: socket.socket
    dest: tuple[str, int]
    key: Key
    keepalive: Keepalive | None = None  # called every KEEPALIVE_S while sending

    def __post_init__(self) -> None:
        if not 0 < self.dest[1] < 65536:
            raise ValueError(f"port out of range: {self.dest[1]}")


def run_source(cfg: SourceConfig, link: SourceLink) -> dict[str, Any]:
    """Send ``cfg.count`` packets (or until ``cfg.seconds``) and return the source's stats."""
    deadline = Deadline(cfg.seconds)
    session = InplaceSession(link.key, outbound=True)
    ring = Ring(cfg.batch, dests=[sockaddr_in(*link.dest)])
    stamp_at = stamp_offset(cfg.vp8, cfg.twcc)
    payload_at = stamp_offset(False, cfg.twcc)  # after the header (and the extension block)
    fillers = FillerTable(cfg.size, stamp_at)
    view = ring.view
    for j in range(cfg.batch):
        off = j * SLOT_SIZE
        view[off] = 0x90 if cfg.twcc else 0x80
        view[off + 1] = PAYLOAD_TYPE
        _SSRC.pack_into(view, off + 8, cfg.ssrc)
        if cfg.twcc:
            view[off + RTP_HEADER_LEN : off + RTP_HEADER_LEN + TWCC_BLOCK_LEN] = TWCC_BLOCK
    link.sock.setblocking(True)
    fd = link.sock.fileno()
    cpu0 = self_cpu_seconds()
    t0 = time.monotonic()
    sent = refused = keyframes = 0
    next_key = t0 if cfg.vp8 else float("inf")
    next_keepalive = t0 + KEEPALIVE_S if link.keepalive is not None else float("inf")
    burst = max(1, min(cfg.batch, int(cfg.pps * PACING_TICK_S)))
    filler_at = stamp_at + STAMP_LEN
    end = filler_at + fillers.length
    while sent < cfg.count and not deadline.passed():
        k = min(cfg.batch, cfg.count - sent)
        now = time.monotonic()
        if cfg.pps > 0:
            due = int((now - t0) * cfg.pps) - sent
            if due < min(burst, k):  # send in bursts of ~1 ms worth, not packet by packet
                time.sleep((min(burst, k) - due) / cfg.pps)
                continue
            k = min(k, due)
        frame = VP8_INTERFRAME
        if now >= next_key:  # the first packet of this batch is marked as a keyframe
            frame = VP8_KEYFRAME
            next_key = now + cfg.keyframe_s
            keyframes += 1
        if now >= next_keepalive and link.keepalive is not None:
            link.keepalive()
            next_keepalive = now + KEEPALIVE_S
        now_ns = time.monotonic_ns()
        # every byte past the header is rewritten per packet: protect encrypts the slot in place
        if cfg.vp8:
            for j in range(k):
                seq = sent + j
                off = j * SLOT_SIZE
                _SEQ.pack_into(view, off + 2, seq & 0xFFFF)
                _TS.pack_into(view, off + 4, (seq * 90) & 0xFFFFFFFF)
                if cfg.twcc:
                    _SEQ.pack_into(view, off + TWCC_SEQ_AT, seq & 0xFFFF)
                _VP8_STAMP.pack_into(view, off + payload_at, VP8_DESCRIPTOR, frame, MAGIC, seq, now_ns)
                frame = VP8_INTERFRAME
                view[off + filler_at : off + end] = fillers.for_seq(seq)
                ring.set_length(j, session.protect(ring.ptrs[j], cfg.size))
        else:
            for j in range(k):
                seq = sent + j
                off = j * SLOT_SIZE
                _SEQ.pack_into(view, off + 2, seq & 0xFFFF)
                _TS.pack_into(view, off + 4, (seq * 90) & 0xFFFFFFFF)
                if cfg.twcc:
                    _SEQ.pack_into(view, off + TWCC_SEQ_AT, seq & 0xFFFF)
                _STAMP.pack_into(view, off + stamp_at, MAGIC, seq, now_ns)
                view[off + filler_at : off + end] = fillers.for_seq(seq)
                ring.set_length(j, session.protect(ring.ptrs[j], cfg.size))
        refused += ring.send(fd, k)
        sent += k
    wall = time.monotonic() - t0
    session.close()
    return {
        "role": "source",
        "sent": sent,
        "refused": refused,
        "keyframes": keyframes,
        "wall_s": round(wall, 6),
        "cpu_s": round(self_cpu_seconds() - cpu0, 6),
        "pps": round(sent / wall, 1) if wall > 0 else 0.0,
    }


@dataclass
class SinkLink:
    """One receiving socket and the SRTP key its packets arrive under."""

    sock: socket.socket
    key: Key
    keepalive: Keepalive | None = None


@dataclass
class SinkStream:
    """One sink socket with its SRTP session, sequence tracker and receive ring."""

    sock: socket.socket
    session: InplaceSession
    ring: Ring
    keepalive: Keepalive | None = None
    tracker: SeqTracker = field(default_factory=SeqTracker)
    #: header sequence minus payload sequence (mod 2^16): 0 for plain forwarders, learnt from the
    #: first verified packet (-1 until then) when the forwarder rewrites sequence numbers
    seq_offset: int = 0
    verified: int = 0
    corrupt: int = 0
    rejected: int = 0
    skipped: int = 0  # RTCP, STUN and anything else that is not RTP


@dataclass(frozen=True)
class SinkConfig:
    expect: int  # packets per socket after which the sink is done (0: no such bound)
    seconds: float
    idle_ms: int = 500
    verify_every: int = 1
    size: int = 1200
    batch: int = 64
    vp8: bool = False  # payloads carry the source's VP8 prefix
    seq_rewritten: bool = False  # the forwarder renumbers (the SFU node): learn the offset
    twcc: bool = False  # packets keep the source's transport-wide seq extension block

    def __post_init__(self) -> None:
        if self.verify_every < 1:
            raise ValueError(f"verify_every must be >= 1, got {self.verify_every}")
        if self.expect < 0:
            raise ValueError(f"expect must be >= 0, got {self.expect}")
        if self.size < stamp_offset(self.vp8, self.twcc) + STAMP_LEN:
            raise ValueError(f"size {self.size} is too small for the stamp")


class Sinks:
    """N receiving sockets (one per link); ``ports`` are their local ports."""

    def __init__(self, cfg: SinkConfig, links: list[SinkLink]) -> None:
        if not 0 < len(links) <= 64:
            raise ValueError(f"1..64 sink sockets, got {len(links)}")
        self.cfg = cfg
        self.streams = []
        for link in links:
            link.sock.setblocking(False)
            self.streams.append(SinkStream(link.sock, InplaceSession(link.key, outbound=False), Ring(cfg.batch),
                                           link.keepalive, seq_offset=-1 if cfg.seq_rewritten else 0))
        self.ports = [s.sock.getsockname()[1] for s in self.streams]
        self.latencies_us: list[float] = []
        self.stamp_at = stamp_offset(cfg.vp8, cfg.twcc)
        self.payload_at = stamp_offset(False, cfg.twcc)
        self.fillers = FillerTable(cfg.size, self.stamp_at)
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
                b0 = view[off]
                if b0 < 128 or b0 > 191 or 191 < view[off + 1] < 224:
                    stream.skipped += 1  # STUN, DTLS or RTCP (PT 192..223, RFC 5761)
                    continue
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
        stamp_at = self.stamp_at
        at = self.payload_at
        magic, seq, send_ns = _STAMP.unpack_from(view, off + stamp_at)
        start = off + stamp_at + STAMP_LEN
        offset = (seq16 - seq) & 0xFFFF
        if stream.seq_offset < 0 and magic == MAGIC:
            stream.seq_offset = offset
        if (
            magic != MAGIC
            or offset != stream.seq_offset
            or length != self.cfg.size
            or (self.cfg.vp8 and (view[off + at] != VP8_DESCRIPTOR or view[off + at + 1] > VP8_INTERFRAME))
            or view[start : off + length] != self.fillers.for_seq(seq)
        ):
            stream.corrupt += 1
            return
        stream.verified += 1
        self.latencies_us.append((recv_ns - send_ns) / 1000.0)

    def _done(self) -> bool:
        expect = self.cfg.expect
        return expect > 0 and all(s.tracker.received >= expect for s in self.streams)

    def _keepalive(self) -> None:
        for stream in self.streams:
            if stream.keepalive is not None:
                stream.keepalive()

    def run(self) -> dict[str, Any]:
        deadline = Deadline(self.cfg.seconds)
        selector = selectors.DefaultSelector()
        for stream in self.streams:
            selector.register(stream.sock, selectors.EVENT_READ, stream)
        cpu0 = self_cpu_seconds()
        last_rx = 0.0
        next_keepalive = time.monotonic() + KEEPALIVE_S
        reason = "seconds"
        while not deadline.passed():
            if self.stop_requested:
                reason = "signal"
                break
            if self._done():
                reason = "expected"
                break
            now = time.monotonic()
            if last_rx and (now - last_rx) * 1000 >= self.cfg.idle_ms:
                reason = "idle"
                break
            if now >= next_keepalive:
                self._keepalive()
                next_keepalive = now + KEEPALIVE_S
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
                "missing_at_gaps": s.tracker.missing_at_gap,
                "late": s.tracker.late,
                "verified": s.verified,
                "corrupt": s.corrupt,
                "rejected": s.rejected,
                "skipped": s.skipped,
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
            "gaps": sum(p["gaps"] for p in per),
            "late": sum(p["late"] for p in per),
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
    src = sub.add_parser("source", help="send SRTP packets to 127.0.0.1:PORT, or to a node over WHIP")
    src.add_argument("--port", type=int, help="the forwarder's port (pre-shared key mode)")
    src.add_argument("--key", type=Key.parse, help="the pre-shared SRTP key (with --port)")
    src.add_argument("--whip", help="publish to this WHIP URL instead (needs --token)")
    src.add_argument("--token", help="bearer token for --whip")
    src.add_argument("--count", type=int, required=True)
    src.add_argument("--pps", type=float, default=0.0, help="packets per second (0: as fast as allowed)")
    src.add_argument("--seconds", type=float, default=30.0, help="hard time bound")
    src.add_argument("--size", type=int, default=1200)
    src.add_argument("--batch", type=int, default=32)
    src.add_argument("--keyframe-s", type=float, default=2.0, help="--whip: seconds between keyframes")
    src.add_argument("--twcc", action="store_true",
                     help="carry a transport-wide seq extension (--whip: offered, so the node sends transport-cc feedback)")
    src.add_argument("--wait-go", action="store_true", help="print READY <port>, start on a stdin line")
    snk = sub.add_parser("sink", help="receive and verify on one socket per --key or per --whep")
    snk.add_argument("--key", type=Key.parse, action="append", default=[])
    snk.add_argument("--whep", action="append", default=[], help="subscribe over this WHEP URL (repeatable)")
    snk.add_argument("--token", action="append", default=[], help="bearer token, one per --whep")
    snk.add_argument("--expect", type=int, default=0, help="packets per socket, then stop (0: no bound)")
    snk.add_argument("--seconds", type=float, default=30.0, help="hard time bound")
    snk.add_argument("--idle-ms", type=int, default=500, help="stop after this much silence")
    snk.add_argument("--verify-every", type=int, default=1, help="decrypt and check every V-th packet")
    snk.add_argument("--size", type=int, default=1200)
    snk.add_argument("--twcc", action="store_true", help="the source's packets carry the transport-wide seq block")
    return parser


def _wait_go(timeout_s: float) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    ready = sel.select(timeout_s)
    sel.close()
    return bool(ready) and sys.stdin.readline().strip() == "go"


def _source_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bench.session import Role, SessionSpec, open_sessions

    vp8 = args.whip is not None
    cfg = SourceConfig(args.count, args.pps, args.seconds, args.size, args.batch, vp8=vp8,
                       keyframe_s=args.keyframe_s, twcc=args.twcc)
    if vp8:
        if not args.token or args.port is not None or args.key is not None:
            parser.error("--whip needs --token and excludes --port/--key")
        spec = SessionSpec(Role.PUBLISH, args.whip, args.token, video_ssrc=cfg.ssrc,
                           twcc_ext=TWCC_EXT_ID if cfg.twcc else 0)
        (sess,) = open_sessions([spec])
        link = SourceLink(sess.sock, sess.remote, sess.key, sess.keepalive)
    else:
        if args.port is None or args.key is None:
            parser.error("give --port and --key, or --whip and --token")
        link = SourceLink(open_udp(), (HOST, args.port), args.key)
    try:
        if args.wait_go:
            announce_ready(str(link.sock.getsockname()[1]))
            if not _wait_go(GO_TIMEOUT_S):
                return 3
        emit_json(run_source(cfg, link))
    finally:
        link.sock.close()
    return 0


def _sink_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bench.session import MediaSession, Role, SessionSpec, open_sessions

    sessions: list[MediaSession] = []
    if args.whep:
        if args.key or len(args.token) != len(args.whep):
            parser.error("one --token per --whep, and no --key with --whep")
        sessions = open_sessions([SessionSpec(Role.SUBSCRIBE, u, t) for u, t in zip(args.whep, args.token, strict=True)])
        links = [SinkLink(s.sock, s.key, s.keepalive) for s in sessions]
    elif args.key:
        links = [SinkLink(open_udp(blocking=False), key) for key in args.key]
    else:
        parser.error("give --key (one per socket) or --whep/--token pairs")
    whep = bool(sessions)
    cfg = SinkConfig(args.expect, args.seconds, args.idle_ms, args.verify_every, args.size, vp8=whep,
                     seq_rewritten=whep, twcc=args.twcc)
    sinks = Sinks(cfg, links)

    def on_term(signum: int, frame: Any) -> None:
        sinks.stop_requested = True

    signal.signal(signal.SIGTERM, on_term)
    announce_ready(",".join(str(p) for p in sinks.ports))
    try:
        emit_json(sinks.run())
    finally:
        sinks.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.role == "source":
        return _source_main(args, parser)
    return _sink_main(args, parser)


if __name__ == "__main__":
    sys.exit(main())
