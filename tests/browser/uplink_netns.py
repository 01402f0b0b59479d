"""Run inside a private network namespace (``unshare -n``, as root): a node, a Chromium publisher
(three simulcast layers through ``levelchat.js``) whose uplink to the node is shaped, and an
aiortc viewer on the WebSocket.

The shaping: an htb root on ``lo`` with a default class (unlimited in practice) and a class of
``--kbit`` kbit/s with a ~200 ms pfifo, which a u32 filter fills with every UDP datagram *to the
node's media port*: the publisher's uplink (the viewer's RTCP to the node shares it; what the node
sends, from that port, is not shaped).  Chromium runs as root here (``--no-sandbox``).

``python -m tests.browser.uplink_netns [--kbit 1000] [--no-transport-cc] [--settle 20] [--measure 8]``
prints one JSON line: per simulcast layer what the publisher's getStats say over the measuring
window (sent bitrate, frame width, ``qualityLimitationReason``, active), Chromium's
``availableOutgoingBitrate``, the frames the viewer decoded in the window and their widths, the
shaped class's drops, and the node's transport-cc feedback count.  ``test_browser_uplink``
runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import aioice.ice
from playwright.async_api import async_playwright

from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, CHROMIUM_ARGS
from tests.browser.test_browser_rtc_simulcast import WidthClient
from tests.e2e.conftest import token

#: keeps every RTCPeerConnection the page makes, for getStats
_KEEP_PCS = """(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""

_PUBLISH_JS = """async ([token]) => {
  const { connect } = await import("/static/levelchat.js");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: false});
  const room = await connect(location.origin, token);
  window.simulcastRoom = room;
  return await room.publish(stream, {simulcast: true});
}"""

_STATS_JS = """async () => {
  const out = {layers: {}, available: null};
  for (const pc of window.__pcs) {
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        out.layers[s.rid || s.ssrc] = {bytes: s.bytesSent, width: s.frameWidth || 0, fps: s.framesPerSecond || 0,
          reason: s.qualityLimitationReason, active: s.active, target: s.targetBitrate || 0,
          limited_bw_s: (s.qualityLimitationDurations || {}).bandwidth || 0, t: s.timestamp};
      }
      if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate !== undefined) {
        out.available = s.availableOutgoingBitrate;
      }
    }
  }
  return out;
}"""


def sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def shape(media_port: int, kbit: int) -> None:
    """htb on lo: class 1:10 (default, 10 Gbit/s), class 1:20 (``kbit``, pfifo of ~200 ms) for
    UDP to ``media_port``."""
    queue = max(2, kbit * 1000 // 8 // 5 // 1200)  # packets of ~1200 bytes in 200 ms
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit")
    sh("tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", str(queue))
    sh(
        "tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
        "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", str(media_port), "0xffff", "flowid", "1:20",
    )


def shaped_class() -> dict[str, int]:
    """What the limited class sent and dropped so far."""
    out = sh("tc", "-s", "class", "show", "dev", "lo", "classid", "1:20")
    found = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)", out)
    if found is None:
        return {"bytes": -1, "packets": -1, "dropped": -1}
    return {"bytes": int(found[1]), "packets": int(found[2]), "dropped": int(found[3])}


def rates(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per layer over the window between snapshots ``a`` and ``b``: sent kbit/s and the state."""
    out: dict[str, Any] = {}
    for rid, s in b["layers"].items():
        before = a["layers"].get(rid)
        dt_s = (s["t"] - before["t"]) / 1000 if before else 0
        kbps = (s["bytes"] - before["bytes"]) * 8 / dt_s / 1000 if before and dt_s > 0 else 0.0
        out[rid] = {"kbps": round(kbps, 1), "width": s["width"], "fps": s["fps"], "reason": s["reason"],
                    "active": s["active"], "target_kbps": round(s["target"] / 1000, 1), "limited_bw_s": s["limited_bw_s"]}
    return out


async def run(kbit: int, transport_cc: bool, settle_s: float, measure_s: float) -> dict[str, Any]:
    sh("ip", "link", "set", "lo", "up")
    # aioice skips 127.0.0.1 when gathering (tests/e2e/conftest.py patches it the same way)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[assignment]
    flags = {"http_port": 0, "media_port": 0, "ice_tcp": False, "publisher_transport_cc": transport_cc}
    node = Node(load(dev=True, flags=flags, environ={}))
    await node.start()
    result: dict[str, Any] = {"kbit": kbit, "transport_cc": transport_cc}
    room = "uplink"
    try:
        shape(node.port.port, kbit)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
            sub = WidthClient(node, room, "viewer", ("room:join", "room:subscribe"))
            sub.widths = []
            try:
                context = await browser.new_context()
                page = await context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.add_init_script(_KEEP_PCS)
                await page.goto(node.url + "/static/room.html")
                tracks = await page.evaluate(_PUBLISH_JS, [token(room, "pub", ("room:join", "room:publish"))])
                result["layers_published"] = [t.get("layers") for t in tracks]
                await sub.join()
                await asyncio.sleep(settle_s)
                a = await page.evaluate(_STATS_JS)
                frames0, tc0, fb0 = len(sub.widths), shaped_class(), node.counters.twcc_feedback_out
                t0 = time.monotonic()
                counts = [frames0]
                while time.monotonic() - t0 < measure_s:
                    await asyncio.sleep(0.5)
                    counts.append(len(sub.widths))
                b = await page.evaluate(_STATS_JS)
                window_s = time.monotonic() - t0
                tc1 = shaped_class()
                result["layers"] = rates(a, b)
                result["available_kbps"] = None if b["available"] is None else round(b["available"] / 1000, 1)
                result["sent_kbps"] = round(sum(v["kbps"] for v in result["layers"].values()), 1)
                result["link_kbps"] = round((tc1["bytes"] - tc0["bytes"]) * 8 / window_s / 1000, 1)
                result["dropped_in_window"] = tc1["dropped"] - tc0["dropped"]
                result["dropped_total"] = tc1["dropped"]
                result["viewer_fps"] = round((len(sub.widths) - frames0) / window_s, 1)
                result["viewer_widths"] = sorted(set(sub.widths[frames0:]))
                # one-second stretches of the window in which the viewer decoded nothing
                result["viewer_stalled_s"] = sum(1 for a, b in zip(counts, counts[2:], strict=False) if a == b) / 2
                result["viewer_frames"] = len(sub.widths)
                result["feedback_per_s"] = round((node.counters.twcc_feedback_out - fb0) / window_s, 1)
                result["page_errors"] = errors[:5]
                result["viewer_pc"] = sub.sub.connectionState
                result["viewer_packets"] = sum(len(r.log.packets) for r in sub.received.values())
                viewer = next((q for q in node.router.participants.values() if q.identity == "viewer"), None)
                result["viewer_layer"] = [
                    None if d.source is None else d.source.rid for d in (viewer.downtracks if viewer else []) if d.kind == "video"
                ]
            finally:
                await sub.close()
                await browser.close()
    finally:
        await node.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kbit", type=int, default=1000)
    parser.add_argument("--no-transport-cc", action="store_true")
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--measure", type=float, default=8.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.kbit, not args.no_transport_cc, args.settle, args.measure))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
