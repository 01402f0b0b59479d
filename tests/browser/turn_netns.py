"""Run inside a private network namespace (``unshare -n``, as root): a coturn, a node with ICE-TCP
off whose ``turn_servers`` name it, and headless Chromium as ``nobody`` whose UDP nftables drops,
publishing and watching on the demo page with ``iceTransportPolicy: "relay"`` (with ``--all``:
the default policy, so the browser tries its host UDP first, which is dropped).

The browser can reach the node only through coturn over TCP: TURN over TCP on 3478
(``--tcp``), or TURN over TLS on 443 (``--tls``, coturn's certificate self-signed: Chromium is
started with ``--ignore-certificate-errors``).  coturn (root) relays to the node's UDP port.
With ``--sdk``, two participants of ``room.html?relay=1`` (``levelchat.js``, the ICE servers of
the ``join`` result) instead.
``python -m tests.browser.turn_netns --tcp|--tls [--all] [--sdk]`` prints one JSON line: the panels' states,
frames decoded, the node's peers' addresses, coturn's relay port range, UDP packets dropped.
``test_browser_turn`` runs it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM_ARGS, DemoPage
from tests.browser.ice_tcp_netns import isolate, state_within, udp_dropped, wrapper
from tests.browser.test_browser_room import RoomPage
from tests.coturn import Coturn

TURN_PORT = 3478
TURNS_PORT = 443  # a port below 1024: fine for root in a namespace of its own


async def demo(node: Node, browser: Any, room: str, relay: bool, result: dict[str, Any]) -> None:
    page = await DemoPage.open(browser, node.url, "?relay=1" if relay else "")
    await page.join_as(room, "alice")
    await page.publish()
    result["publish"] = await state_within(page, "publish", 40)
    await page.watch("alice")
    result["watch"] = await state_within(page, "watch", 40)
    try:
        result["frames"] = await page.wait_shown_stat("watch", "video.framesDecoded", above=30, timeout_s=30)
    except Exception as exc:  # reported, judged by the test
        result["frames"] = 0
        result["error"] = str(exc)[:500]
    result["candidate_types"] = await page.page.evaluate(
        """async () => {
          const out = [];
          for (const panel of ["publish", "watch"]) {
            const s = window.levelchatDemo?.[panel]?.session;
            if (!s) continue;
            const stats = await s.pc.getStats();
            for (const r of stats.values()) {
              if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
                const local = stats.get(r.localCandidateId);
                out.push([panel, local.candidateType, local.relayProtocol ?? null]);
              }
            }
          }
          return out;
        }"""
    )
    result["page_errors"] = page.errors[:5]


async def sdk(node: Node, browser: Any, room: str, result: dict[str, Any]) -> None:
    """Two participants of ``room.html?relay=1`` (``levelchat.js``: join's ice_servers, relay policy)."""
    pages = [await RoomPage.open(browser, node, name, "?relay=1") for name in ("ann", "ben")]
    for p in pages:
        await p.join(room)
    stats = [await p.wait_receiving([o.identity for o in pages if o is not p], timeout_s=40) for p in pages]
    result["frames"] = min(s[k]["framesDecoded"] for s in stats for k in s if k.endswith("/video"))
    result["page_errors"] = [e for p in pages for e in p.errors][:5]


async def run(tls: bool, relay: bool, mode: str) -> dict[str, Any]:
    isolate()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        turn_dir = Path(tmp) / "coturn"
        turn_dir.mkdir()
        with Coturn(turn_dir, port=TURN_PORT, tls_port=TURNS_PORT) as coturn:
            url = f"turns:127.0.0.1:{TURNS_PORT}?transport=tcp" if tls else f"turn:127.0.0.1:{TURN_PORT}?transport=tcp"
            flags = {
                "http_port": 0, "media_port": 0, "ice_tcp": False,
                "turn_servers": [{"urls": [url], "secret": coturn.secret, "ttl_s": 600}],
            }
            node = Node(load(dev=True, flags=flags, environ={}))
            await node.start()
            try:
                exe = wrapper(Path(tmp))
                args = [*CHROMIUM_ARGS, "--ignore-certificate-errors"] if tls else list(CHROMIUM_ARGS)
                async with async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=str(exe), headless=True, args=args)
                    try:
                        if mode == "sdk":
                            await sdk(node, browser, "turn-sdk", result)
                        else:
                            await demo(node, browser, "turn-browser", relay, result)
                        result["peers"] = {
                            p.identity: [list(t.addr) if t.addr else None for t in (p.publisher, p.subscriber) if t is not None]
                            for p in node.router.participants.values()
                            if not p.identity.startswith("selfcheck-")
                        }
                        result["relay_ports"] = [coturn.min_port, coturn.max_port]
                        result["udp_dropped"] = udp_dropped()
                        result["credentials_issued"] = node.turn_credentials_issued
                    finally:
                        await browser.close()
            finally:
                await node.stop()
            result["coturn_log"] = [line for line in coturn.log().splitlines() if "ALLOCATE" in line and "success" in line][:4]
    return result


def main() -> int:
    args = sys.argv[1:]
    mode = "sdk" if "--sdk" in args else "demo"
    result = asyncio.run(run(tls="--tls" in args, relay="--all" not in args, mode=mode))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
