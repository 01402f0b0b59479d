"""Shaped links that change mid-call, and an audio-only viewer behind 64 kbit/s (issue 12's Show
items), run like ``tests/browser/shaped_netns.py`` inside a private network namespace (root):
a node, a Chromium publisher (``room.html``; three simulcast layers 1280/640/320 wide, or its
microphone only), Chromium viewers that publish their microphone only, and an htb class with a
``QUEUE_MS`` byte FIFO that only the node's media to the shaped viewer's port goes through.

``python -m tests.browser.shaped_steps_netns --scenario lift|step|audio`` prints one JSON line:

* ``lift``: the viewer behind ``--kbit`` (700) settles, then the filter is deleted (the limit
  lifted); getStats and the node's layer for the viewer every ``SAMPLE_S``: ``top_after_s`` is
  when the viewer's decoded width is the top layer's (1280) and the node forwards ``f`` to it.
* ``step``: the viewer behind 2,500 kbit/s settles on the top layer, then the class is changed to
  ``--to-kbit`` (500); samples every ``SAMPLE_S``: per ``WINDOW_S`` window the decoded frame rate
  and the growth of ``totalFreezesDuration``; ``recovered_after_s`` is the start of the first
  window from which on, to the end of the observation, each window decodes >= 20 fps (or 80 % of
  what the publisher sends, as ``test_browser_shaped``) and adds no freeze time; ``first_good_s``
  the start of the first such window, ``freeze_after_good_s`` the freeze time added after it.
* ``audio``: the publisher sends its microphone only (``--with-video``: its camera too) and the
  viewer is behind 64 kbit/s; over
  the measuring window, the viewer's inbound audio: samples received and concealed, packets
  received and lost, jitter buffer delay.
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

from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, CHROMIUM_ARGS
from tests.browser.shaped_netns import (
    CAMERA_JS,
    INBOUND_JS,
    OUTBOUND_JS,
    QUEUE_MS,
    VIEWER_JS,
    participant,
    shape_flow,
    shape_setup,
    shaped_drops,
    viewer_state,
    wait_for,
)
from tests.browser.test_browser_room import RoomPage

SAMPLE_S = 0.5
#: the step waits at most this long after settling for the viewer to be on the top layer
TOP_WAIT_S = 20.0
#: the step's recovery is judged over windows this long
WINDOW_S = 2.0
#: the viewer's inbound audio from ``who``: cumulative figures
AUDIO_JS = """async (who) => {
  const room = window.levelchatRoomPage.room;
  if (!room || !room.subscriber) return null;
  const report = await room.subscriber.getStats();
  for (const s of report.values()) {
    if (s.type !== "inbound-rtp" || s.kind !== "audio") continue;
    const remote = room.remoteTracks.get(s.mid);
    if (!remote || remote.participant !== who) continue;
    return { totalSamplesReceived: s.totalSamplesReceived ?? 0, concealedSamples: s.concealedSamples ?? 0,
             silentConcealedSamples: s.silentConcealedSamples ?? 0, concealmentEvents: s.concealmentEvents ?? 0,
             packetsReceived: s.packetsReceived ?? 0, packetsLost: s.packetsLost ?? 0,
             jitterBufferDelay: s.jitterBufferDelay ?? 0, jitterBufferEmittedCount: s.jitterBufferEmittedCount ?? 0,
             bytesReceived: s.bytesReceived ?? 0, jitter: s.jitter ?? 0 };
  }
  return null;
}"""
#: the viewer's inbound video from ``who`` with the report's own time (ms)
VIDEO_JS = INBOUND_JS.replace("framesDropped: s.framesDropped ?? 0 };", "framesDropped: s.framesDropped ?? 0, timestamp: s.timestamp };")
#: the viewer's inbound kinds it receives at all
KINDS_JS = """() => [...window.levelchatRoomPage.room.remoteTracks.values()].map((t) => `${t.participant}/${t.kind}`)"""


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True)


def set_rate(kbit: int) -> None:
    """The shaped class's rate changed in place (its FIFO keeps ``QUEUE_MS`` of the new rate)."""
    sh("tc", "class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", f"{kbit}kbit",
       "ceil", f"{kbit}kbit", "burst", "2k", "cburst", "2k")
    limit = max(kbit * 1000 * QUEUE_MS // 1000 // 8, 3000)
    sh("tc", "qdisc", "change", "dev", "lo", "parent", "1:20", "handle", "20:", "bfifo", "limit", str(limit))


def lift() -> None:
    """The filter deleted: the viewer's media goes through the unlimited default class."""
    sh("tc", "filter", "del", "dev", "lo", "parent", "1:", "prio", "1")


async def _sample(node: Node, page: RoomPage, t0: float) -> dict[str, Any]:
    s = await page.page.evaluate(VIDEO_JS, "ann") or {}
    state = viewer_state(node, page.identity)
    return {"t": round(time.monotonic() - t0, 2), "ts": s.get("timestamp", 0.0), "frames": s.get("framesDecoded", 0),
            "freeze_s": s.get("totalFreezesDuration", 0.0), "width": s.get("frameWidth", 0),
            "kbytes": s.get("bytesReceived", 0) // 1000, "layer": state.get("layer"),
            "estimate_kbps": (state.get("estimate_bps") or 0) // 1000}


async def _series(node: Node, page: RoomPage, seconds: float) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    out = []
    while time.monotonic() - t0 < seconds:
        out.append(await _sample(node, page, t0))
        await asyncio.sleep(SAMPLE_S)
    return out


def first_good(series: list[dict[str, Any]], min_fps: float) -> tuple[float | None, float]:
    """The start of the first good ``WINDOW_S`` window (``recovered_after``'s test) and the
    freeze time added from then to the end of the series."""
    for i, a in enumerate(series):
        b = next((s for s in series[i + 1:] if s["ts"] - a["ts"] >= WINDOW_S * 1000), None)
        if b is None:
            break
        if (b["frames"] - a["frames"]) * 1000 / (b["ts"] - a["ts"]) >= min_fps and b["freeze_s"] - a["freeze_s"] < 0.001:
            return a["t"], round(series[-1]["freeze_s"] - a["freeze_s"], 3)
    return None, 0.0


def recovered_after(series: list[dict[str, Any]], min_fps: float) -> float | None:
    """The start of the first ``WINDOW_S`` window from which on every such window decodes >=
    ``min_fps`` (timed by the reports' own timestamps, not by when this process got to read them
    on a loaded machine) and adds no freeze time (None: never within the series)."""
    windows = []
    for i, a in enumerate(series):
        b = next((s for s in series[i + 1:] if s["ts"] - a["ts"] >= WINDOW_S * 1000), None)
        if b is None:
            break
        span_s = (b["ts"] - a["ts"]) / 1000
        ok = (b["frames"] - a["frames"]) / span_s >= min_fps and b["freeze_s"] - a["freeze_s"] < 0.001
        windows.append((a["t"], ok))
    for i, (t, _) in enumerate(windows):
        if all(ok for _, ok in windows[i:]):
            return t
    return None


async def run(scenario: str, kbit: int, to_kbit: int, settle_s: float, observe_s: float,
              with_video: bool = False) -> dict[str, Any]:
    first_kbit = {"lift": kbit, "step": 2500, "audio": 64}[scenario]
    shape_setup(first_kbit)
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0, "tcp_port": 0, "ice_tcp": False}, environ={}))
    await node.start()
    result: dict[str, Any] = {"scenario": scenario, "kbit": first_kbit, "with_video": with_video}
    room = "shaped-steps"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
            pages: list[RoomPage] = []
            try:
                ann = await RoomPage.open(browser, node, "ann")
                pages.append(ann)
                if scenario == "audio" and not with_video:
                    await ann.page.evaluate(VIEWER_JS)  # the microphone only
                else:
                    await ann.page.evaluate(CAMERA_JS)
                    await ann.page.set_checked("#simulcast", True)
                await ann.join(room)
                ben = await RoomPage.open(browser, node, "ben")
                pages.append(ben)
                await ben.page.evaluate(VIEWER_JS)
                await ben.join(room)

                def addr_of(name: str) -> Any:
                    p = participant(node, name)
                    return p.subscriber.addr if p is not None and p.subscriber is not None else None

                await wait_for(lambda: addr_of("ben") is not None, 30, "ben's subscriber transport")
                shape_flow(node.port.port, addr_of("ben")[1])
                await asyncio.sleep(settle_s)
                if scenario == "step":  # the step bites at once: the viewer is on f, which 500 kbit/s cannot carry
                    t_top = time.monotonic()
                    while viewer_state(node, "ben").get("layer") != "f" and time.monotonic() - t_top < TOP_WAIT_S:
                        await asyncio.sleep(0.2)
                    result["waited_for_f_s"] = round(time.monotonic() - t_top, 1)
                sent_before = await ann.page.evaluate(OUTBOUND_JS) if scenario != "audio" else {}
                t_sent = time.monotonic()
                if scenario == "audio":
                    before = await ben.page.evaluate(AUDIO_JS, "ann")
                    await asyncio.sleep(observe_s)
                    after = await ben.page.evaluate(AUDIO_JS, "ann")
                    result["kinds"] = await ben.page.evaluate(KINDS_JS)
                    result["ben"] = {k: round(after[k] - before[k], 4) if isinstance(after[k], float) else after[k] - before[k]
                                     for k in after} if before and after else {"error": "no inbound audio"}
                    result["ben"]["jitter_s"] = after["jitter"] if after else None
                    result["ben"].update(viewer_state(node, "ben"))
                else:
                    result["before"] = await _sample(node, ben, time.monotonic())
                    if scenario == "lift":
                        lift()
                    else:
                        set_rate(to_kbit)
                        result["to_kbit"] = to_kbit
                    series = await _series(node, ben, observe_s)
                    result["series"] = series
                    sent_after = await ann.page.evaluate(OUTBOUND_JS)
                    elapsed = time.monotonic() - t_sent
                    result["sent_fps"] = {
                        rid: round((s["framesEncoded"] - sent_before.get(rid, {}).get("framesEncoded", 0)) / elapsed, 1)
                        for rid, s in sent_after.items()
                    }
                    if scenario == "lift":
                        result["top_after_s"] = next(
                            (s["t"] for s in series if s["width"] >= 1280 and s["layer"] == "f"), None
                        )
                    else:
                        min_fps = min(20.0, 0.8 * max(result["sent_fps"].values(), default=20.0))
                        result["min_fps"] = min_fps
                        result["recovered_after_s"] = recovered_after(series, min_fps)
                        result["first_good_s"], result["freeze_after_good_s"] = first_good(series, min_fps)
                    result["ben"] = viewer_state(node, "ben")
                cc = node.router.counters.cc
                result["node"] = {"feedback_in": cc.feedback_in, "unstamped": cc.unstamped, "probes": dict(cc.probes),
                                  "switches": cc.switches}
                result["qdisc"] = shaped_drops()
                result["page_errors"] = [e for p in pages for e in p.errors][:5]
            finally:
                await browser.close()
    finally:
        await node.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=("lift", "step", "audio"), required=True)
    parser.add_argument("--kbit", type=int, default=700)
    parser.add_argument("--to-kbit", type=int, default=500)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--observe", type=float, default=12.0)
    parser.add_argument("--with-video", action="store_true", help="audio: the publisher sends its camera too")
    args = parser.parse_args()
    result = asyncio.run(run(args.scenario, args.kbit, args.to_kbit, args.settle, args.observe, args.with_video))
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
