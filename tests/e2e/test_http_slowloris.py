"""Slowloris against a node (issue 11, defect 5): 1,500 connections that send the start of a
request head and then a byte a second, from many loopback addresses, while a WHIP publisher and a
WHEP viewer share a room.

* the 65th connection from one address is refused at once (``rate_limited``, 429);
* past the total cap (1,400 here) connections are refused at once (``service_unavailable``, 503),
  a legitimate one included, and the held ones stay at the cap;
* every held connection is closed by the header timeout (10 s here, counted from the head's first
  byte: trickling does not extend it), answered with a ``bad_request`` problem;
* ``/healthz`` answers fast while the attack is under the cap and again once it is closed, the
  viewer's frames keep growing throughout, and the node logs no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import selectors
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs, admin_token
from tests.e2e.rawhttp import exchange, open_partial, problem_code, request_bytes, split

HEADER_TIMEOUT_S = 10.0
PER_IP = 64
TOTAL = 1400
ROOM = "slowloris-1"
HEALTHZ = request_bytes("GET", "/healthz")
log = logging.getLogger(__name__)


@dataclass
class Held:
    sock: socket.socket
    opened_at: float
    outcome: str = ""  # "429", "503", "400" (header timeout), "closed"
    closed_at: float = 0.0


def _classify(data: bytes) -> str:
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode()
    return "closed"


def _open(port: int, sources: list[tuple[str, int]]) -> list[Held]:
    out = []
    for source, n in sources:
        for _ in range(n):
            out.append(Held(open_partial(port, source), time.monotonic()))
    return out


def _readable(held: list[Held], wait_s: float) -> list[Held]:
    sel = selectors.DefaultSelector()
    for h in held:
        sel.register(h.sock, selectors.EVENT_READ, h)
    try:
        return [key.data for key, _ in sel.select(wait_s)]
    finally:
        sel.close()


def _settle(held: list[Held], h: Held) -> None:
    try:
        data = h.sock.recv(65536)
    except OSError:
        data = b""
    h.outcome, h.closed_at = _classify(data), time.monotonic()
    h.sock.close()


def _watch(held: list[Held], deadline: float) -> None:
    """Until every connection is answered or closed (or ``deadline``), trickling a byte a second
    into the open ones, as a slowloris client does."""
    open_ = {id(h): h for h in held if not h.outcome}
    next_trickle = time.monotonic() + 1.0
    sel = selectors.DefaultSelector()
    for h in open_.values():
        sel.register(h.sock, selectors.EVENT_READ, h)
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                h = key.data
                sel.unregister(h.sock)
                _settle(held, h)
                open_.pop(id(h), None)
            if time.monotonic() >= next_trickle:
                next_trickle += 1.0
                for h in open_.values():
                    try:
                        h.sock.send(b"a")
                    except OSError:
                        pass
    finally:
        sel.close()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Proc]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    procs = Procs(tmp_path)
    env = {
        "LEVELCHAT_SFU_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "LEVELCHAT_SFU_HTTP_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "LEVELCHAT_SFU_HTTP_MAX_CONNECTIONS": str(TOTAL),
    }
    try:
        proc = procs.node("slowloris", None, env=env)
        await proc.wait_healthy()
        yield proc
    finally:
        procs.stop_all()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _healthz_s(port: int) -> float:
    reply = await exchange(port, [HEALTHZ], timeout_s=10)
    assert reply.status == 200, reply
    return reply.elapsed_s


async def test_slowloris_is_bounded_and_the_session_goes_on(node: Proc) -> None:
    port = int(node.url.rsplit(":", 1)[1])
    pub = WhipPublisher(node.url, ROOM, token(ROOM, "alice"), audio=False)
    viewer = WhepSubscriber(node.url, ROOM, token(ROOM, "viewer"), audio=False)
    held: list[Held] = []
    try:
        await pub.connect(timeout=15)
        status, body = await viewer.connect(timeout=15)
        assert status == 201, body
        await wait_for(lambda: viewer.frames["video"] >= 10, 20, "viewer frames before the attack")

        # one address: 64 are held, the 65th is refused at once
        one = await asyncio.to_thread(_open, port, [("127.0.0.250", PER_IP + 1)])
        held += one
        await wait_for(lambda: bool(_readable(one[-1:], 0)), 5, "the 65th connection answered")
        _settle(one, one[-1])
        assert one[-1].outcome == "429", one[-1]
        assert not _readable(one[:-1], 0.2), "the first 64 from one address must be held"

        # 936 more from 16 addresses: 1,000 held, under the total cap
        phase1 = await asyncio.to_thread(_open, port, [(f"127.0.1.{i}", 60 if i < 15 else 36) for i in range(16)])
        held += phase1
        fast = await _healthz_s(port)
        log.info("/healthz under 1,000 slow connections: %.3f s", fast)
        assert fast < 2.0, f"/healthz took {fast:.2f} s under 1,000 slow connections"

        # 500 more: the total cap holds; a legitimate connection is refused too
        phase2 = await asyncio.to_thread(_open, port, [(f"127.0.2.{i}", 60 if i < 8 else 20) for i in range(9)])
        held += phase2
        await asyncio.sleep(0.5)
        for h in _readable([h for h in held if not h.outcome], 0):
            _settle(held, h)
        early = [h.outcome for h in held if h.outcome not in ("", "429", "503")]
        assert not early, f"{len(early)} held connections closed before the cap was reached: too slow a machine?"
        assert sum(h.outcome == "503" for h in held) == len(held) - 1 - TOTAL, "the total cap must be exact"
        full = await exchange(port, [HEALTHZ], timeout_s=10)
        assert full.status == 503 and problem_code(full) == "service_unavailable", full
        assert full.headers.get("retry-after")

        # the header timeout closes every held connection, trickling or not
        frames = viewer.frames["video"]
        await asyncio.to_thread(_watch, held, time.monotonic() + HEADER_TIMEOUT_S + 30)
        assert all(h.outcome for h in held), f"{sum(not h.outcome for h in held)} connections still open"
        outcomes: dict[str, int] = {}
        for h in held:
            outcomes[h.outcome] = outcomes.get(h.outcome, 0) + 1
        attempted = len(held)
        assert attempted == PER_IP + 1 + 936 + 500
        assert outcomes.get("429") == 1, outcomes
        refused = outcomes.get("503", 0)
        timed_out = [h for h in held if h.outcome in ("400", "closed")]
        assert refused >= 1 and len(timed_out) + refused + 1 == attempted, outcomes
        assert len(timed_out) == TOTAL, outcomes
        assert outcomes.get("400", 0) >= len(timed_out) * 0.9, outcomes  # answered, mostly, not just dropped
        lives = sorted(h.closed_at - h.opened_at for h in timed_out)
        log.info("outcomes %s; held connections closed after %.2f to %.2f s", outcomes, lives[0], lives[-1])
        for lived in lives:
            assert HEADER_TIMEOUT_S - 1.0 <= lived <= HEADER_TIMEOUT_S + 25, f"held {lived:.1f} s"
        await wait_for(lambda: viewer.frames["video"] > frames + 10, 10, "frames during the attack")

        fast = await _healthz_s(port)
        log.info("/healthz after the attack: %.3f s", fast)
        assert fast < 2.0, f"/healthz took {fast:.2f} s after the attack"
        frames = viewer.frames["video"]
        await wait_for(lambda: viewer.frames["video"] > frames + 10, 10, "frames after the attack")
    finally:
        for h in held:
            h.sock.close()
        await viewer.close()
        await pub.close()
    stderr = node.stderr()
    assert "Traceback" not in stderr, node.tail()
    assert stderr.count("WARNING levelchat.http") <= 10, node.tail()


async def test_multi_worker_front_is_guarded(tmp_path: Path) -> None:
    """The front of a two-worker node runs the same server: per-address cap, header timeout,
    parser refusals as problems, split bodies read whole (and proxied to the room's worker)."""
    procs = Procs(tmp_path)
    env = {"LEVELCHAT_SFU_WORKERS": "2", "LEVELCHAT_SFU_HTTP_HEADER_TIMEOUT_S": "2",
           "LEVELCHAT_SFU_HTTP_MAX_CONNECTIONS_PER_IP": "4"}
    held: list[Held] = []
    try:
        front = procs.node("front", None, env=env)
        await front.wait_healthy(timeout_s=40)
        port = int(front.url.rsplit(":", 1)[1])
        held = await asyncio.to_thread(_open, port, [("127.0.3.1", 5)])
        await wait_for(lambda: bool(_readable(held[-1:], 0)), 5, "the 5th connection answered")
        _settle(held, held[-1])
        assert held[-1].outcome == "429", held[-1]
        await asyncio.to_thread(_watch, held, time.monotonic() + 20)
        assert [h.outcome for h in held[:-1]] == ["400"] * 4
        assert all(1.0 <= h.closed_at - h.opened_at <= 15 for h in held[:-1])

        junk = await exchange(port, [b"POST /v1/rooms HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"])
        assert junk.status == 400 and problem_code(junk) == "bad_request", junk
        body = b'{"room": "front-split-1", "pad": "' + b"p" * 3000 + b'"}'
        raw = request_bytes("POST", "/v1/rooms", body=body, headers=[
            ("Authorization", f"Bearer {admin_token()}"), ("Content-Type", "application/json")])
        reply = await exchange(port, split(raw, 1460), gap_s=0.05)
        assert reply.status == 201 and reply.json()["room"] == "front-split-1", reply
        assert "Traceback" not in front.stderr(), front.tail()
    finally:
        for h in held:
            h.sock.close()
        procs.stop_all()


async def test_control_plane_is_guarded(tmp_path: Path) -> None:
    """The control plane runs the same server: per-address cap, header timeout (trickling or
    not), and it keeps answering other clients meanwhile."""
    procs = Procs(tmp_path)
    env = {"LEVELCHAT_CONTROL_HTTP_HEADER_TIMEOUT_S": "2", "LEVELCHAT_CONTROL_HTTP_MAX_CONNECTIONS_PER_IP": "4"}
    held: list[Held] = []
    try:
        control = procs.control(env=env)
        await control.wait_healthy()
        port = int(control.url.rsplit(":", 1)[1])
        held = await asyncio.to_thread(_open, port, [("127.0.4.1", 5)])
        await wait_for(lambda: bool(_readable(held[-1:], 0)), 5, "the 5th connection answered")
        _settle(held, held[-1])
        assert held[-1].outcome == "429", held[-1]
        assert (await _healthz_s(port)) < 2.0  # another address is served meanwhile
        await asyncio.to_thread(_watch, held, time.monotonic() + 20)
        assert [h.outcome for h in held[:-1]] == ["400"] * 4
        assert all(1.0 <= h.closed_at - h.opened_at <= 15 for h in held[:-1])
        assert "Traceback" not in control.stderr(), control.tail()
    finally:
        for h in held:
            h.sock.close()
        procs.stop_all()
