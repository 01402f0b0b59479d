"""The SDK (``levelchat.js``) recovers by itself in Chromium: its signaling socket goes through a
real TCP relay (``tests.e2e.tcp_proxy``) that the test cuts mid-call and keeps down for a while;
the SDK reconnects with backoff, refreshes its expired token through ``tokenProvider``, resumes
the session, and the viewer (connected to the node directly) never stops receiving media nor
sees the publisher leave.

Bound: the publisher's state is "connected" again within ``OUTAGE_S`` + ``backoffMaxMs`` (1 s)
+ 6 s of slack for a loaded machine after the relay listens again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]
OUTAGE_S = 1.5
SLACK_S = 6.0

# A participant on this page's origin: window.sdk.{room, states, errors, events}; the first
# token the provider hands out expires `firstTtlS` seconds from now (the node's 30 s leeway
# included), the next ones after 600 s.
_JOIN_JS = """
async ([room, identity, scopes, publish, firstTtlS]) => {
  const { LevelChatClient } = await import("/static/levelchat.js");
  const { mintDevToken } = await import("/static/devtoken.js");
  const sdk = { states: [], errors: [], events: [], tokens: 0 };
  window.sdk = sdk;
  const tokenProvider = async () => {
    sdk.tokens += 1;
    const now = Math.floor(Date.now() / 1000);
    if (sdk.tokens === 1 && firstTtlS !== null) {
      return mintDevToken({ room, identity, scopes, nowS: now - 630 + firstTtlS, ttlS: 600 });
    }
    return mintDevToken({ room, identity, scopes });
  };
  const client = new LevelChatClient({ url: location.origin, tokenProvider, data: false,
                                       backoffBaseMs: 200, backoffMaxMs: 1000, maxReconnectAttempts: 40 });
  client.on("error", (err) => sdk.errors.push(err.toJSON()));
  const r = await client.connect();
  sdk.room = r;
  r.on("state", ({ state }) => sdk.states.push([state, Date.now()]));
  for (const name of ["participant_joined", "participant_left", "track_muted", "reconnected"]) {
    r.on(name, (v) => sdk.events.push([name, JSON.parse(JSON.stringify(v)), Date.now()]));
  }
  if (publish) {
    sdk.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: true });
    sdk.tracks = await r.publish(sdk.stream);
  }
  return r.joined.participant.sid;
}
"""

_DECODED_JS = """async (from) => {
  const room = window.sdk.room;
  if (!room.subscriber) return 0;
  let frames = 0;
  for (const s of (await room.subscriber.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.kind === "video" && room.remoteTracks.get(s.mid)?.participant === from) frames += s.framesDecoded ?? 0;
  }
  return frames;
}"""


async def _page(browser: Browser, origin: str, errors: list[str]) -> Page:
    page = await (await browser.new_context()).new_page()
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and "WebSocket" not in msg.text and "Failed to load resource" not in msg.text:
            errors.append(f"console: {msg.text}")

    page.on("console", console)
    await page.goto(origin + "/static/room.html")
    return page


async def _wait(page: Page, js: str, arg: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            sdk = await page.evaluate("() => ({states: window.sdk.states, errors: window.sdk.errors, events: window.sdk.events})")
            raise AssertionError(f"{what}: not within {timeout_s} s; {sdk}")
        await asyncio.sleep(0.1)


async def test_cut_signaling_reconnects_resumes_and_refreshes_the_token(node: Node, browser: Browser) -> None:
    u = urlsplit(node.url)
    assert u.hostname is not None and u.port is not None
    proxy = TcpProxy(u.hostname, u.port)
    await proxy.start()
    errors: list[str] = []
    room = "sdk-recover"
    all_scopes = ["room:join", "room:publish", "room:subscribe"]
    try:
        pub = await _page(browser, f"http://127.0.0.1:{proxy.port}", errors)
        viewer = await _page(browser, node.url, errors)
        await viewer.evaluate(_JOIN_JS, [room, "viewer", ["room:join", "room:subscribe"], False, None])
        sid = await pub.evaluate(_JOIN_JS, [room, "pub", all_scopes, True, 3])
        minted = time.monotonic()
        await _wait(viewer, f"async () => (await ({_DECODED_JS})('pub')) > 20", None, "the viewer decodes pub's video")
        # the first token is past its expiry (and the node's leeway) before the cut
        await asyncio.sleep(max(0.0, minted + 4.0 - time.monotonic()))

        await proxy.stop_listening()
        assert proxy.cut() >= 1  # the signaling socket (and the page's idle HTTP connections)
        at_cut = await viewer.evaluate(_DECODED_JS, "pub")
        await _wait(pub, "() => window.sdk.states.some(([s]) => s === 'reconnecting')", None, "pub notices", 10)
        await asyncio.sleep(OUTAGE_S)
        during = await viewer.evaluate(_DECODED_JS, "pub")
        await proxy.start()  # the path is back
        back = time.monotonic()
        await _wait(pub, "() => window.sdk.room.state === 'connected'", None, "pub reconnected", OUTAGE_S + 1 + SLACK_S)
        reconnect_s = time.monotonic() - back

        sdk = await pub.evaluate("() => ({states: window.sdk.states.map(([s]) => s), errors: window.sdk.errors.map((e) => e.code),"
                                 " events: window.sdk.events, tokens: window.sdk.tokens, sid: window.sdk.room.participant.sid})")
        assert sdk["states"] == ["reconnecting", "connected"], sdk
        assert sdk["errors"][0] == "signaling/closed", sdk
        assert "signaling/connect-failed" in sdk["errors"] and "token/expired" in sdk["errors"], sdk
        assert sdk["tokens"] == 2, sdk  # the provider was asked again on token/expired
        assert [e[1] for e in sdk["events"] if e[0] == "reconnected"] == [{"resumed": True}], sdk
        assert sdk["sid"] == sid, sdk
        assert reconnect_s < 1 + SLACK_S, reconnect_s
        # media went on while signaling was down, and goes on
        assert during > at_cut, (at_cut, during)
        after = await viewer.evaluate(_DECODED_JS, "pub")
        await _wait(viewer, f"async () => (await ({_DECODED_JS})('pub')) > {after + 20}", None, "video goes on")
        # the session works on the new socket; the viewer saw no churn
        await pub.evaluate("() => window.sdk.room.mute(window.sdk.stream.getVideoTracks()[0], true)")
        await _wait(viewer, "() => window.sdk.events.some(([n]) => n === 'track_muted')", None, "track_muted")
        seen = [e[0] for e in await viewer.evaluate("() => window.sdk.events")]
        assert "participant_left" not in seen and seen.count("participant_joined") == 1, seen
        assert list(node.rooms.rooms[room].participants["pub"].tracks)  # still publishing
        assert errors == [], errors
    finally:
        await proxy.close()


async def test_after_the_grace_period_the_sdk_joins_afresh_and_publishes_again(
    node_factory: Callable[..., Any], browser: Browser
) -> None:
    node: Node = await node_factory(signaling_resume_grace_s=1.0)
    u = urlsplit(node.url)
    assert u.hostname is not None and u.port is not None
    proxy = TcpProxy(u.hostname, u.port)
    await proxy.start()
    errors: list[str] = []
    room = "sdk-rejoin"
    try:
        pub = await _page(browser, f"http://127.0.0.1:{proxy.port}", errors)
        viewer = await _page(browser, node.url, errors)
        await viewer.evaluate(_JOIN_JS, [room, "viewer", ["room:join", "room:subscribe"], False, None])
        sid = await pub.evaluate(_JOIN_JS, [room, "pub", ["room:join", "room:publish", "room:subscribe"], True, None])
        await _wait(viewer, f"async () => (await ({_DECODED_JS})('pub')) > 20", None, "the viewer decodes pub's video")
        await proxy.stop_listening()
        proxy.cut()
        # the grace period ends while the path is down: the node lets pub go
        await _wait(viewer, "() => window.sdk.events.some(([n]) => n === 'participant_left')", None, "pub left", 10)
        before = await viewer.evaluate(_DECODED_JS, "pub")
        await proxy.start()
        await _wait(pub, "() => window.sdk.events.some(([n]) => n === 'reconnected')", None, "pub back", 15)
        sdk = await pub.evaluate("() => ({events: window.sdk.events.map(([n, v]) => [n, v]), sid: window.sdk.room.participant.sid,"
                                 " states: window.sdk.states.map(([s]) => s)})")
        assert ["reconnected", {"resumed": False}] in sdk["events"], sdk
        assert sdk["sid"] != sid and sdk["states"] == ["reconnecting", "connected"], sdk
        # its camera is published again on new transports, and the viewer decodes it
        await _wait(viewer, f"async () => (await ({_DECODED_JS})('pub')) > {before + 20}", None, "video again", 20)
        joined = [e[1]["participant"]["sid"] for e in await viewer.evaluate("() => window.sdk.events") if e[0] == "participant_joined"]
        assert joined == [sid, sdk["sid"]], joined
        assert errors == [], errors
    finally:
        await proxy.close()
        await node.stop()
