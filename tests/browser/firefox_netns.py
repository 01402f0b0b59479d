"""Run inside a private network namespace (``unshare -n``, as root): a node, a small page server,
headless Firefox (Debian ``firefox-esr``, no driver) publishing three simulcast layers with WHIP,
and an aiortc WHEP viewer that decodes what the node sends it.

Firefox gathers no host candidate without a default route, hence ``ip route add default dev lo
src 127.0.0.1`` in the namespace; its profile's ``user.js`` turns on fake media, no permission
prompt, and loopback ICE candidates.  The page (served here, over http://127.0.0.1) publishes
with ``sfu/static/whip.js`` and posts the sender's ``outbound-rtp`` stats here every 500 ms.

``python -m tests.browser.firefox_netns`` prints one JSON line: the encodings Firefox reports,
the offer's rid order, the node's ranking and sizes per layer, and the widths the viewer
decoded by default and after each layer request.  ``test_browser_firefox_simulcast`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aioice.ice
from aiohttp import web

from sfu.config import load
from sfu.node import Node
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import choose_layer, published_layers, whep_location
from tests.e2e.test_simulcast_ranking import WidthSubscriber

FIREFOX = Path("/usr/bin/firefox-esr")
STATIC = Path(__file__).resolve().parents[2] / "sfu" / "static"
ROOM = "firefox-simulcast"
USER_JS = """
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
user_pref("media.peerconnection.ice.loopback", true);
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("browser.tabs.remote.autostart", true);
"""
PAGE = """<!doctype html><meta charset="utf-8"><title>firefox simulcast</title>
<script type="module">
import { MediaSession } from "/whip.js";
const q = new URLSearchParams(location.search);
const report = (body) => fetch("/result", { method: "POST", body: JSON.stringify(body) });
try {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  const session = await MediaSession.publish(q.get("node"), q.get("room"), q.get("token"), stream, null, {
    videoEncodings: [{ rid: "f" }, { rid: "h", scaleResolutionDownBy: 2 }, { rid: "q", scaleResolutionDownBy: 4 }],
  });
  const offer = session.pc.localDescription.sdp;
  const simulcast = (offer.match(/a=simulcast:send (.*)/) || [])[1] || "";
  for (;;) {
    const encodings = [];
    (await session.pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        encodings.push({ rid: s.rid, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
                         framesEncoded: s.framesEncoded, bytesSent: s.bytesSent });
      }
    });
    await report({ state: session.pc.connectionState, simulcast, encodings,
                   userAgent: navigator.userAgent });
    await new Promise((r) => setTimeout(r, 500));
  }
} catch (err) {
  await report({ error: String(err) });
}
</script>
"""


def isolate() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "route", "add", "default", "dev", "lo", "src", "127.0.0.1"], check=True)


async def page_server(reports: list[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def whip_js(_: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "whip.js").read_text(), content_type="text/javascript")

    async def result(request: web.Request) -> web.Response:
        reports.append(json.loads(await request.text()))
        del reports[:-20]
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.get("/", page), web.get("/whip.js", whip_js), web.post("/result", result)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def start_firefox(profile: Path, url: str) -> subprocess.Popen[bytes]:
    (profile / "user.js").write_text(USER_JS)
    env = {**os.environ, "HOME": str(profile), "MOZ_HEADLESS": "1"}
    return subprocess.Popen(
        [str(FIREFOX), "--headless", "--no-remote", "--profile", str(profile), url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def watch_layers(node: Node, result: dict[str, Any]) -> None:
    """An aiortc WHEP viewer: the widths it decodes by default, then with q, h, and null."""
    sub = WidthSubscriber(node.url, ROOM, token(ROOM, "viewer"), audio=False)
    sub.widths = []
    try:
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: len(sub.widths) >= 30, 20, "30 frames decoded")
        result["default_widths"] = sorted(set(sub.widths[-10:]))
        location = whep_location(node, ROOM, "viewer")
        viewer_tok = token(ROOM, "viewer", ("room:join", "room:subscribe"))
        for rid in ("q", "h", None):
            answer = await choose_layer(node, location, viewer_tok, rid)
            result[f"layers_after_{rid}"] = answer["layers"]
            seen = len(sub.widths)
            want = next(
                (x["width"] for x in answer["layers"] if x["rid"] == (rid or answer["layers"][-1]["rid"])), 0
            )
            with contextlib.suppress(AssertionError):
                await wait_for(
                    lambda w=want, n=seen: sub.widths[-10:] == [w] * 10 and len(sub.widths) > n + 10,
                    20,
                    f"{want}",
                )
            result[f"widths_{rid}"] = sorted(set(sub.widths[-10:]))
    finally:
        await sub.close()


async def run() -> dict[str, Any]:
    isolate()
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[assignment]
    reports: list[dict[str, Any]] = []
    runner, port = await page_server(reports)
    origin = f"http://127.0.0.1:{port}"
    flags = {"http_port": 0, "media_port": 0, "tcp_port": 0, "cors_origins": [origin]}
    node = Node(load(dev=True, flags=flags, environ={}))
    await node.start()
    result: dict[str, Any] = {}
    profile = Path(tempfile.mkdtemp(prefix="lc-firefox-"))
    firefox = None
    try:
        tok = token(ROOM, "fox")
        firefox = start_firefox(profile, f"{origin}/?node={node.url}&room={ROOM}&token={tok}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            r.get("error") or (r.get("state") == "connected" and len(r.get("encodings", [])) >= 3)
            for r in reports
        ):
            await asyncio.sleep(0.5)
        layers = published_layers(node, "fox")
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: bool(layers) and all(t.width for t in layers.values()), 20, "layer sizes")
        result["sizes"] = {rid: [t.width, t.height] for rid, t in layers.items()}
        result["codec"] = next((t.codec.name for t in layers.values()), None)
        result["packets"] = {rid: t.stats.packets for rid, t in layers.items()}
        group = next((t.group for t in layers.values() if t.group is not None), None)
        result["ranked"] = group.rids if group is not None else []
        result["offer_order"] = [t.rid for t in group.layers] if group is not None else []
        if group is not None:
            await watch_layers(node, result)
        result["firefox"] = reports[-1] if reports else {}
    finally:
        if firefox is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(firefox.pid, 9)
            _, err = firefox.communicate(timeout=30)
            result["firefox_stderr"] = err.decode(errors="replace")[-1500:] if not reports else ""
        shutil.rmtree(profile, ignore_errors=True)
        await node.stop()
        await runner.cleanup()
    return result


def main() -> int:
    result = asyncio.run(run())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
