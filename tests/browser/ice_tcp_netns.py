"""Run inside a private network namespace (``unshare -n``, as root): a node, and headless Chromium
as another user (``nobody``) whose UDP nftables drops, publishing and watching on the demo page.

``python -m tests.browser.ice_tcp_netns`` prints one JSON line with what happened: the states of
both panels, frames the viewer decoded, and the transports the node's sessions use.  The node's
own UDP (its self-check probe runs as root) is untouched.  ``test_browser_ice_tcp`` runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from sfu.config import load
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, CHROMIUM_ARGS, DemoPage
from tests.browser.test_browser_room import RoomPage

NOBODY = 65534
RULES = f"""
table inet levelchat_test {{
  chain out {{
    type filter hook output priority 0; policy accept;
    meta skuid {NOBODY} meta l4proto udp counter drop
  }}
}}
"""


def isolate() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["nft", "-f", "-"], input=RULES.encode(), check=True)


def wrapper(workdir: Path) -> Path:
    """An executable that starts Chromium as ``nobody`` (its profile directory handed over)."""
    home = workdir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    os.chmod(workdir, 0o755)
    script = workdir / "chromium-as-nobody"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --user-data-dir=*) chown -R 65534:65534 "${a#--user-data-dir=}";; esac; done\n'
        f"export HOME={home}\n"
        f'exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {CHROMIUM} "$@"\n'
    )
    script.chmod(0o755)
    return script


def udp_dropped() -> int:
    out = subprocess.run(["nft", "list", "table", "inet", "levelchat_test"], capture_output=True, text=True).stdout
    for word, nxt in zip(out.split(), out.split()[1:], strict=False):
        if word == "packets":
            return int(nxt)
    return -1


async def state_within(page: DemoPage, panel: str, timeout_s: float) -> str:
    try:
        return await page.wait_state(panel, "connected", "failed", timeout_s=timeout_s)  # type: ignore[arg-type]
    except AssertionError:
        return await page.state(panel)  # type: ignore[arg-type]


async def demo(node: Node, browser: Any, room: str, ice_tcp: bool, result: dict[str, Any]) -> None:
    """WHIP publish and WHEP watch on the demo page."""
    wait_s = 40 if ice_tcp else 15
    page = await DemoPage.open(browser, node.url)
    await page.join_as(room, "alice")
    await page.publish()
    result["publish"] = await state_within(page, "publish", wait_s)
    await page.watch("alice")
    result["watch"] = await state_within(page, "watch", wait_s)
    try:
        result["frames"] = await page.wait_shown_stat(
            "watch", "video.framesDecoded", above=30, timeout_s=30 if ice_tcp else 3
        )
    except Exception as exc:  # reported, judged by the test
        result["frames"] = 0
        result["error"] = str(exc)[:500]
    result["page_errors"] = page.errors[:5]


async def sdk(node: Node, browser: Any, room: str, result: dict[str, Any]) -> None:
    """Two participants through ``room.html`` and ``levelchat.js`` (the WebSocket signaling)."""
    pages = [await RoomPage.open(browser, node, name) for name in ("ann", "ben")]
    for p in pages:
        await p.join(room)
    stats = [await p.wait_receiving([o.identity for o in pages if o is not p], timeout_s=40) for p in pages]
    result["frames"] = min(s[k]["framesDecoded"] for s in stats for k in s if k.endswith("/video"))
    result["page_errors"] = [e for p in pages for e in p.errors][:5]


async def run(room: str, ice_tcp: bool, mode: str) -> dict[str, Any]:
    isolate()
    flags = {"http_port": 0, "media_port": 0, "tcp_port": 0, "ice_tcp": ice_tcp}
    node = Node(load(dev=True, flags=flags, environ={}))
    await node.start()
    result: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exe = wrapper(Path(tmp))
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(exe), headless=True, args=list(CHROMIUM_ARGS))
                try:
                    if mode == "sdk":
                        await sdk(node, browser, room, result)
                    else:
                        await demo(node, browser, room, ice_tcp, result)
                    result["transports"] = {
                        p.identity: [t.transport_kind for t in (p.publisher, p.subscriber) if t is not None]
                        for p in node.router.participants.values()
                        if not p.identity.startswith("selfcheck-")
                    }
                    result["by_transport"] = node.port.sessions_by_transport()
                    result["udp_dropped"] = udp_dropped()
                    result["self_check_ok"] = node.self_check_ok
                finally:
                    await browser.close()
    finally:
        await node.stop()
    return result


def main() -> int:
    args = sys.argv[1:]
    result = asyncio.run(run("ice-tcp-browser", ice_tcp="--no-ice-tcp" not in args, mode="sdk" if "--sdk" in args else "demo"))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
