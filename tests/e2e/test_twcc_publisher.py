"""Transport-cc feedback to a publisher, end to end: a ``LiteEndpoint`` publisher (WHIP, real ICE,
DTLS and SRTP) offers transport-wide-cc and numbers its packets; what the node sends back is
parsed with ``TransportFeedback`` as a publisher's estimator would read it."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp

from sfu.client.lite import VP8_PT, LiteEndpoint
from sfu.counters import TwccDrop
from sfu.node import Node
from sfu.packet import rtcp
from sfu.packet.rtp import RtpHeader
from sfu.packet.twcc import TWCC_URI, TransportFeedback
from sfu.routing.participant import NODE_RTCP_SSRC
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.simulcast_support import whip_publish

VIDEO_SSRC = 0x5EED0001
EXT = 5
GAP = range(60, 65)  # transport seqs never sent: reported lost
PACKETS = 150
SPACING_S = 0.004


class Publisher:
    def __init__(self) -> None:
        self.feedback: list[TransportFeedback] = []
        self.remb = 0
        self.lite = LiteEndpoint(Certificate.generate(), on_rtcp=self._on_rtcp)
        self.rtp_seq = 0
        self.sent_at: dict[int, float] = {}  # transport seq -> monotonic seconds

    def _on_rtcp(self, data: bytes) -> None:
        for packet in rtcp.parse_compound(data):
            if isinstance(packet, rtcp.TransportCC):
                self.feedback.append(TransportFeedback.from_transport_cc(packet))
            elif isinstance(packet, rtcp.Remb):
                self.remb += 1

    def send(self, tseq: int, *, record: bool = True, ssrc: int = VIDEO_SSRC) -> None:
        header = RtpHeader(VP8_PT, self.rtp_seq, 3000 * self.rtp_seq, ssrc, extensions=[(EXT, tseq.to_bytes(2, "big"))])
        self.rtp_seq += 1
        assert self.lite.send_rtp(bytes(header) + b"\x10\x00" + bytes(1000))
        if record:
            self.sent_at[tseq] = time.monotonic()

    def statuses(self) -> dict[int, int | None]:
        """seq -> arrival us (None: lost), the first report of a received packet kept."""
        out: dict[int, int | None] = {}
        for fb in self.feedback:
            for status in fb.statuses():
                if out.get(status.seq) is None:
                    out[status.seq] = status.arrival_us
        return out


async def scrape(node: Node) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as resp:
        return await resp.text()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


async def publish(node: Node, room: str, pub: Publisher) -> str:
    offer = pub.lite.offer(send=True, video_ssrc=VIDEO_SSRC, twcc_ext=EXT)
    offer = offer.replace(f"a=rtpmap:{VP8_PT} VP8/90000\r\n", f"a=rtpmap:{VP8_PT} VP8/90000\r\na=rtcp-fb:{VP8_PT} goog-remb\r\n")
    answer = await whip_publish(node.url, room, "alice", offer)
    assert f"a=rtcp-fb:{VP8_PT} goog-remb" in answer
    await pub.lite.connect(answer)
    return answer


async def test_publisher_gets_transport_cc_feedback(node: Node) -> None:
    pub = Publisher()
    try:
        answer = await publish(node, "twcc-e2e", pub)
        assert f"a=extmap:{EXT} {TWCC_URI}" in answer and f"a=rtcp-fb:{VP8_PT} transport-cc" in answer
        for tseq in range(PACKETS):
            if tseq not in GAP:
                pub.send(tseq)
            await asyncio.sleep(SPACING_S)
        await wait_for(lambda: max(pub.statuses(), default=-1) == PACKETS - 1, 5, "feedback up to the last packet")
        statuses = pub.statuses()
        assert sorted(statuses) == list(range(PACKETS))
        assert [s for s, at in statuses.items() if at is None] == list(GAP)
        assert all(fb.sender_ssrc == NODE_RTCP_SSRC and fb.media_ssrc == VIDEO_SSRC for fb in pub.feedback)
        # plausible arrival times: in send order (loopback), spaced like the sends
        arrivals = [(s, at) for s, at in sorted(statuses.items()) if at is not None]
        assert all(a <= b for (_, a), (_, b) in zip(arrivals, arrivals[1:], strict=False))
        first, last = arrivals[0], arrivals[-1]
        sent_span_us = (pub.sent_at[last[0]] - pub.sent_at[first[0]]) * 1e6
        errors = sorted(
            abs((at - first[1]) - (pub.sent_at[s] - pub.sent_at[first[0]]) * 1e6) for s, at in arrivals
        )
        assert errors[len(errors) // 2] < 20_000, errors[len(errors) // 2]  # median within 20 ms
        assert 0.5 * sent_span_us <= last[1] - first[1] <= 2 * sent_span_us + 100_000
        # a feedback every ~100 ms while packets come, not one per packet nor one at the end
        assert 2 <= len(pub.feedback) <= PACKETS // 4, len(pub.feedback)
        # a packet of an SSRC nothing routes (Chrome's bandwidth probes before media: SSRC 0,
        # padding) is reported too: the estimator counts every packet the publisher numbered
        pub.send(PACKETS, ssrc=0)
        await wait_for(lambda: pub.statuses().get(PACKETS) is not None, 5, "the probe's arrival reported")
        # duplicates and a straggler far behind are counted, not reported
        pub.send(PACKETS - 1, record=False)
        pub.send((PACKETS - 1500) & 0xFFFF, record=False)
        await wait_for(
            lambda: node.counters.twcc_dropped[TwccDrop.TOO_OLD] == 1
            and node.counters.twcc_dropped[TwccDrop.DUPLICATE] == 1,
            5,
            "the duplicate and the straggler counted",
        )
        await wait_for(lambda: pub.remb > 0, 5, "the REMB cap, still sent")
        await asyncio.sleep(0.3)  # the timer has nothing left to send
        assert node.counters.twcc_feedback_out == len(pub.feedback)
        text = await scrape(node)
        assert metric(text, "levelchat_sfu_twcc_feedback_total") == len(pub.feedback)
        assert metric(text, 'levelchat_sfu_twcc_seqs_dropped_total{reason="too_old"}') == 1
        assert metric(text, 'levelchat_sfu_twcc_seqs_dropped_total{reason="duplicate"}') == 1
        assert node.router.twcc_timer.pending == 0
    finally:
        pub.lite.close()


async def test_transport_cc_turned_off(node_factory: Any) -> None:
    """``publisher_transport_cc = false``: not in the answer, and packets that carry the
    extension anyway get no feedback (REMB still comes)."""
    node = await node_factory(publisher_transport_cc=False)
    pub = Publisher()
    try:
        answer = await publish(node, "twcc-off", pub)
        assert TWCC_URI not in answer and "transport-cc" not in answer
        for tseq in range(40):
            pub.send(tseq)
            await asyncio.sleep(SPACING_S)
        await wait_for(lambda: pub.remb > 0, 5, "the REMB cap")
        await asyncio.sleep(0.3)
        assert pub.feedback == [] and node.counters.twcc_feedback_out == 0
    finally:
        pub.lite.close()
        await node.stop()
