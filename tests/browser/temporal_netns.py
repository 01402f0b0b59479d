"""Run inside a private network namespace (``unshare -n``, as root): a node, a Chromium publisher
sending one VP8 (or, with ``--codec VP9``, VP9) encoding with three temporal layers (``scalabilityMode: "L1T3"``, 640x360 at
30 fps asked (Chromium's fake camera gives 20), ``maxBitrate`` 250 kbit/s, which it reaches) and a Chromium viewer (microphone only) whose downlink from
the node's media port goes through an htb class with a ~200 ms FIFO (``shaped_netns``).

Phases: unshaped until the node has measured the track's bitrate per temporal layer (T0,
T0+T1, all) and the encoder's rate holds; then the viewer's link is set halfway between T0+T1
and the whole stream (plus audio and packet overhead): the whole stream does not fit, T0+T1
does; after settling, its getStats deltas over the measuring window
(frames decoded, freezes, NACKs, PLIs, loss) and the node's temporal limit for it; then the
limit is lifted (the class at 10 Gbit/s) and, after recovery, the same over a second window.

``python -m tests.browser.temporal_netns [--codec VP9] [--settle 15] [--measure 10] [--recover 60]`` prints
one JSON line.  ``test_browser_temporal`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from playwright.async_api import async_playwright

from sfu import clock
from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, CHROMIUM_ARGS
from tests.browser.shaped_netns import (
    QUEUE_MS,
    VIEWER_JS,
    participant,
    sh,
    shape_flow,
    shape_setup,
    shaped_drops,
    wait_for,
)
from tests.browser.test_browser_room import RoomPage

#: the publisher: 640x360 at 30 fps, its video as one L1T3 encoding
PUBLISHER_JS = """(codec) => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => original(c && c.video
    ? { ...c, video: { width: 640, height: 360, frameRate: 30 } } : c);
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (what, init) {
    const kind = typeof what === "string" ? what : what.kind;
    if (kind === "video" && init && init.direction !== "recvonly")
      init = { ...init, sendEncodings: [{ scalabilityMode: "L1T3", maxBitrate: 250000 }] };
    const transceiver = add.call(this, what, init);
    if (kind === "video" && init && init.direction !== "recvonly") {  // the codec offered first
      const caps = RTCRtpSender.getCapabilities("video").codecs;
      const mime = "video/" + codec;
      transceiver.setCodecPreferences([...caps.filter((c) => c.mimeType === mime),
                                       ...caps.filter((c) => c.mimeType !== mime)]);
    }
    return transceiver;
  };
}"""
#: the viewer's inbound video from ``who``: cumulative figures
INBOUND_JS = """async (who) => {
  const room = window.levelchatRoomPage.room;
  if (!room || !room.subscriber) return null;
  const report = await room.subscriber.getStats();
  for (const s of report.values()) {
    if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
    const remote = room.remoteTracks.get(s.mid);
    if (!remote || remote.participant !== who) continue;
    return { framesDecoded: s.framesDecoded ?? 0, totalFreezesDuration: s.totalFreezesDuration ?? 0,
             freezeCount: s.freezeCount ?? 0, bytesReceived: s.bytesReceived ?? 0,
             packetsReceived: s.packetsReceived ?? 0, packetsLost: s.packetsLost ?? 0,
             nackCount: s.nackCount ?? 0, pliCount: s.pliCount ?? 0, firCount: s.firCount ?? 0,
             framesDropped: s.framesDropped ?? 0, frameWidth: s.frameWidth ?? 0 };
  }
  return null;
}"""
OUTBOUND_JS = """async () => {
  const report = await window.levelchatRoomPage.room.publisher.getStats();
  for (const s of report.values())
    if (s.type === "outbound-rtp" && s.kind === "video")
      return { framesEncoded: s.framesEncoded ?? 0, scalabilityMode: s.scalabilityMode ?? null,
               codec: report.get(s.codecId)?.mimeType ?? null,
               encoderImplementation: s.encoderImplementation ?? null };
  return null;
}"""


def node_state(node: Node, identity: str) -> dict[str, Any]:
    p = participant(node, identity)
    out: dict[str, Any] = {}
    if p is None or p.subscriber is None:
        return out
    sender = p.subscriber.sender
    if sender is not None:
        out["estimate_kbps"] = (sender.estimate_bps(clock.now_ms()) or 0) // 1000
        out["feedback_seen"] = sender.feedback_seen
    audio = next((d for d in p.downtracks if d.kind == "audio" and d.source is not None), None)
    out["audio_kbps"] = audio.source.rate_bps // 1000 if audio is not None and audio.source is not None else 0
    dt = next((d for d in p.downtracks if d.kind == "video" and d.source is not None), None)
    if dt is not None and dt.source is not None:
        out["tl_kbps"] = [r // 1000 for r in dt.source.tl_rates]
        out["tl_fps"] = [round(f, 1) for f in dt.source.tl_fps]
        out["tl_top"] = dt.source.tl_top
        out["limit"] = dt.temporal.target if dt.temporal is not None else None
        out["current"] = dt.temporal.current if dt.temporal is not None else None
        out["dropped"] = dt.temporal.dropped if dt.temporal is not None else 0
    return out


async def window(viewer: RoomPage, publisher: RoomPage, seconds: float) -> dict[str, Any]:
    """The viewer's getStats deltas (and the publisher's frame rate) over ``seconds``."""
    b = await viewer.page.evaluate(INBOUND_JS, "ann")
    sb = await publisher.page.evaluate(OUTBOUND_JS)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    a = await viewer.page.evaluate(INBOUND_JS, "ann")
    sa = await publisher.page.evaluate(OUTBOUND_JS)
    elapsed = time.monotonic() - t0
    if a is None or b is None or sa is None or sb is None:
        return {"error": "no stats", "viewer": a, "publisher": sa}
    return {
        "sent_fps": round((sa["framesEncoded"] - sb["framesEncoded"]) / elapsed, 1),
        "scalability_mode": sa["scalabilityMode"],
        "codec": sa["codec"],
        "fps": round((a["framesDecoded"] - b["framesDecoded"]) / elapsed, 1),
        "freeze_s": round(a["totalFreezesDuration"] - b["totalFreezesDuration"], 2),
        "freezes": a["freezeCount"] - b["freezeCount"],
        "kbps": round((a["bytesReceived"] - b["bytesReceived"]) * 8 / elapsed / 1000),
        "packets": a["packetsReceived"] - b["packetsReceived"],
        "lost": a["packetsLost"] - b["packetsLost"],
        "nacks": a["nackCount"] - b["nackCount"],
        "plis": a["pliCount"] - b["pliCount"] + a["firCount"] - b["firCount"],
        "frames_dropped": a["framesDropped"] - b["framesDropped"],
        "width": a["frameWidth"],
    }


async def run(codec: str, settle_s: float, measure_s: float, recover_s: float) -> dict[str, Any]:
    shape_setup(10_000_000)  # the viewer's class starts unlimited (10 Gbit/s)
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0, "tcp_port": 0, "ice_tcp": False,
                                      "default_codecs": ("opus", codec)}, environ={}))
    await node.start()
    result: dict[str, Any] = {}
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
            pages: list[RoomPage] = []
            try:
                ann = await RoomPage.open(browser, node, "ann")
                pages.append(ann)
                await ann.page.evaluate(PUBLISHER_JS, codec)
                await ann.join("temporal")
                ben = await RoomPage.open(browser, node, "ben")
                pages.append(ben)
                await ben.page.evaluate(VIEWER_JS)
                await ben.join("temporal")

                def state() -> dict[str, Any]:
                    return node_state(node, "ben")

                await wait_for(lambda: len(state().get("tl_kbps", [])) == 3, 40, "the track's temporal layer bitrates")
                # the encoder ramps up with its own estimate: wait until its rate holds for 4 s
                # (within 15 %), at least 8 s in
                rates: list[int] = []
                for _ in range(30):
                    await asyncio.sleep(1)
                    rates.append(state()["tl_kbps"][-1])
                    if len(rates) >= 8 and max(rates[-4:]) <= 1.15 * min(rates[-4:]):
                        break
                free = state()
                result["free"] = {**free, "ramp_kbps": rates}
                t1, t2 = free["tl_kbps"][1], free["tl_kbps"][2]
                # halfway between T0+T1 and the whole stream (which an encoder still ramping up
                # moves further from it), plus the publisher's audio and the per-packet overhead
                # (SRTP tag, UDP/IP: ~40 bytes a packet) the track's rates leave out
                kbit = (t1 + t2) // 2 + free["audio_kbps"] + 40
                result["kbit"] = kbit
                p = participant(node, "ben")
                shape_flow(node.port.port, p.subscriber.addr[1])
                sh("tc", "class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate",
                   f"{kbit}kbit", "ceil", f"{kbit}kbit", "burst", "2k", "cburst", "2k")
                sh("tc", "qdisc", "change", "dev", "lo", "parent", "1:20", "handle", "20:", "bfifo", "limit",
                   str(max(kbit * QUEUE_MS // 8, 3000)))  # a ~200 ms queue at the link's rate
                await asyncio.sleep(settle_s)
                result["shaped"] = {**await window(ben, ann, measure_s), **state()}
                result["qdisc"] = shaped_drops()
                sh("tc", "class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate",
                   "10gbit", "ceil", "10gbit")
                deadline = time.monotonic() + recover_s
                timeline = []  # (s since lifted, estimate kbit/s, temporal limit)
                while time.monotonic() < deadline:
                    now = state()
                    timeline.append((round(recover_s - (deadline - time.monotonic()), 1), now.get("estimate_kbps"),
                                     now.get("limit")))
                    if now.get("limit") in (None, 3):
                        break
                    await asyncio.sleep(0.5)
                result["recovered_after_s"] = timeline[-1][0]
                await asyncio.sleep(3)  # the filter moves up at the next sync frames
                watch = asyncio.ensure_future(window(ben, ann, measure_s / 2))
                while not watch.done():
                    now = state()
                    timeline.append((round(recover_s - (deadline - time.monotonic()), 1), now.get("estimate_kbps"),
                                     now.get("limit")))
                    await asyncio.sleep(0.5)
                result["lifted"] = {**watch.result(), **state()}
                result["timeline"] = timeline
                cc = node.router.counters.cc
                result["switches"] = cc.switches
                result["page_errors"] = [e for pg in pages for e in pg.errors][:5]
            finally:
                await browser.close()
    finally:
        await node.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--codec", choices=("VP8", "VP9"), default="VP8")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--measure", type=float, default=10.0)
    parser.add_argument("--recover", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.codec, args.settle, args.measure, args.recover))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
