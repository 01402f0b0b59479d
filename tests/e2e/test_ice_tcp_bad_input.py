"""Bad input on the ICE-TCP port, against a real node process with a live UDP session (an aiortc
WHIP publisher and WHEP subscriber) whose received frames must keep growing across each attack:

* zero-length and oversized frames close the connection at once (``tcp_bad_frame``);
  garbage frames are dropped by the demux like stray datagrams, and a connection that never
  binds a session (garbage, a truncated frame, silence) is closed by the bind timeout;
* a TCP viewer that stops reading: its packets are dropped and counted (``tcp_congested``)
  while a TCP viewer beside it and the UDP viewer keep receiving;
* 2,000 connections from forty loopback addresses: the caps hold (total and per address), all
  are closed by the bind timeout, the node's memory grows by a bounded amount per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import socket
import struct
from pathlib import Path

import aiohttp
import pytest

from sfu.client.lite import LiteEndpoint
from sfu.client.lite_tcp import TcpLiteEndpoint, tcp_candidate
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.procs import admin_token
from tests.e2e.ws_support import Live, live_node, vm_rss_bytes

pytestmark = pytest.mark.timeout(240)
log = logging.getLogger(__name__)
MiB = 1 << 20
BIND_TIMEOUT_S = 2.0


async def media_metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(levelchat_sfu_\S+) (\S+)$", text, re.MULTILINE)}


def drops(m: dict[str, float], reason: str) -> float:
    return m.get(f'levelchat_sfu_packets_dropped_total{{reason="{reason}"}}', 0.0)


async def whep_answer(live: Live, identity: str, lite: LiteEndpoint) -> str:
    tok = admin_token("room:join", "room:subscribe", room=live.room, identity=identity)
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http, http.post(
        f"{live.node.url}/whep/{live.room}", data=lite.offer(send=False), headers=headers
    ) as resp:
        text = await resp.text()
        assert resp.status == 201, text
        return text


async def tcp_target(live: Live) -> tuple[str, int]:
    """The node's passive TCP candidate, read from a WHEP answer."""
    probe = LiteEndpoint(Certificate.generate())
    try:
        return tcp_candidate(await whep_answer(live, "probe", probe))
    finally:
        probe.close()


async def open_tcp(target: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, target)
    return sock


async def closed_by_node(sock: socket.socket, timeout_s: float) -> bool:
    """True when the node closes the connection within ``timeout_s`` (EOF or reset)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if not await loop.sock_recv(sock, 4096):
                        return True
                except ConnectionError:
                    return True
    except TimeoutError:
        return False


def framed(payload: bytes) -> bytes:
    return struct.pack("!H", len(payload)) + payload


async def test_bad_frames_close_or_are_dropped_and_media_keeps_flowing(tmp_path: Path) -> None:
    async with live_node(tmp_path, "tcp-bad", tcp_bind_timeout_s=BIND_TIMEOUT_S) as live:
        target = await tcp_target(live)
        before = await media_metrics(live.node.url)
        loop = asyncio.get_running_loop()
        # frames the node refuses outright: the connection goes at once
        for bad in (b"\x00\x00", b"\xff\xff" + bytes(64), struct.pack("!H", 2049) + bytes(2049)):
            sock = await open_tcp(target)
            await loop.sock_sendall(sock, bad)
            assert await closed_by_node(sock, BIND_TIMEOUT_S / 2 + 0.4), bad[:4]
            sock.close()
        # garbage in well-formed frames: dropped like stray datagrams; the connection binds no
        # session, so the bind timeout closes it (as a truncated frame and a silent connection)
        garbage = b"".join(
            framed(first + os.urandom(99)) for first in (b"\xff", b"\x00", b"\x80", b"\x16", b"\x41") for _ in range(20)
        )
        socks = [await open_tcp(target) for _ in range(3)]
        await loop.sock_sendall(socks[0], garbage)
        await loop.sock_sendall(socks[1], struct.pack("!H", 1000) + bytes(10))  # and never the rest
        await live.still_flowing()
        closed = await asyncio.gather(*(closed_by_node(s, BIND_TIMEOUT_S + 8) for s in socks))
        assert closed == [True, True, True]
        for s in socks:
            s.close()
        await live.still_flowing()
        after = await media_metrics(live.node.url)
        assert drops(after, "tcp_bad_frame") - drops(before, "tcp_bad_frame") == 3
        for reason in ("unknown_protocol", "stun_malformed", "srtp_unknown_address", "dtls_unknown_address"):
            assert drops(after, reason) - drops(before, reason) >= 20, reason
        assert (await media_metrics(live.node.url))["levelchat_sfu_tcp_connections"] == 0


class Count:
    def __init__(self) -> None:
        self.packets = 0

    def __call__(self, view: memoryview, length: int) -> None:
        self.packets += 1


async def test_a_stalled_tcp_viewer_is_dropped_for_alone(tmp_path: Path) -> None:
    async with live_node(tmp_path, "tcp-slow", tcp_send_buffer_bytes=8192) as live:
        stalled_got, steady_got = Count(), Count()
        stalled = TcpLiteEndpoint(Certificate.generate(), on_rtp=stalled_got)
        stalled.recv_buffer = 4096
        steady = TcpLiteEndpoint(Certificate.generate(), on_rtp=steady_got)
        try:
            await stalled.connect(await whep_answer(live, "stalled", stalled), timeout_s=20)
            await steady.connect(await whep_answer(live, "steady", steady), timeout_s=20)
            await wait_for(lambda: stalled_got.packets > 20 and steady_got.packets > 20, 30, "both TCP viewers receive")
            before = await media_metrics(live.node.url)
            stalled.stop_reading()

            async def congested() -> bool:
                return drops(await media_metrics(live.node.url), "tcp_congested") - drops(before, "tcp_congested") > 50

            for _ in range(300):
                if await congested():
                    break
                await asyncio.sleep(0.1)
            assert await congested(), "the stalled viewer's packets are dropped and counted"
            # and what the node holds for it stays within the bound (8192 bytes and one packet)
            for _ in range(10):
                m = await media_metrics(live.node.url)
                assert 0 < m["levelchat_sfu_tcp_queued_bytes"] <= 8192 + 2050, m["levelchat_sfu_tcp_queued_bytes"]
                await asyncio.sleep(0.3)
            assert drops(m, "tcp_congested") - drops(before, "tcp_congested") > 100
            # everyone else goes on: the UDP viewer and the other TCP viewer
            steady_before = steady_got.packets
            await live.still_flowing(more=40)
            await wait_for(lambda: steady_got.packets > steady_before + 100, 20, "the other TCP viewer keeps receiving")
            assert steady.srtp_failures == 0
        finally:
            stalled.close()
            steady.close()


async def connections_reach(url: str, value: int, timeout_s: float = 30.0) -> None:
    """The node's TCP connection gauge reaches ``value``."""
    seen = -1.0
    for _ in range(int(timeout_s * 10)):
        seen = (await media_metrics(url))["levelchat_sfu_tcp_connections"]
        if seen == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{seen} TCP connections, not {value}")


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


CONNECTIONS = 2000
SOURCES = [f"127.0.0.{i}" for i in range(2, 42)]  # 50 connections each, under the per-address cap


async def test_two_thousand_connections_are_capped_timed_out_and_cheap(tmp_path: Path) -> None:
    _raise_fd_limit(CONNECTIONS + 1024)
    settings = {"tcp_bind_timeout_s": 12.0, "tcp_max_connections": CONNECTIONS, "tcp_max_connections_per_ip": 60}
    async with live_node(tmp_path, "tcp-many", **settings) as live:
        target = await tcp_target(live)
        url, pid = live.node.url, live.node.pid
        rss_start = vm_rss_bytes(pid)
        socks: list[socket.socket] = []
        for batch in range(0, CONNECTIONS, 100):
            socks += await asyncio.gather(*(open_tcp(target, SOURCES[i % len(SOURCES)]) for i in range(batch, batch + 100)))
        await connections_reach(url, CONNECTIONS)
        rss_full = vm_rss_bytes(pid)
        # over the total cap: closed at once; over the per-address cap too
        extra = await open_tcp(target, "127.0.0.99")
        assert await closed_by_node(extra, 2.0)
        extra.close()
        await live.still_flowing()
        closed = await asyncio.gather(*(closed_by_node(s, 40) for s in socks))
        assert closed.count(True) == CONNECTIONS
        for s in socks:
            s.close()
        await connections_reach(url, 0)
        # per address: 60 held, the 61st closed at once (the total cap is free again)
        mine = [await open_tcp(target, "127.0.0.77") for _ in range(61)]
        refused = await asyncio.gather(*(closed_by_node(s, 1.0) for s in mine))
        assert refused.count(True) == 1, refused.count(True)
        for s in mine:
            s.close()
        await live.still_flowing()
        m = await media_metrics(url)
        assert m["levelchat_sfu_tcp_connections_refused_total"] == 2  # one over each cap
        assert m["levelchat_sfu_tcp_connections_timed_out_total"] >= CONNECTIONS
        per_connection = (rss_full - rss_start) / CONNECTIONS
        log.info(
            "%d TCP connections: node RSS %.1f -> %.1f MiB (%.1f KiB a connection)",
            CONNECTIONS, rss_start / MiB, rss_full / MiB, per_connection / 1024,
        )
        assert per_connection < 32 * 1024, f"{per_connection / 1024:.0f} KiB a connection"
