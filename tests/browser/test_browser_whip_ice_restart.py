"""Chromium restarts ICE on WHIP and WHEP sessions through ``whip.js`` (``session.restartIce()``:
``pc.restartIce()``, then a ``PATCH`` with the new credentials): the node answers with its own,
the DTLS/SRTP session goes on, and an aiortc WHEP viewer keeps receiving the publisher.

What the product promises across the restarts: the node takes every packet Chromium sends (the
old pair's in flight, the new pair's before its nomination) and forwards them in order; video
loss is repaired (NACK), audio is not retransmitted, so an audio packet the kernel drops for a
full socket buffer on a loaded machine stays lost: that (and only that) is tolerated, bounded
(``AUDIO_LOSS_BOUND``).
(Issue 11, defect 17: under load this test lost an audio packet to the node's GSO batching, which
cut a lane of mixed sizes across packets, and could see one overtake another when a fan-out group
dissolved within a batch; both are fixed and have unit tests in tests/sfu.)"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from sfu.counters import Direction
from sfu.node import Node
from sfu.routing.participant import Participant
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.test_rtc_ice_restart import check

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]
FRAMES = 30
#: the share of audio packets the aiortc viewer may miss, only when the kernel dropped datagrams
#: for a full receive buffer meanwhile (a loaded machine stalls this process, which runs the node
#: and the viewer); without such drops every audio packet must arrive
AUDIO_LOSS_BOUND = 0.05


def _udp_receive_buffer_errors() -> int | None:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (Linux), or None."""
    try:
        with open("/proc/net/snmp") as snmp:
            rows = [line.split() for line in snmp if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


_SESSION_JS = """(panel) => {
  const s = window.levelchatDemo[panel].session;
  const sdp = s.pc.remoteDescription.sdp;
  return {etag: s.etag, restarts: s.restarts, state: s.pc.connectionState,
          remoteUfrag: /a=ice-ufrag:(\\S+)/.exec(sdp)[1],
          localUfrag: /a=ice-ufrag:(\\S+)/.exec(s.pc.localDescription.sdp)[1]};
}"""

# The connection reports "failed" once (as after a lost path): the session must restart by itself.
_FAIL_ONCE_JS = """(panel) => {
  const pc = window.levelchatDemo[panel].session.pc;
  Object.defineProperty(pc, "connectionState", {get: () => "failed", configurable: true});
  pc.dispatchEvent(new Event("connectionstatechange"));
  delete pc.connectionState;
}"""


def _participant(node: Node, identity: str) -> Participant:
    return next(p for p in node.router.participants.values() if p.identity == identity)


async def test_chromium_whip_and_whep_restart_ice(node: Node, browser: Browser) -> None:
    room = "browser-whip-restart"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    sub = WhepSubscriber(node.url, room, token(room, "aiortc-viewer"))
    kernel_drops = _udp_receive_buffer_errors()
    try:
        await publisher.join_as(room, "olga")
        await publisher.publish("VP8")
        assert await publisher.wait_state("publish", "connected", "failed") == "connected"
        status, body = await sub.connect()
        assert status == 201, body
        await viewer.join_as(room, "pete")
        await viewer.watch()
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        await wait_for(lambda: sub.frames["video"] >= FRAMES, 15, "the aiortc viewer decodes the publisher")
        decoded = (await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES))["framesDecoded"]

        # the publisher restarts ICE over WHIP
        pub_t = _participant(node, "olga").publisher
        assert pub_t is not None
        old_ice, old_remote, rx = pub_t.ice, pub_t.remote_ufrag, pub_t.rx
        before = await publisher.page.evaluate(_SESSION_JS, "publish")
        assert before["etag"] and before["remoteUfrag"] == old_ice.ufrag and before["restarts"] == 0
        await publisher.page.evaluate("() => window.levelchatDemo.publish.session.restartIce()")
        after = await publisher.page.evaluate(_SESSION_JS, "publish")
        assert after["restarts"] == 1 and after["etag"] != before["etag"]
        assert (after["remoteUfrag"], after["localUfrag"]) == (pub_t.ice.ufrag, pub_t.remote_ufrag)
        assert pub_t.ice.ufrag != old_ice.ufrag and pub_t.remote_ufrag != old_remote
        assert pub_t.rx is rx and pub_t.state.value == "connected"
        consent = pub_t.last_check_ms
        await wait_for(lambda: pub_t.last_check_ms > consent, 15, "Chromium's checks with the new credentials")
        assert not await check(node, old_ice.ufrag, old_ice.pwd, old_remote or "")
        frames = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= frames + FRAMES, 15, "the aiortc viewer after the restart")
        assert await publisher.state("publish") == "connected"

        # the Chromium viewer's connection "fails": it restarts ICE over WHEP by itself
        sub_t = _participant(node, "pete-viewer").subscriber
        assert sub_t is not None
        old_sub_ufrag, sub_rx = sub_t.ice.ufrag, sub_t.rx
        await viewer.page.evaluate(_FAIL_ONCE_JS, "watch")
        await viewer.page.wait_for_function("() => window.levelchatDemo.watch.session.restarts === 1", timeout=10_000)
        watched = await viewer.page.evaluate(_SESSION_JS, "watch")
        assert watched["remoteUfrag"] == sub_t.ice.ufrag != old_sub_ufrag
        assert watched["localUfrag"] == sub_t.remote_ufrag and sub_t.rx is sub_rx
        await viewer.wait_rtp("watch", "video", "framesDecoded", decoded + 2 * FRAMES)
        # (the page's badge shows the faked "failed": the real connection never left "connected")
        assert watched["state"] == "connected"

        # the node took every audio packet Chromium sent across the restarts, and lost none on its way out
        audio = next(t for t in _participant(node, "olga").tracks.values() if t.kind == "audio")
        stats, counters = audio.stats, node.router.counters
        drops = {k: v for k, v in counters.drop_counts().items() if v}
        assert stats.packets >= stats.extended_max - stats.base_seq + 1, f"node drops: {drops}"
        assert "send_failed" not in drops and "seq_too_old" not in drops, drops
        assert counters.srtp_errors[Direction.OUTBOUND] == 0
        # the aiortc viewer: no video missing (NACKed holes fill), audio complete and in order; audio
        # packets may be missing only if the kernel dropped datagrams for a full buffer meanwhile
        await wait_for(lambda: sub.logs["video"].missing() == [], 10, "the viewer's video holes to fill")
        audio_log = sub.logs["audio"]
        overtaken = [(a, b) for a, b in audio_log.gaps() if (b - a) & 0xFFFF >= 0x8000]
        assert overtaken == [], f"audio packets out of order: {overtaken}"
        missing = audio_log.missing()
        after = _udp_receive_buffer_errors()
        kernel_dropped = kernel_drops is None or after is None or after != kernel_drops
        allowed = int(AUDIO_LOSS_BOUND * len(audio_log.packets)) if kernel_dropped else 0
        assert len(missing) <= allowed, (
            f"audio missing at the viewer: {missing} (kernel receive buffer drops meanwhile: {kernel_dropped})"
        )
        assert publisher.errors == [] and viewer.errors == []
    finally:
        await sub.close()
        await viewer.close()
        await publisher.close()
