"""Loss between a publisher and the node is repaired there: the node NACKs the aiortc publisher,
which answers with RTX; the node unwraps it and every subscriber gets every packet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from sfu.counters import DropReason, RecoveredVia
from sfu.packet.nack import GiveUp
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token

#: packets lost on the publisher's leg, by offset from where the loss starts: single losses, a
#: burst of three, two close together
LOST_OFFSETS = {5, 17, 18, 19, 40, 42, 77, 120}


async def test_publisher_leg_loss_is_recovered_for_every_subscriber(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "upstream-nack"
    pub = WhipPublisher(node.url, room, token(room, "alice"), audio=False)
    subs = [WhepSubscriber(node.url, room, token(room, f"viewer-{i}"), audio=False) for i in range(2)]
    try:
        await pub.connect()
        for sub in subs:
            status, body = await sub.connect()
            assert status == 201, body
        await wait_for(lambda: all(s.frames["video"] >= 5 for s in subs), 15, "first frames")
        alice = next(p for p in node.router.participants.values() if p.identity == "alice")
        track = next(t for t in alice.tracks.values() if t.kind == "video")
        assert track.nack is not None and track.rtx_ssrc is not None  # nack and RTX (FID) negotiated
        assert any(apt >= 0 for apt in track.rtx_apt)  # and the RTX payload type's apt=
        plis_from_subscribers = node.counters.pli_in
        loss = pub.lose_sent("video", LOST_OFFSETS)
        await wait_for(lambda: loss.done, 20, "the publisher's packets lost on its leg")
        frames_then = [s.frames["video"] for s in subs]
        # every packet reaches every subscriber: the lost ones come late, through the node's NACK
        await wait_for(lambda: loss.sent > max(LOST_OFFSETS) + 60, 20, "more packets")
        for sub in subs:
            await wait_for(lambda s=sub: s.logs["video"].missing() == [], 10, "no hole at the subscriber")
        counters = node.counters
        assert counters.nack_out >= 1
        assert counters.recovered[RecoveredVia.RTX] >= len(LOST_OFFSETS)
        assert counters.nack_out_seqs[0] >= len(LOST_OFFSETS)
        assert counters.holes_given_up[GiveUp.RETRIES] == 0 and counters.holes_given_up[GiveUp.OVERFLOW] == 0
        assert counters.drops[DropReason.RTX_UNKNOWN] == 0
        assert track.nack.holes == []
        # and they decode on: frames keep coming, and no decoder asked for a keyframe
        await wait_for(lambda: all(s.frames["video"] >= f + 20 for s, f in zip(subs, frames_then, strict=True)), 15, "frames")
        assert node.counters.pli_in == plis_from_subscribers
        async with aiohttp.ClientSession() as http:
            async with http.get(node.url + "/metrics") as resp:
                metrics = await resp.text()
        recovered = counters.recovered[RecoveredVia.RTX]
        assert f'levelchat_sfu_upstream_recovered_packets_total{{via="rtx"}} {float(recovered)}' in metrics
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()
        await node.stop()

