"""Issue 11, defects 4, 5, 10 (the WebSocket parts): the signaling socket against clients that
flood, never read, never join, never answer pings or do not mask, on a real node process with a
WHIP publisher and a WHEP subscriber whose media must keep flowing across each attack."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.ws_support import (
    OP_TEXT,
    RawWs,
    closed,
    dropped,
    frame,
    healthz_s,
    in_thread,
    live_node,
    metrics,
    rpc,
    rtc_path,
    vm_rss_bytes,
)

pytestmark = pytest.mark.timeout(150)
log = logging.getLogger(__name__)
MiB = 1 << 20
SEND_QUEUE = 64 * 1024


def _flood(ws: RawWs, payload: bytes, seconds: float, stop: threading.Event) -> tuple[int, str]:
    """Send ``payload`` frames as fast as the socket takes them, reading nothing, until told to
    stop, the node resets the connection or takes nothing for 10 s, or ``seconds`` pass."""
    batch = frame(OP_TEXT, payload) * 256
    ws.sock.settimeout(10.0)
    sent = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if stop.is_set():
                return sent, "stopped"
            ws.sock.sendall(batch)
            sent += 256
    except TimeoutError:
        return sent, "blocked"
    except ConnectionError:
        return sent, "reset"
    return sent, "time"


@dataclass
class Watch:
    """The node while a flood runs: its peak VmRSS and how long ``/healthz`` took."""

    url: str
    pid: int
    rss_peak: int = 0
    health: list[float] = field(default_factory=list)

    async def during(self, flood: asyncio.Future[tuple[int, str]], stop_when_closed: float | None = None,
                     stop: threading.Event | None = None) -> tuple[int, str]:
        while not flood.done():
            self.rss_peak = max(self.rss_peak, vm_rss_bytes(self.pid))
            self.health.append(await healthz_s(self.url))
            if stop is not None and closed(await metrics(self.url), "send_queue_full") > (stop_when_closed or 0):
                stop.set()  # the node gave up on this client: now read what it sent, to the close
            await asyncio.sleep(0.3)
        return await flood

    @property
    def median(self) -> float:
        return sorted(self.health)[len(self.health) // 2]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_flooding_client_that_never_reads_is_bounded_then_closed(tmp_path: Path, workers: int) -> None:
    # a higher rate than the default, so that the replies the node owes fill the kernel's buffers
    # and the send queue within seconds (at 50 a second that takes minutes); with 2 workers, the
    # client talks to the front, which passes frames on with backpressure and queues nothing
    async with live_node(
        tmp_path, "flood-1", workers=workers, signaling_send_queue_bytes=SEND_QUEUE, signaling_frames_per_s=1000
    ) as live:
        url, pid = live.node.url, live.node.pid
        # publish-only: no subscriber offer that, unanswered, would end the session first
        path = rtc_path("flood-1", "mallory", ("room:join", "room:publish"))
        ws = await in_thread(lambda: RawWs.connect(url, path, rcvbuf=4096))
        ws.send_text(rpc("join", rid=1))
        joined = await in_thread(ws.recv_json)
        assert joined["id"] == 1 and "result" in joined, joined
        rss_before = vm_rss_bytes(pid)
        log_lines_before = len(live.node.stderr().splitlines())
        before = await metrics(url)
        frames_before = live.frames()
        watch = Watch(url, pid, rss_before)

        # 1. notifications at wire speed for 8 s: nothing is owed, the socket stays, drops are counted
        no_stop = threading.Event()
        sent, how = await watch.during(asyncio.ensure_future(in_thread(_flood, ws, rpc("ping"), 8.0, no_stop)))
        mid = await metrics(url)
        log_lines = len(live.node.stderr().splitlines()) - log_lines_before
        log.info(f"notification flood: {sent} frames in 8 s, RSS {rss_before / MiB:.1f} -> peak {watch.rss_peak / MiB:.1f} "
              f"MiB, healthz max {max(watch.health):.3f} s median {watch.median:.3f} s, "
              f"{dropped(mid) - dropped(before):.0f} dropped, {log_lines} log lines")
        assert how == "time", (sent, how)
        assert dropped(mid) - dropped(before) > 10_000, (before, mid)
        assert live.frames() > frames_before
        await live.still_flowing()

        # 2. requests at wire speed: their replies pile up unread until the node closes the socket
        stop = threading.Event()
        flood = asyncio.ensure_future(in_thread(_flood, ws, rpc("ping", rid="x" * 200), 60.0, stop))
        sent, how = await watch.during(flood, closed(before, "send_queue_full"), stop)
        code, _, _ = await in_thread(ws.until_close, 30.0)
        ws.close()
        after = await metrics(url)
        log_lines = len(live.node.stderr().splitlines()) - log_lines_before
        growth = watch.rss_peak - rss_before
        log.info(f"request flood: {sent} frames ({how}), RSS peak {watch.rss_peak / MiB:.1f} MiB, "
              f"healthz max {max(watch.health):.3f} s, {dropped(after) - dropped(before):.0f} dropped, {log_lines} log lines")
        assert how == "stopped", f"{how}: the node took {sent} frames from a client that reads nothing"
        assert code == 1008, code  # policy violation: the send queue is full
        assert closed(after, "send_queue_full") == closed(before, "send_queue_full") + 1
        assert growth < 60 * MiB, f"the node grew by {growth / MiB:.0f} MiB"
        assert log_lines < 40, live.node.tail(60)
        assert max(watch.health) < 2.5 and watch.median < 0.5, watch.health
        await live.still_flowing()
        assert (await healthz_s(url)) < 2.0


async def test_a_socket_that_never_joins_or_never_pongs_is_closed(tmp_path: Path) -> None:
    join_s, heartbeat_s = 2.0, 1.0
    async with live_node(tmp_path, "idle-1", signaling_join_timeout_s=join_s, signaling_heartbeat_s=heartbeat_s) as live:
        url = live.node.url
        before = await metrics(url)
        # never joins (answers the node's pings): an error frame that says why, then 1008
        lazy = await in_thread(lambda: RawWs.connect(url, rtc_path("idle-1", "lazy")))
        start = time.monotonic()
        code, texts, _ = await in_thread(lambda: lazy.until_close(30.0, pong=True))
        waited = time.monotonic() - start
        lazy.close()
        assert code == 1008, (code, texts)
        assert 1.5 < waited < 15, waited
        (err,) = [t for t in texts if "error" in t]
        assert err["id"] is None and err["error"]["data"]["code"] == "bad_request" and err["error"]["data"]["status"] == 400
        assert "join" in err["error"]["data"]["detail"]

        # joined, then silent and deaf to pings: dropped after the unanswered ping
        deaf = await in_thread(lambda: RawWs.connect(url, rtc_path("idle-1", "deaf")))
        deaf.send_text(rpc("join", rid=1))
        assert "result" in await in_thread(deaf.recv_json)
        start = time.monotonic()
        code, _, pings = await in_thread(deaf.until_close, 30.0)
        waited = time.monotonic() - start
        deaf.close()
        assert pings >= 1 and waited < 15, (pings, waited)
        assert code in (None, 1006), code  # the connection is dropped, no close handshake with a dead peer

        # a joined client that answers pings (aiohttp does) stays, well past both deadlines
        async with aiohttp.ClientSession() as http:
            ws_url = url.replace("http://", "ws://") + rtc_path("idle-1", "alive")
            async with http.ws_connect(ws_url, autoping=True) as ws:
                await ws.send_str(rpc("join", rid=1).decode())
                assert json.loads((await ws.receive(timeout=10)).data)["id"] == 1
                end = time.monotonic() + 3 * join_s
                while (left := end - time.monotonic()) > 0:  # receiving, so that pings are answered
                    try:
                        msg = await ws.receive(timeout=left)
                    except TimeoutError:
                        break
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg
                await ws.send_str(rpc("ping", rid=2).decode())
                while True:
                    msg = await ws.receive(timeout=10)
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg
                    if json.loads(msg.data).get("id") == 2:
                        break
        after = await metrics(url)
        assert closed(after, "join_timeout") - closed(before, "join_timeout") == 1
        assert closed(after, "no_pong") - closed(before, "no_pong") == 1
        await live.still_flowing()


async def test_unmasked_client_frames_are_refused_with_1002(tmp_path: Path) -> None:
    async with live_node(tmp_path, "mask-1") as live:
        url = live.node.url
        before = await metrics(url)
        # after a good join (masked), one unmasked request
        ws = await in_thread(lambda: RawWs.connect(url, rtc_path("mask-1", "bare")))
        ws.send_text(rpc("join", rid=1))
        assert "result" in await in_thread(ws.recv_json)
        ws.send_text(rpc("ping", rid=2), mask=False)
        code, texts, _ = await in_thread(ws.until_close, 15.0)
        ws.close()
        assert code == 1002, code
        assert not [t for t in texts if t.get("id") == 2], texts  # never handled
        # unmasked from the first frame, in the same write as the upgrade request
        early = frame(OP_TEXT, rpc("join", rid=1), mask=False)
        ws = await in_thread(lambda: RawWs.connect(url, rtc_path("mask-1", "bare2"), extra=early))
        code, texts, _ = await in_thread(ws.until_close, 15.0)
        ws.close()
        assert code == 1002 and not texts, (code, texts)
        # a masked client is unaffected
        ws = await in_thread(lambda: RawWs.connect(url, rtc_path("mask-1", "masked")))
        ws.send_text(rpc("join", rid=1))
        assert "result" in await in_thread(ws.recv_json)
        ws.close()
        after = await metrics(url)
        assert closed(after, "protocol_error") - closed(before, "protocol_error") == 2
        await live.still_flowing()


async def test_notifications_never_get_replies_even_over_the_rate(tmp_path: Path) -> None:
    async with live_node(tmp_path, "notif-1", signaling_frames_per_s=50) as live:
        url = live.node.url
        before = await metrics(url)
        ws = await in_thread(lambda: RawWs.connect(url, rtc_path("notif-1", "chatty")))
        ws.send_text(rpc("join", rid=1))
        assert "result" in await in_thread(ws.recv_json)
        # 300 notifications at once (valid, unknown method, bad params): 250 over the rate
        burst = b"".join(
            frame(OP_TEXT, rpc(m, p)) for _ in range(100) for m, p in (("ping", {}), ("nope", {}), ("mute", []))
        )
        ws.sock.sendall(burst)
        await asyncio.sleep(1.5)  # a fresh one-second window
        ws.send_text(rpc("ping", rid=2))
        ws.sock.settimeout(10)
        replies: list[dict[str, object]] = []
        while True:
            got = await in_thread(ws.recv_json)
            if "id" in got:
                replies.append(got)
            if got.get("id") == 2:
                break
        assert [r["id"] for r in replies] == [2], replies  # nothing answered the notifications
        # requests over the rate are told (with their id); none is handled
        ws.sock.sendall(b"".join(frame(OP_TEXT, rpc("ping", rid=100 + i)) for i in range(80)))
        answered: dict[int, str] = {}
        while len(answered) < 80:
            got = await in_thread(ws.recv_json)
            if isinstance(got.get("id"), int) and got["id"] >= 100:
                answered[got["id"]] = "result" if "result" in got else got["error"]["data"]["code"]
        assert sorted(set(answered.values())) == ["rate_limited", "result"], answered
        assert sum(v == "result" for v in answered.values()) <= 50
        ws.close()
        after = await metrics(url)
        assert dropped(after) - dropped(before) >= 250 + 30
        await live.still_flowing()


async def test_through_a_multi_worker_front_the_same_closes_reach_the_client(tmp_path: Path) -> None:
    async with live_node(tmp_path, "front-1", workers=2, signaling_join_timeout_s=2.0) as live:
        url = live.node.url
        # the front itself refuses an unmasked frame
        ws = await in_thread(lambda: RawWs.connect(url, rtc_path("front-1", "bare")))
        ws.send_text(rpc("join", rid=1))
        assert "result" in await in_thread(ws.recv_json)
        ws.send_text(rpc("ping", rid=2), mask=False)
        code, texts, _ = await in_thread(ws.until_close, 15.0)
        ws.close()
        assert code == 1002 and not [t for t in texts if t.get("id") == 2], (code, texts)
        # the worker's join deadline comes through the front: its error frame, then 1008
        lazy = await in_thread(lambda: RawWs.connect(url, rtc_path("front-1", "lazy")))
        code, texts, _ = await in_thread(lambda: lazy.until_close(30.0, pong=True))
        lazy.close()
        assert code == 1008 and [t["error"]["data"]["code"] for t in texts if "error" in t] == ["bad_request"]
        await live.still_flowing()
