"""A participant holding its own SRTP keys cannot make the node hold SRTP state per invented SSRC.

libsrtp clones a stream (replay window and cipher contexts, several KB) for every new SSRC whose
packet authenticates.  "mallory" (a real WHIP or WHEP session: ICE, DTLS, SRTP from a raw socket)
sends thousands of authenticated RTP packets, each with an SSRC she never signalled, and SRTCP
from as many sender SSRCs: each RTP packet is dropped as ``rtp_unknown_ssrc`` and its stream freed
at once, SRTCP from more than ``MAX_RTCP_SENDERS`` senders is dropped as ``rtcp_sender_limit``
and freed, and the live session (aiortc publisher and subscriber) never notices.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from sfu.counters import DropReason
from sfu.transport.peer import MAX_RTCP_SENDERS
from sfu.transport.srtp import SrtpFailure
from tests.e2e.clients import wait_for
from tests.e2e.test_bad_input import (  # noqa: F401  (live: the fixture)
    ROOM,
    VP8_KEYFRAME_HEAD,
    Live,
    RawPeer,
    live,
    rtp,
    still_flowing,
)

D = DropReason
INVENTED = 3_000
RTCP_SENDERS = MAX_RTCP_SENDERS + 200


def _has_stream(peer: RawPeer, ssrc: int) -> bool:
    """Whether the node's inbound SRTP context for ``peer`` keeps a stream for ``ssrc`` (asking
    libsrtp to remove it answers whether there was one; the test owns these SSRCs)."""
    rx = peer.transport.rx
    assert rx is not None
    try:
        rx.remove_stream(ssrc)
    except SrtpFailure:
        return False
    return True


@pytest.mark.parametrize("path", ["/whip/", "/whep/"])
async def test_invented_ssrcs_leave_no_srtp_state(live: Live, path: str) -> None:  # noqa: F811
    before = live.frames()
    node = live.node
    mallory = RawPeer(live, "mallory")
    signalled = 0x4D414C4C
    try:
        await mallory.post(f"{path}{ROOM}", video_ssrc=signalled if path == "/whip/" else None)
        await mallory.connect_ice()
        await mallory.handshake()
        unknown_before = node.counters.drops[D.RTP_UNKNOWN_SSRC] + node.counters.drops[D.NOT_PUBLISHING]
        limit_before = node.counters.drops[D.RTCP_SENDER_LIMIT]
        invented = [0x10000000 + i for i in range(INVENTED)]
        for i, ssrc in enumerate(invented):
            mallory.send(mallory.protect(rtp(i, ssrc, bytes(200))))
            if i % 200 == 199:
                await asyncio.sleep(0.02)  # paced: the kernel's receive buffer is not the test
        senders = [0x20000000 + i for i in range(RTCP_SENDERS)]
        for i, ssrc in enumerate(senders):
            mallory.send(mallory.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, ssrc)))  # an empty RR
            if i % 100 == 99:
                await asyncio.sleep(0.02)

        def counted() -> bool:
            unknown = node.counters.drops[D.RTP_UNKNOWN_SSRC] + node.counters.drops[D.NOT_PUBLISHING]
            return (unknown - unknown_before >= INVENTED
                    and node.counters.drops[D.RTCP_SENDER_LIMIT] - limit_before >= RTCP_SENDERS - MAX_RTCP_SENDERS)

        await wait_for(counted, 15, "every invented SSRC dropped")
        unknown = node.counters.drops[D.RTP_UNKNOWN_SSRC] + node.counters.drops[D.NOT_PUBLISHING]
        assert unknown - unknown_before == INVENTED
        assert node.counters.drops[D.RTCP_SENDER_LIMIT] - limit_before == RTCP_SENDERS - MAX_RTCP_SENDERS
        kept_rtp = [s for s in invented if _has_stream(mallory, s)]
        assert kept_rtp == []
        kept_rtcp = [s for s in senders if _has_stream(mallory, s)]
        assert kept_rtcp == senders[:MAX_RTCP_SENDERS], f"{len(kept_rtcp)} RTCP sender streams kept"
        if path == "/whip/":  # her signalled SSRC still goes through after all that
            track = node.rooms.rooms[ROOM].participants["mallory"].tracks[signalled]
            sent = track.stats.packets
            mallory.send(mallory.protect(rtp(1, signalled, VP8_KEYFRAME_HEAD + bytes(100))))
            await wait_for(lambda: track.stats.packets == sent + 1, 5, "mallory's signalled SSRC accepted")
    finally:
        mallory.close()
    await still_flowing(live, before)
