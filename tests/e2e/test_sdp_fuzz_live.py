"""Issue 11, fuzz stage: a few hundred mutated SDP offers sent live (the offline stage,
``tests/sfu/signaling/test_sdp_fuzz.py``, parses 10,000 of the same mutants in-process).

A real node process with a live session (aiortc WHIP publisher -> WHEP viewer) gets ``LIVE``
mutants of real offers (Chrome, Firefox, GStreamer, the lite client, Chrome's SSRC simulcast) as
WHIP and WHEP offers: every answer is ``201`` with an SDP answer, or a problem+json with a code
from the catalogue and the status the catalogue lists for it (never a 5xx, never a hang); a
session that was created is deleted again.  Afterwards the node is ready and the live session's
media keeps coming.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from levelchat.errors import CATALOGUE
from tests.e2e.procs import admin_token
from tests.e2e.ws_support import live_node, wait_for_ready
from tests.sfu.signaling.offers import chrome_ssrc_simulcast_offer, fixture, lite_offer
from tests.sfu.signaling.test_sdp_fuzz import _mutate

pytestmark = pytest.mark.timeout(180)
log = logging.getLogger(__name__)
ROOM = "sdp-fuzz-live"
SEED = 11_2026
LIVE = 400
PER_REQUEST_S = 10.0


async def _send(http: aiohttp.ClientSession, url: str, path: str, offer: bytes, tok: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"}
    async with http.post(url + path, data=offer, headers=headers) as resp:
        body = await resp.read()
        if resp.status == 201:
            assert body.startswith(b"v=0"), body[:200]
            async with http.delete(url + resp.headers["Location"], headers={"Authorization": f"Bearer {tok}"}) as gone:
                assert gone.status == 200, await gone.text()
            return 201, "created"
        assert resp.content_type == "application/problem+json", (resp.status, resp.content_type, body[:300])
        problem = await resp.json(content_type=None)
        code = problem.get("code")
        assert code in CATALOGUE, problem
        assert resp.status == CATALOGUE[code].status or CATALOGUE[code].status is None, (resp.status, problem)
        assert resp.status < 500, problem
        return resp.status, str(code)


async def test_mutated_offers_sent_live(tmp_path: Path) -> None:
    seeds = [fixture("chrome120"), fixture("firefox"), fixture("gstreamer"), lite_offer(), chrome_ssrc_simulcast_offer()]
    rng = random.Random(SEED)
    outcomes: Counter[tuple[int, str]] = Counter()
    async with live_node(tmp_path, ROOM) as live:
        await live.still_flowing()
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PER_REQUEST_S)) as http:
            for n in range(LIVE):
                whip = n % 2 == 0
                seed = rng.choice(seeds)
                lines = (seed if whip else seed.replace("a=sendonly", "a=recvonly")).split("\r\n")
                for _ in range(rng.randrange(1, 5)):
                    _mutate(lines, rng)
                offer = rng.choice(["\r\n", "\n"]).join(lines).encode("utf-8", "surrogatepass")
                room = f"fuzz-{n % 20}" if whip else ROOM  # WHEP: the live room, which has a publisher
                identity = f"fuzz-{n}"
                scopes = ("room:join", "room:publish") if whip else ("room:join", "room:subscribe")
                tok = admin_token(*scopes, room=room, identity=identity)
                outcomes[await _send(http, live.node.url, f"/{'whip' if whip else 'whep'}/{room}", offer, tok)] += 1
        took = time.monotonic() - started
        await wait_for_ready(live.node.url)
        await live.still_flowing()
        assert live.node.running, live.node.tail()
        assert "Traceback" not in live.node.stderr(), live.node.tail(60)
    assert sum(outcomes.values()) == LIVE
    assert outcomes[(201, "created")] > 0 and sum(n for (s, _), n in outcomes.items() if s == 400) > 0, outcomes
    log.info("%d live mutants in %.1f s: %s", LIVE, took, dict(outcomes))
