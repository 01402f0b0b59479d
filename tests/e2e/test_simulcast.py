"""Simulcast end to end: a publisher sending three rid layers (no a=ssrc) through a real node to an
aiortc WHEP subscriber that changes layers with ``POST /whep/{room}/{session}/layer``.

The publisher is the ``LiteEndpoint`` simulcast sender of ``simulcast_support`` (synthetic VP8
whose payload ends with the layer's rid); what the subscriber receives is checked at the RTP level.
"""

from __future__ import annotations

from sfu.counters import DropReason
from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import (
    RID_PACKETS,
    SimulcastSender,
    payload_logger,
    post_layer,
    runs,
    simulcast_offer,
    walk_whep_layers,
    whep_location,
    whip_publish,
)


async def test_rid_layers_reach_a_whep_subscriber_that_switches_layers(node: Node) -> None:
    room = "simulcast-e2e"
    sender = SimulcastSender.create()
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    layers_seen: list[str] = []
    try:
        answer = await whip_publish(node.url, room, "alice", simulcast_offer(sender.lite))
        assert "a=simulcast:recv f;h;q" in answer
        await sender.lite.connect(answer)
        sender.start(25)
        await wait_for(lambda: all(n > RID_PACKETS for n in sender.sent.values()), 5, "every layer sending")

        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        by_rid = {t.rid: t for t in publisher.tracks.values()}
        assert {rid: t.ssrc for rid, t in by_rid.items()} == sender.ssrcs  # learnt from the rid extension
        group = by_rid["q"].group
        assert group is not None and group.rids == ["q", "h", "f"]

        payload_logger(sub, layers_seen)
        status, body = await sub.connect()
        assert status == 201, body
        location = whep_location(node, room, "viewer")
        await wait_for(lambda: layers_seen.count("f") >= 30, 10, "the highest layer, by default")
        assert set(layers_seen) == {"f"}

        await walk_whep_layers(node, room, location, layers_seen)

        # each switch is one clean cut: f..f q..q h..h f..f, no packet of the old layer after the new one
        assert runs(layers_seen) == ["f", "q", "h", "f"], runs(layers_seen)
        assert sub.logs["video"].gaps() == []
        assert len(sub.logs["video"].packets) == len(layers_seen)
        stamps = [ts for _, ts, _ in sub.logs["video"].packets]
        assert all(0 <= (b - a) & 0xFFFFFFFF < 1 << 31 for a, b in zip(stamps, stamps[1:], strict=False))
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1  # each switch asked for a keyframe
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0

        # refusals, each with its catalogue code
        viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
        refusals = [
            (location, viewer_tok, {"rid": "x"}, 400, "bad_request"),
            (location, viewer_tok, {"rid": 3}, 400, "bad_request"),
            (location, viewer_tok, {}, 400, "bad_request"),
            (f"/whep/{room}/PA_nope", viewer_tok, {"rid": "q"}, 404, "not_found"),
            (location, None, {"rid": "q"}, 401, "unauthorized"),
            (location, token("other-room", "viewer"), {"rid": "q"}, 401, "token/unauthorized"),
        ]
        for where, tok, body_json, code, name in refusals:
            status, problem = await post_layer(node, where, tok, body_json)
            assert (status, problem.get("code")) == (code, name), (body_json, problem)
    finally:
        await sender.stop()
        await sub.close()
