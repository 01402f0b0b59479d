"""Run inside a private network namespace (``unshare -n``, as root): a node, a Chromium publisher
with three simulcast layers (``room.html``, 1280x720 camera) and Chromium viewers (microphone only,
so the shaped viewer receives the publisher's media and the other viewer's audio), one of them
behind a shaped downlink: an htb class on ``lo`` (default class unlimited) that only what the node
sends from its media port to that viewer's address goes through (a u32 filter on source and
destination port), with a short byte FIFO (``QUEUE_MS`` of the link) that drops like a real
bottleneck.

``python -m tests.browser.shaped_netns --kbit 700 [--two-viewers] [--settle 10] [--measure 15]``
prints one JSON line: per viewer, the getStats deltas over the measuring window (frames decoded,
freeze time, bytes), the frame width at its end, the publisher's sent frame rate, the node's
estimate and layer for the viewer, and its transport-cc/probe/switch counters.
``test_browser_shaped`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from playwright.async_api import async_playwright

from sfu import clock
from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, CHROMIUM_ARGS
from tests.browser.test_browser_room import RoomPage

QUEUE_MS = 200
#: the camera the publisher opens (Chromium's fake device serves any size asked for)
CAMERA_JS = """() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => original(c && c.video
    ? { ...c, video: { width: 1280, height: 720, frameRate: 30 } } : c);
}"""
#: a viewer publishes its microphone only (what reaches the shaped viewer is the publisher's)
VIEWER_JS = """() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => original({ audio: true });
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
             packetsLost: s.packetsLost ?? 0, frameWidth: s.frameWidth ?? 0, framesPerSecond: s.framesPerSecond ?? 0,
             framesDropped: s.framesDropped ?? 0 };
  }
  return null;
}"""
#: the publisher's frames encoded per layer (rid -> framesEncoded, frameWidth)
OUTBOUND_JS = """async () => {
  const room = window.levelchatRoomPage.room;
  const report = await room.publisher.getStats();
  const out = {};
  for (const s of report.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video")
      out[s.rid || "-"] = { framesEncoded: s.framesEncoded ?? 0, frameWidth: s.frameWidth ?? 0,
                            bytesSent: s.bytesSent ?? 0, qualityLimitationReason: s.qualityLimitationReason };
  }
  return out;
}"""


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True)


def shape_setup(kbit: int) -> None:
    sh("ip", "link", "set", "lo", "up")
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", f"{kbit}kbit",
       "ceil", f"{kbit}kbit", "burst", "2k", "cburst", "2k")
    limit = max(kbit * 1000 * QUEUE_MS // 1000 // 8, 3000)
    sh("tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "bfifo", "limit", str(limit))


def shape_flow(sport: int, dport: int) -> None:
    """Only what leaves ``sport`` for ``dport`` (the node's media to one viewer) is limited."""
    sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
       "match", "ip", "sport", str(sport), "0xffff", "match", "ip", "dport", str(dport), "0xffff", "flowid", "1:20")


def shaped_drops() -> dict[str, int]:
    out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    words = out.replace(",", " ").replace("(", " ").replace(")", " ").split()
    result: dict[str, int] = {}
    for i, w in enumerate(words):
        if w == "bfifo":
            for j in range(i, min(i + 40, len(words) - 1)):
                if words[j] == "Sent":
                    result["sent_bytes"] = int(words[j + 1])
                if words[j] == "dropped":
                    result["dropped"] = int(words[j + 1])
                    return result
    return result


def participant(node: Node, identity: str) -> Any:
    return next((p for p in node.router.participants.values() if p.identity == identity), None)


def viewer_state(node: Node, identity: str) -> dict[str, Any]:
    p = participant(node, identity)
    out: dict[str, Any] = {}
    if p is None or p.subscriber is None:
        return out
    sender = p.subscriber.sender
    if sender is not None:
        out["estimate_bps"] = sender.estimate_bps(clock.now_ms())
        out["feedback_seen"] = sender.feedback_seen
        out["padding"] = sender.padding
    dt = next((d for d in p.downtracks if d.kind == "video" and d.source is not None and d.source.group is not None), None)
    if dt is not None and dt.source is not None:
        out["layer"] = dt.source.rid
        out["alloc_rid"] = dt.alloc_rid
        group = dt.source.group
        if group is not None:
            out["layer_kbps"] = {layer.rid: layer.rate_bps // 1000 for layer in group.ranked}
    last = node.router.allocation.last(p)
    if last is not None:
        out["allocated_kbps"] = last.total_bps // 1000
        out["probe_target_kbps"] = (last.probe_target_bps or 0) // 1000
    sub = node.router.allocation._by_sid.get(p.sid)
    if sub is not None:
        out["hold_ms"] = [st.hold_ms for st in sub.allocator._states.values()]
    return out


async def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run(kbit: int, two_viewers: bool, settle_s: float, measure_s: float) -> dict[str, Any]:
    shape_setup(kbit)
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0, "tcp_port": 0, "ice_tcp": False}, environ={}))
    await node.start()
    media_port = node.port.port
    result: dict[str, Any] = {"kbit": kbit}
    room = "shaped"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
            pages: list[RoomPage] = []
            try:
                ann = await RoomPage.open(browser, node, "ann")
                pages.append(ann)
                await ann.page.evaluate(CAMERA_JS)
                await ann.page.set_checked("#simulcast", True)
                await ann.join(room)
                viewers = ["ben", "cat"] if two_viewers else ["ben"]
                for name in viewers:
                    page = await RoomPage.open(browser, node, name)
                    pages.append(page)
                    await page.page.evaluate(VIEWER_JS)
                    await page.join(room)

                def addr_of(name: str) -> Any:
                    p = participant(node, name)
                    return p.subscriber.addr if p is not None and p.subscriber is not None else None

                await wait_for(lambda: addr_of("ben") is not None, 30, "ben's subscriber transport")
                shape_flow(media_port, addr_of("ben")[1])
                by_name = {p.identity: p for p in pages}
                await asyncio.sleep(settle_s)
                before = {n: await by_name[n].page.evaluate(INBOUND_JS, "ann") for n in viewers}
                sent_before = await ann.page.evaluate(OUTBOUND_JS)
                t0 = time.monotonic()
                await asyncio.sleep(measure_s)
                after = {n: await by_name[n].page.evaluate(INBOUND_JS, "ann") for n in viewers}
                sent_after = await ann.page.evaluate(OUTBOUND_JS)
                elapsed = time.monotonic() - t0
                result["elapsed_s"] = round(elapsed, 2)
                result["sent"] = {
                    rid: {"fps": round((s["framesEncoded"] - sent_before.get(rid, {}).get("framesEncoded", 0)) / elapsed, 1),
                          "kbps": round((s["bytesSent"] - sent_before.get(rid, {}).get("bytesSent", 0)) * 8 / elapsed / 1000),
                          "width": s["frameWidth"], "limitation": s["qualityLimitationReason"]}
                    for rid, s in sent_after.items()
                }
                for n in viewers:
                    b, a = before[n], after[n]
                    if a is None or b is None:
                        result[n] = {"error": "no inbound video", "before": b, "after": a}
                        continue
                    result[n] = {
                        "fps": round((a["framesDecoded"] - b["framesDecoded"]) / elapsed, 1),
                        "freeze_s": round(a["totalFreezesDuration"] - b["totalFreezesDuration"], 2),
                        "freezes": a["freezeCount"] - b["freezeCount"],
                        "kbps": round((a["bytesReceived"] - b["bytesReceived"]) * 8 / elapsed / 1000),
                        "lost": a["packetsLost"] - b["packetsLost"],
                        "width": a["frameWidth"],
                        **viewer_state(node, n),
                    }
                cc = node.router.counters.cc
                result["node"] = {
                    "feedback_in": cc.feedback_in, "feedback_limited": cc.feedback_limited,
                    "remb_in": cc.remb_in, "unstamped": cc.unstamped, "probes": dict(cc.probes), "probe_packets": cc.probe_packets,
                    "switches": cc.switches,
                    # pacing: packets that waited in a pacer, their mean wait, and drops by reason
                    "paced": cc.pacer_delay_count,
                    "paced_mean_ms": round(cc.pacer_delay_sum / max(cc.pacer_delay_count, 1), 1),
                    "pacer_drops": list(cc.pacer_drops),
                }
                result["qdisc"] = shaped_drops()
                result["page_errors"] = [e for p in pages for e in p.errors][:5]
            finally:
                await browser.close()
    finally:
        await node.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kbit", type=int, default=700)
    parser.add_argument("--two-viewers", action="store_true")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--measure", type=float, default=15.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.kbit, args.two_viewers, args.settle, args.measure))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
