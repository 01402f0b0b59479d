"""Offers that declare too much are refused at once, and a live session never notices.

A live room: an aiortc WHIP publisher ("alice", video and audio) and an aiortc WHEP viewer.  Then:

* four WHIP offers of ~62 KB with 2,500 ``a=ssrc`` lines each (the memory bomb): ``bad_request``
  naming ``max_ssrcs``, each answered quickly, no participant or track made, the node ready;
* WebSocket ``publish`` calls (a joined participant, "mallory") with too many SSRCs, too many
  media sections and too many tracks: JSON-RPC errors whose problem is ``bad_request`` naming
  ``max_ssrcs``, ``max_media_sections`` and ``max_published_tracks``; mallory publishes nothing;
* Chrome's simulcast with RTX still gets in: the rid form (Chrome 120's offer) and the SSRC form
  (three layers and their RTX: 6 SSRCs) are answered 201;

and the viewer's video and audio frames keep growing throughout.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import public_participants, token
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient
from tests.sfu.signaling.offers import chrome_ssrc_simulcast_offer, fixture, many_tracks_offer, ssrc_bomb

ROOM = "offer-limits"
#: a refusal of a 64 KB offer takes milliseconds; generous for a loaded machine
REFUSAL_BOUND_S = 2.0


async def _whip(node: Node, identity: str, offer: str) -> tuple[int, Any, float, str | None]:
    headers = {"Authorization": f"Bearer {token(ROOM, identity)}", "Content-Type": "application/sdp"}
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(f"{node.url}/whip/{ROOM}", data=offer, headers=headers) as resp:
        body: Any = await resp.json() if "json" in resp.headers.get("Content-Type", "") else await resp.text()
        return resp.status, body, time.monotonic() - started, resp.headers.get("Location")


async def _delete(node: Node, identity: str, location: str) -> None:
    async with aiohttp.ClientSession() as http, http.delete(
            node.url + location, headers={"Authorization": f"Bearer {token(ROOM, identity)}"}) as resp:
        assert resp.status in (200, 204), resp.status


def _grows(viewer: WhepSubscriber, since: dict[str, int], by: int) -> Any:
    return lambda: all(viewer.frames[k] >= since[k] + by for k in ("video", "audio"))


async def test_oversized_offers_are_refused_and_the_live_session_keeps_flowing(node: Node) -> None:
    alice = WhipPublisher(node.url, ROOM, token(ROOM, "alice"))
    viewer = WhepSubscriber(node.url, ROOM, token(ROOM, "viewer"))
    mallory = RtcClient(node, ROOM, "mallory")
    try:
        await alice.connect()
        status, body = await viewer.connect()
        assert status == 201, body
        await wait_for(_grows(viewer, {"video": 0, "audio": 0}, 5), 15, "the viewer receives alice")
        tracks_before = sum(len(p.tracks) for p in public_participants(node))

        # -- the memory bomb over WHIP, four times ------------------------------------------------
        bomb = ssrc_bomb(2500)
        assert 60_000 < len(bomb.encode()) <= 64 * 1024
        for n in range(4):
            before = dict(viewer.frames)
            status, problem, elapsed, _ = await _whip(node, f"bomber-{n}", bomb)
            assert status == 400, problem
            assert problem["code"] == "bad_request" and "max_ssrcs" in problem["detail"], problem
            assert (problem["limit"], problem["max"], problem["offered"]) == ("max_ssrcs", 32, 2502)
            assert elapsed < REFUSAL_BOUND_S, f"the refusal took {elapsed:.2f} s"
            await wait_for(_grows(viewer, before, 3), 10, f"alice's media after bomb {n}")
        assert not any(p.identity.startswith("bomber") for p in public_participants(node))
        assert sum(len(p.tracks) for p in public_participants(node)) == tracks_before
        async with aiohttp.ClientSession() as http, http.get(node.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()

        # -- the WebSocket publish: too many SSRCs, sections, tracks -------------------------------
        await mallory.join()
        attempts = [
            (ssrc_bomb(40), "max_ssrcs"),
            (many_tracks_offer(17, 1), "max_media_sections"),
            (many_tracks_offer(9, 2), "max_published_tracks"),  # 18 tracks, 18 SSRCs, 9 sections
        ]
        for offer, limit in attempts:
            before = dict(viewer.frames)
            started = time.monotonic()
            try:
                await mallory.call("publish", {"sdp": offer})
            except RpcFailure as failure:
                problem = failure.problem
            else:
                raise AssertionError(f"publish over {limit} was accepted")
            assert time.monotonic() - started < REFUSAL_BOUND_S
            assert problem["code"] == "bad_request" and limit in problem["detail"], problem
            assert problem["limit"] == limit, problem
            await wait_for(_grows(viewer, before, 3), 10, f"alice's media after the {limit} publish")
        mallory_p = next(p for p in public_participants(node) if p.identity == "mallory")
        assert mallory_p.tracks == {} and mallory_p.publisher is None

        # -- browsers' simulcast with RTX still gets in ---------------------------------------------
        for identity, offer in (("chrome-rid", fixture("chrome120")), ("chrome-ssrc", chrome_ssrc_simulcast_offer())):
            status, body, _, location = await _whip(node, identity, offer)
            assert status == 201, body
            assert location is not None
            await _delete(node, identity, location)
        before = dict(viewer.frames)
        await wait_for(_grows(viewer, before, 5), 10, "alice's media at the end")
    finally:
        await mallory.close()
        await viewer.close()
        await alice.close()
