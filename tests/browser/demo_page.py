"""Drive the node's demo page (``sfu/static``) in headless Chromium as a user would: fill, click, read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
Panel = Literal["publish", "watch"]

# Raw getStats() figures of one RTP stream, read independently of the page's own stats code.
_RTP_STATS_JS = """async ([panel, type, kind]) => {
  const session = window.levelchatDemo[panel].session;
  if (!session) return null;
  const report = await session.pc.getStats();
  for (const s of report.values()) {
    if (s.type === type && s.kind === kind) {
      const codec = s.codecId ? report.get(s.codecId) : undefined;
      return {...s, codec: codec ? codec.mimeType : null};
    }
  }
  return null;
}"""

# getStats() figures of every RTP stream of a kind (a simulcast sender has one per layer).
_ALL_RTP_STATS_JS = """async ([panel, type, kind]) => {
  const session = window.levelchatDemo[panel].session;
  if (!session) return [];
  const report = await session.pc.getStats();
  return [...report.values()].filter((s) => s.type === type && s.kind === kind);
}"""

# Mean RGB of the frame a <video> shows now (drawn onto a canvas).
_VIDEO_PIXELS_JS = """(id) => {
  const video = document.getElementById(id);
  if (!video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
  const n = data.length / 4;
  return {width: video.videoWidth, height: video.videoHeight, mean: sum.map((v) => v / n)};
}"""


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class DemoPage:
    page: Page
    errors: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, browser: Browser, node_url: str, query: str = "") -> DemoPage:
        context = await browser.new_context()
        page = await context.new_page()
        demo = cls(page)
        page.on("pageerror", lambda exc: demo.errors.append(f"page error: {exc}"))
        page.on("console", demo._console)
        await page.goto(node_url + "/" + query)
        await page.wait_for_selector("body[data-ready=true]", timeout=5000)
        return demo

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def close(self) -> None:
        await self.page.context.close()

    # -- as a user -----------------------------------------------------------------------------
    async def join_as(self, room: str, identity: str, *, dev_mode: bool = True) -> None:
        await self.page.fill("#room", room)
        await self.page.fill("#identity", identity)
        await self.page.set_checked("#dev-mode", dev_mode)

    async def paste_token(self, panel: Panel, token: str) -> None:
        await self.page.fill(f"#{panel}-token", token)

    async def publish(self, video_codec: str = "") -> None:
        await self.page.select_option("#publish-codec", video_codec)
        await self.page.click("#publish-start")

    async def watch(self, publisher: str = "") -> None:
        await self.page.fill("#watch-identity", publisher)
        await self.page.click("#watch-start")

    async def leave(self, panel: Panel) -> None:
        await self.page.click(f"#{panel}-leave")

    async def state(self, panel: Panel) -> str:
        return await self.page.inner_text(f"#{panel}-state")

    async def log_text(self) -> str:
        return await self.page.inner_text("#log")

    async def shown_stat(self, panel: Panel, key: str) -> str | None:
        """A figure as the page shows it in its stats table (``video.framesDecoded``)."""
        cell = self.page.locator(f'#{panel}-stats td[data-stat="{key}"]')
        return await cell.inner_text() if await cell.count() else None

    async def wait_shown_stat(self, panel: Panel, key: str, above: float = 0, timeout_s: float = 5.0) -> float:
        """Wait until the page's stats table shows ``key`` above ``above`` (it refreshes every second)."""
        await self.page.wait_for_function(
            "([sel, above]) => Number(document.querySelector(sel)?.textContent) > above",
            arg=[f'#{panel}-stats td[data-stat="{key}"]', above],
            timeout=timeout_s * 1000,
        )
        return float(await self.shown_stat(panel, key) or 0)

    async def wait_state(self, panel: Panel, *states: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state(panel)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{panel} state is {state!r}, not {states} after {timeout_s}s; log:\n{await self.log_text()}"
                )
            await asyncio.sleep(0.05)

    # -- what the browser measured ---------------------------------------------------------------
    async def rtp_stats(self, panel: Panel, kind: str) -> dict[str, Any]:
        direction = "outbound-rtp" if panel == "publish" else "inbound-rtp"
        stats: dict[str, Any] | None = await self.page.evaluate(_RTP_STATS_JS, [panel, direction, kind])
        return stats or {}

    async def layer_stats(self, panel: Panel, kind: str) -> list[dict[str, Any]]:
        """Every outbound (publish) or inbound (watch) RTP stream of ``kind``: one per simulcast layer."""
        direction = "outbound-rtp" if panel == "publish" else "inbound-rtp"
        stats: list[dict[str, Any]] = await self.page.evaluate(_ALL_RTP_STATS_JS, [panel, direction, kind])
        return stats

    async def wait_layers_encoded(self, at_least: int, timeout_s: float = 15.0) -> dict[str, int]:
        """Until the publisher's video layers together encoded ``at_least`` frames: frames per rid."""
        deadline = time.monotonic() + timeout_s
        while True:
            per_rid = {str(s.get("rid")): int(s.get("framesEncoded", 0)) for s in await self.layer_stats("publish", "video")}
            if sum(per_rid.values()) >= at_least:
                return per_rid
            if time.monotonic() > deadline:
                raise AssertionError(f"publish video layers encoded {per_rid}, fewer than {at_least} frames")
            await asyncio.sleep(0.1)

    async def wait_rtp(self, panel: Panel, kind: str, name: str, at_least: int, timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.rtp_stats(panel, kind)
            if stats.get(name, 0) >= at_least:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{panel} {kind} {name} stayed below {at_least}: {stats}")
            await asyncio.sleep(0.1)

    async def video_pixels(self, panel: Panel) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.page.evaluate(_VIDEO_PIXELS_JS, f"{panel}-video")
        return result
