"""``python -m bench.icetcp``: the node's out-packets per CPU-second to subscribers over ICE-TCP
against the same over UDP, in one run of one node process.

A lite publisher (UDP) sends paced VP8-shaped RTP; ``--subscribers`` lite viewers watch it, first
all over UDP, then all over TCP (``sfu.client.lite_tcp``), each for ``--seconds``.  For each phase:
the node's CPU time (``/proc``), the packets it forwarded (its ``/metrics``) and what the viewers
received (SRTP-authenticated).  Prints one JSON line.  Bounded: a fixed rate and duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.proc import cpu_seconds
from levelchat.tokens import ApiKey, mint
from sfu.client.lite import LiteEndpoint
from sfu.client.lite_tcp import TcpLiteEndpoint
from sfu.transport.certificate import Certificate

ROOM = "bench-icetcp"
SSRC = 0x1CE7C9
_FORWARDED = re.compile(r'^levelchat_sfu_packets_forwarded_total\{kind="video"\} (\S+)$', re.MULTILINE)


def _token(identity: str) -> str:
    return mint(ApiKey("devkey", "secret"), project="levelchat", now_s=time.time(), ttl_s=600, identity=identity,
                room=ROOM, scopes=("room:join", "room:publish", "room:subscribe"))


async def _post(http: aiohttp.ClientSession, url: str, identity: str, offer: str) -> str:
    headers = {"Authorization": f"Bearer {_token(identity)}", "Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers) as resp:
        text = await resp.text()
        if resp.status != 201:
            raise RuntimeError(f"{url}: {resp.status} {text[:200]}")
        return text


async def _forwarded(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(base + "/metrics") as resp:
        m = _FORWARDED.search(await resp.text())
    return float(m.group(1)) if m else 0.0


async def _send(pub: LiteEndpoint, pps: int, size: int, stop: asyncio.Event) -> None:
    seq, n = 0, 0
    per_tick = max(1, pps // 100)
    keyframe_every = max(1, pps // 2)  # twice a second: a new viewer starts at once
    while not stop.is_set():
        for _ in range(per_tick):
            payload = (b"\x10\x00\x9d\x01\x2a" if n % keyframe_every == 0 else b"\x10\x01") + bytes(size)
            header = bytes([0x80, 0x80 | 96]) + seq.to_bytes(2, "big") + (n * 300).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
            pub.send_rtp(header + payload)
            seq, n = (seq + 1) & 0xFFFF, n + 1
        await asyncio.sleep(0.01)


async def _phase(http: aiohttp.ClientSession, base: str, pid: int, kind: str, count: int, seconds: float) -> dict[str, Any]:
    got = [0]

    def on_rtp(view: memoryview, length: int) -> None:
        got[0] += 1

    viewers: list[LiteEndpoint] = []
    try:
        for i in range(count):
            cls = TcpLiteEndpoint if kind == "tcp" else LiteEndpoint
            v = cls(Certificate.generate(), on_rtp=on_rtp)
            viewers.append(v)
            await v.connect(await _post(http, f"{base}/whep/{ROOM}", f"{kind}-viewer-{i}", v.offer(send=False)), timeout_s=15)
        await asyncio.sleep(1.0)  # keyframe wait, setup settled
        fwd0, cpu0, got0, t0 = await _forwarded(http, base), cpu_seconds(pid), got[0], time.monotonic()
        await asyncio.sleep(seconds)
        fwd1, cpu1, got1, t1 = await _forwarded(http, base), cpu_seconds(pid), got[0], time.monotonic()
    finally:
        for v in viewers:
            v.close()
    cpu = cpu1 - cpu0
    out = fwd1 - fwd0
    return {
        "transport": kind, "subscribers": count, "seconds": round(t1 - t0, 2), "node_cpu_s": round(cpu, 3),
        "out_packets": int(out), "received": got1 - got0, "out_packets_per_cpu_s": round(out / cpu) if cpu > 0 else None,
    }


async def run(subscribers: int, seconds: float, pps: int, size: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "sfu", "--dev", "--http-port", "0", "--media-port", "0", "--tcp-port", "0",
            "--log-level", "WARNING"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        m = re.search(r"ready: (http://\S+)", line)
        if m is None:
            raise RuntimeError(f"the node did not get ready: {line!r}")
        base = m.group(1)
        pub = LiteEndpoint(Certificate.generate())
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            await pub.connect(await _post(http, f"{base}/whip/{ROOM}", "publisher", pub.offer(send=True, video_ssrc=SSRC)))
            sender = asyncio.create_task(_send(pub, pps, size, stop))
            try:
                phases = [await _phase(http, base, proc.pid, kind, subscribers, seconds) for kind in ("udp", "tcp")]
            finally:
                stop.set()
                await sender
                pub.close()
        return {"pps_in": pps, "size": size, "phases": phases}
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM would drain
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.icetcp", description=__doc__)
    p.add_argument("--subscribers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--pps", type=int, default=500, help="publisher packets per second")
    p.add_argument("--size", type=int, default=1000, help="payload bytes")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.subscribers, args.seconds, args.pps, args.size))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
