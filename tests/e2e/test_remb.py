"""REMB to publishers: a publisher that negotiated goog-remb hears the node's bitrate cap once a
second, for its video SSRCs (simulcast layers included once learnt); one that did not hears none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from sfu.client.lite import LiteEndpoint
from sfu.packet import rtcp
from tests.e2e.clients import wait_for
from tests.e2e.simulcast_support import SimulcastSender, simulcast_offer, whip_publish


def with_remb(offer: str) -> str:
    return offer.replace("a=rtcp-fb:96 nack pli\r\n", "a=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 goog-remb\r\n")


async def _rembs_heard(node_url: str, room: str, offer_of: Callable[[LiteEndpoint], str], seconds: float,
                       enough: Callable[[list[rtcp.Remb], SimulcastSender], bool] | None = None) -> tuple[list[rtcp.Remb], SimulcastSender, str]:
    sender = SimulcastSender.create()
    rembs: list[rtcp.Remb] = []

    def on_rtcp(data: bytes) -> None:
        sender.on_rtcp(data)
        with contextlib.suppress(ValueError):
            rembs.extend(p for p in rtcp.parse_compound(data) if isinstance(p, rtcp.Remb))

    sender.lite.on_rtcp = on_rtcp
    try:
        answer = await whip_publish(node_url, room, "pub", offer_of(sender.lite))
        await sender.lite.connect(answer)
        sender.start(seconds + 1)
        if enough is None:
            await asyncio.sleep(seconds)
        else:
            await wait_for(lambda: enough(rembs, sender), seconds, "REMB for every layer")
        return rembs, sender, answer
    finally:
        await sender.stop()


async def test_a_remb_publisher_hears_the_cap_for_every_layer(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    try:
        def every_layer(rembs: list[rtcp.Remb], sender: SimulcastSender) -> bool:
            return any(sorted(r.ssrcs) == sorted(sender.ssrcs.values()) for r in rembs)

        rembs, sender, answer = await _rembs_heard(
            node.url, "remb-default", lambda lite: with_remb(simulcast_offer(lite)), 5, every_layer
        )
        assert "a=rtcp-fb:96 goog-remb" in answer
        assert rembs and {r.bitrate for r in rembs} == {3_000_000}, rembs  # the default cap, exact
        assert {r.sender_ssrc for r in rembs} == {0x4C43_0001}
    finally:
        await node.stop()


async def test_the_cap_is_configured_and_no_remb_without_goog_remb(node_factory: Callable[..., Any]) -> None:
    node = await node_factory(publisher_max_bitrate_bps=500_000)
    try:
        rembs, _, _ = await _rembs_heard(
            node.url, "remb-cap", lambda lite: with_remb(simulcast_offer(lite)), 4,
            lambda rembs, _: len(rembs) >= 2,
        )
        assert {r.bitrate for r in rembs} == {500_000}
        rembs, sender, answer = await _rembs_heard(node.url, "remb-none", simulcast_offer, 2.5)
        assert "goog-remb" not in answer
        assert rembs == [] and all(sender.sent.values())
    finally:
        await node.stop()


async def test_no_remb_when_the_cap_is_zero(node_factory: Callable[..., Any]) -> None:
    node = await node_factory(publisher_max_bitrate_bps=0)
    try:
        rembs, _, answer = await _rembs_heard(node.url, "remb-off", lambda lite: with_remb(simulcast_offer(lite)), 2.5)
        assert "a=rtcp-fb:96 goog-remb" in answer and rembs == []
    finally:
        await node.stop()
