"""Sessions that never start media cost little, and give their memory back when they time out.

A real node process (``python -m sfu --dev``, as ``tests.e2e.procs`` starts it) gets ``SESSIONS``
WHIP publishers and WHEP viewers (``ROOMS`` rooms, one publisher and ``VIEWERS_PER_ROOM`` viewers
each) signaled over HTTP, none of which ever sends an ICE check.  Its resident memory
(``/proc/PID/status`` ``VmRSS``) and open descriptors are read before, once they are all created
(at most ``MAX_BYTES_PER_SESSION`` each) and after the node timed them out (``session_setup_timeout_s``
is short here): RSS back within ``RSS_RETURN`` of the start, the descriptors back where they were.  With
``max_participants`` at ``SESSIONS``, one more session is refused (``room/cap-denied``, 429).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp

from levelchat.tokens import mint
from sfu.client.lite import offer_sdp
from sfu.transport.ice import IceCredentials
from tests.e2e.procs import DEV_KEY, PROJECT, Procs, admin_token, call

ROOMS = 100
VIEWERS_PER_ROOM = 4
SESSIONS = ROOMS * (1 + VIEWERS_PER_ROOM)
MAX_BYTES_PER_SESSION = 100 * 1024
RSS_RETURN = 0.10
SETUP_TIMEOUT_S = 10  # creating the sessions takes ~2 s; they must all be there when measured
CONCURRENCY = 8
log = logging.getLogger(__name__)
FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _token(room: str, identity: str) -> str:
    return mint(DEV_KEY, project=PROJECT, now_s=time.time(), ttl_s=600, identity=identity, room=room,
                scopes=("room:join", "room:publish", "room:subscribe"))


async def _post(http: aiohttp.ClientSession, gate: asyncio.Semaphore, url: str, room: str, identity: str,
                publish: bool) -> int:
    offer = offer_sdp(IceCredentials.generate(), FINGERPRINT, send=publish,
                      video_ssrc=secrets.randbits(31) | 1 if publish else None,
                      audio_ssrc=secrets.randbits(31) | 2 if publish else None)
    async with gate, http.post(url, data=offer, headers={
            "Authorization": f"Bearer {_token(room, identity)}", "Content-Type": "application/sdp"}) as resp:
        await resp.read()
        return resp.status


async def _participants(url: str) -> int:
    reply = await call("GET", url + "/v1/rooms", token=admin_token())
    assert reply.status == 200, reply.body
    return sum(int(r.get("num_participants", 0)) for r in reply.body["rooms"])


async def _settled_rss(pid: int, seconds: float = 1.5) -> int:
    """The lowest RSS seen over ``seconds`` (the node's allocator settles after a burst)."""
    low = vm_rss(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        low = min(low, vm_rss(pid))
    return low


async def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.25)


async def test_sessions_without_media_are_small_and_given_back(procs: Procs) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    node = procs.node("footprint", None, env={
        "LEVELCHAT_SFU_RATE_LIMIT_IP_PER_S": "0",
        "LEVELCHAT_SFU_RATE_LIMIT_KEY_PER_S": "0",
        "LEVELCHAT_SFU_DEFAULT_EMPTY_TIMEOUT_S": "1",
        "LEVELCHAT_SFU_SESSION_SETUP_TIMEOUT_S": str(SETUP_TIMEOUT_S),
        "LEVELCHAT_SFU_MAX_PARTICIPANTS": str(SESSIONS),  # the node's session cap
    })
    await node.wait_healthy()
    pid = node.pid
    # one warm-up round: imports, caches and pools the first sessions fill are not per session
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        gate = asyncio.Semaphore(CONCURRENCY)
        assert await _post(http, gate, f"{node.url}/whip/warm", "warm", "pub", True) == 201
        assert await _post(http, gate, f"{node.url}/whep/warm", "warm", "view", False) == 201
        await _wait(lambda: _zero(node.url), SETUP_TIMEOUT_S + 20, "the warm-up sessions to time out")
        rss_start = await _settled_rss(pid)
        fds_start = open_fds(pid)

        started = time.monotonic()
        statuses = []
        for batch in range(0, ROOMS, 20):
            rooms = [f"fp-{r}" for r in range(batch, min(ROOMS, batch + 20))]
            statuses += await asyncio.gather(*(
                _post(http, gate, f"{node.url}/whip/{room}", room, "pub", True) for room in rooms))
            statuses += await asyncio.gather(*(
                _post(http, gate, f"{node.url}/whep/{room}", room, f"view-{v}", False)
                for room in rooms for v in range(VIEWERS_PER_ROOM)))
        created_s = time.monotonic() - started
        assert statuses.count(201) == SESSIONS, f"not all created: {sorted(set(statuses))}"
        rss_full = vm_rss(pid)
        per_session = (rss_full - rss_start) / SESSIONS
        fds_full = open_fds(pid)
        live = await _participants(node.url)
        assert live == SESSIONS, f"{SESSIONS - live} sessions timed out before the measure (created in {created_s:.1f} s)"
        # the node holds at most ``max_participants`` sessions: one more is refused
        assert await _post(http, gate, f"{node.url}/whip/fp-0", "fp-0", "one-too-many", True) == 429

    # gone by ``session_setup_timeout_s`` after they were made (and a housekeeping tick or two)
    await _wait(lambda: _zero(node.url), started + SETUP_TIMEOUT_S + 15 - time.monotonic(),
                f"the sessions that never did ICE to time out after {SETUP_TIMEOUT_S} s")
    # the node gives the heap back at its next housekeeping trim (sfu.memtrim: at most every 5 s)
    bound = rss_start * (1 + RSS_RETURN)
    deadline = time.monotonic() + 20
    rss_end = vm_rss(pid)
    while rss_end > bound and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        rss_end = min(rss_end, vm_rss(pid))
    fds_end = open_fds(pid)
    figures = (f"{SESSIONS} sessions: RSS {rss_start / 2**20:.1f} MiB -> {rss_full / 2**20:.1f} MiB "
               f"({per_session / 1024:.1f} KiB/session) -> {rss_end / 2**20:.1f} MiB after the timeout; "
               f"fds {fds_start} -> {fds_full} -> {fds_end}; created in {created_s:.1f} s")
    log.info("%s", figures)
    assert per_session <= MAX_BYTES_PER_SESSION, figures
    assert rss_end <= bound, figures
    assert fds_end <= fds_start, figures
    assert node.running, node.tail()


async def _zero(url: str) -> bool:
    return await _participants(url) == 0
