"""The bare-Python baseline: the fastest plain uvloop forwarding loop, with none of the SFU's logic.

receive -> srtp_unprotect in place -> for each destination: copy, srtp_protect in place with that
destination's own session, send.  ``loop.add_reader`` wakes it; each wakeup handles at most
``--budget`` packets and then yields.  ``--io mmsg`` (default) batches with recvmmsg/sendmmsg
through cffi's ABI mode; ``--io plain`` uses ``sock.recv_into`` a preallocated buffer and
``sock.sendto``.  libsrtp is called through pylibsrtp's own cffi ``lib`` (the same code the C
baseline dlopens).

usage: python -m bench.baseline --in-key HEX --dest PORT:HEX [--dest ...] [--port P]
                                [--seconds S] [--max-packets N] [--idle-ms M]
Prints ``READY <port>`` once listening and one JSON line of stats when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import uvloop
from pylibsrtp._binding import ffi, lib

from bench.mmsg import Ring, sockaddr_in
from bench.proc import announce_ready, emit_json
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key
from sfu.transport.mmsg import MAX_VLEN

HOST = "127.0.0.1"
SOCKET_BUFFER = 4 << 20


@dataclass(frozen=True)
class Dest:
    port: int
    key: Key

    @classmethod
    def parse(cls, text: str) -> Dest:
        port, sep, key = text.partition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"destination must be PORT:KEYHEX, got {text!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"destination port out of range: {port}")
        return cls(int(port), Key.parse(key))


@dataclass(frozen=True)
class BaselineConfig:
    in_key: Key
    dests: list[Dest]
    port: int = 0
    seconds: float = 10.0
    max_packets: int = 0  # 0: no bound but time
    idle_ms: int = 0  # 0: no idle stop
    io: str = "mmsg"
    batch: int = 32
    budget: int = 256  # packets per wakeup

    def __post_init__(self) -> None:
        if not self.dests:
            raise ValueError("at least one destination is needed")
        if self.io not in ("mmsg", "plain"):
            raise ValueError(f"io must be mmsg or plain, got {self.io!r}")
        if not 0 < self.seconds <= 3600:
            raise ValueError(f"seconds must be in (0, 3600], got {self.seconds}")
        if not 0 < self.batch * len(self.dests) <= MAX_VLEN:
            raise ValueError(f"batch x fan-out must be 1..{MAX_VLEN}")


class Forwarder:
    """The loop's state and counters; ``on_readable`` is the whole data path."""

    def __init__(self, cfg: BaselineConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        self.sock.bind((HOST, cfg.port))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.in_session = InplaceSession(cfg.in_key, outbound=False)
        self.out_sessions = [InplaceSession(d.key, outbound=True) for d in cfg.dests]
        self.in_ring = Ring(cfg.batch)
        self.out_ring = Ring(cfg.batch * len(cfg.dests), dests=[sockaddr_in(HOST, d.port) for d in cfg.dests])
        self.addrs = [(HOST, d.port) for d in cfg.dests]
        self.in_packets = self.out_packets = self.rejected = self.refused = self.wakeups = 0
        self.first_cpu = -1.0
        self.first_wall = 0.0
        self.last_rx = 0.0
        self.done: asyncio.Future[str] = loop.create_future()

    def finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)

    def on_readable(self) -> None:
        self.wakeups += 1
        if self.first_cpu < 0:
            self.first_cpu = time.process_time()
            self.first_wall = time.monotonic()
        if self.cfg.io == "mmsg":
            got = self._mmsg()
        else:
            got = self._plain()
        self.last_rx = time.monotonic()
        limit = self.cfg.max_packets
        if got and limit and self.in_packets >= limit:
            self.finish("max_packets")

    def _mmsg(self) -> int:
        fd = self.sock.fileno()
        in_ring, out_ring = self.in_ring, self.out_ring
        in_ptrs, out_ptrs = in_ring.ptrs, out_ring.ptrs
        in_msgs, out_iovs = in_ring.msgs, out_ring.iovs
        unprotect, protect, memmove = lib.srtp_unprotect, lib.srtp_protect, ffi.memmove
        in_ctx = self.in_session.ctx
        out_ctxs = [s.ctx for s in self.out_sessions]
        lenp = ffi.new("int *")
        olenp = ffi.new("int *")
        batch = self.cfg.batch
        total = 0
        while total < self.cfg.budget:
            n = in_ring.recv(fd, batch)
            if n == 0:
                break
            total += n
            k = 0
            for i in range(n):
                lenp[0] = in_msgs[i].msg_len
                src = in_ptrs[i]
                if unprotect(in_ctx, src, lenp):
                    self.rejected += 1
                    continue
                length = lenp[0]
                for ctx in out_ctxs:
                    dst = out_ptrs[k]
                    memmove(dst, src, length)
                    olenp[0] = length
                    protect(ctx, dst, olenp)
                    out_iovs[k].iov_len = olenp[0]
                    k += 1
            refused = out_ring.send(fd, k)
            self.refused += refused
            self.out_packets += k - refused
            if n < batch:
                break
        self.in_packets += total
        return total

    def _plain(self) -> int:
        sock = self.sock
        in_ptr = self.in_ring.ptrs[0]
        in_view = self.in_ring.view[:SLOT_SIZE]
        out_ptr = self.out_ring.ptrs[0]
        out_view = self.out_ring.view
        unprotect, protect, memmove = lib.srtp_unprotect, lib.srtp_protect, ffi.memmove
        in_ctx = self.in_session.ctx
        pairs = list(zip([s.ctx for s in self.out_sessions], self.addrs, strict=True))
        lenp = ffi.new("int *")
        total = 0
        while total < self.cfg.budget:
            try:
                n = sock.recv_into(in_view)
            except BlockingIOError:
                break
            total += 1
            lenp[0] = n
            if unprotect(in_ctx, in_ptr, lenp):
                self.rejected += 1
                continue
            length = lenp[0]
            for ctx, addr in pairs:
                memmove(out_ptr, in_ptr, length)
                lenp[0] = length
                protect(ctx, out_ptr, lenp)
                try:
                    sock.sendto(out_view[: lenp[0]], addr)
                    self.out_packets += 1
                except OSError:
                    self.refused += 1
        self.in_packets += total
        return total

    def _watch(self) -> None:
        if self.cfg.idle_ms and self.last_rx and (time.monotonic() - self.last_rx) * 1000 >= self.cfg.idle_ms:
            self.finish("idle")
            return
        self.loop.call_later(0.02, self._watch)

    async def run(self) -> dict[str, Any]:
        self.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.loop.call_later(self.cfg.seconds, self.finish, "seconds")
        self.loop.add_signal_handler(signal.SIGTERM, self.finish, "signal")
        self.loop.add_signal_handler(signal.SIGINT, self.finish, "signal")
        self._watch()
        announce_ready(str(self.port))
        reason = await self.done
        self.loop.remove_reader(self.sock.fileno())
        cpu = time.process_time()
        wall = time.monotonic()
        started = self.first_cpu >= 0
        return {
            "target": "baseline",
            "io": self.cfg.io,
            "in_packets": self.in_packets,
            "out_packets": self.out_packets,
            "rejected": self.rejected,
            "send_refused": self.refused,
            "wakeups": self.wakeups,
            "cpu_s_since_first_packet": round(cpu - self.first_cpu, 6) if started else 0.0,
            "wall_s_since_first_packet": round(wall - self.first_wall, 6) if started else 0.0,
            "stop_reason": reason,
            "fanout": len(self.cfg.dests),
        }

    def close(self) -> None:
        self.sock.close()
        self.in_session.close()
        for s in self.out_sessions:
            s.close()


async def _amain(cfg: BaselineConfig) -> dict[str, Any]:
    fwd = Forwarder(cfg, asyncio.get_running_loop())
    try:
        return await fwd.run()
    finally:
        fwd.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-key", type=Key.parse, required=True)
    parser.add_argument("--dest", type=Dest.parse, action="append", required=True, help="PORT:KEYHEX")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-packets", type=int, default=0)
    parser.add_argument("--idle-ms", type=int, default=0)
    parser.add_argument("--io", choices=("mmsg", "plain"), default="mmsg")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget", type=int, default=256)
    a = parser.parse_args(argv)
    cfg = BaselineConfig(a.in_key, a.dest, a.port, a.seconds, a.max_packets, a.idle_ms, a.io, a.batch, a.budget)
    emit_json(uvloop.run(_amain(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
