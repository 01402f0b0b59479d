"""Each SDK-only code of the error reference, produced in Chromium in the situation it describes
and asserted as an error object (``code``, ``retryable``, ``status``, ``detail``): bad options,
no WebRTC, a node that cannot be reached, a protocol mismatch, a refused RPC, getUserMedia
failures, 429s on the upgrade and on requests, a stalled socket (RPC deadline, then the heartbeat
gives up on it and the session is resumed on a new one), and media transports whose ICE (after a
restart and the TURN relay fallback) or DTLS fails (retried once with new transports)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

_PRELUDE = """
  const { LevelChatClient, getLocalMedia } = await import("/static/levelchat.js");
  const { mintDevToken } = await import("/static/devtoken.js");
  const all = ["room:join", "room:publish", "room:subscribe"];
  const tokenFor = (identity) => mintDevToken({ room, identity, scopes: all });
  const err = async (fn) => { try { await fn(); return null; } catch (e) { return e.toJSON ? e.toJSON() : { code: String(e) }; } };
"""

_CODES_JS = """
async ([room, deadPort]) => {
""" + _PRELUDE + """
  const token = await tokenFor("codes");
  const out = {};
  out.badUrl = await err(() => new LevelChatClient({ url: "not a url", token }));
  out.unknown = await err(() => new LevelChatClient({ url: location.origin, token, reconect: true }));
  out.badTimeout = await err(() => new LevelChatClient({ url: location.origin, token, rpcTimeoutMs: 0 }));
  out.missing = await err(() => new LevelChatClient({ url: location.origin }));
  const saved = window.RTCPeerConnection;
  Object.defineProperty(window, "RTCPeerConnection", { value: undefined, configurable: true, writable: true });
  out.unsupported = await err(() => new LevelChatClient({ url: location.origin, token }).connect());
  Object.defineProperty(window, "RTCPeerConnection", { value: saved, configurable: true, writable: true });
  const dead = new LevelChatClient({ url: `http://127.0.0.1:${deadPort}`, token, maxReconnectAttempts: 2, backoffBaseMs: 10, backoffMaxMs: 20 });
  out.deadEvents = [];
  dead.on("error", (e) => out.deadEvents.push(e.code));
  out.connectFailed = await err(() => dead.connect());
  LevelChatClient.protocolVersion = 2;
  out.protocol = await err(() => new LevelChatClient({ url: location.origin, token, data: false }).connect());
  LevelChatClient.protocolVersion = 1;
  const r = await new LevelChatClient({ url: location.origin, token, data: false }).connect();
  out.joinedProtocol = r.joined.protocol;
  out.rpc = await err(() => r.setLayer("TR_nope", "q"));
  await r.leave();
  out.deviceNotFound = await err(() => getLocalMedia({ video: { deviceId: { exact: "no-such-camera" } } }));
  out.constraint = await err(() => getLocalMedia({ video: { width: { exact: 12345 } } }));
  out.mediaUnsupported = await err(() => getLocalMedia({}));
  // a frame whose permissions policy forbids the camera and the microphone
  const frame = document.createElement("iframe");
  frame.allow = "camera 'none'; microphone 'none'";
  frame.src = "/static/room.html";
  const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
  document.body.append(frame);
  await loaded;
  const inner = await frame.contentWindow.eval('import("/static/levelchat.js")');
  out.permission = await err(() => inner.getLocalMedia({ video: true, audio: true }));
  return out;
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _code(err: dict[str, Any] | None, code: str, *, status: int | None, retryable: bool) -> dict[str, Any]:
    assert err is not None, f"no error where {code} was expected"
    assert (err["code"], err["status"], err["retryable"]) == (code, status, retryable), err
    assert isinstance(err["detail"], str) and err["detail"], err
    return err


async def _open(browser: Browser, origin: str) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(origin + "/static/room.html")
    return page


async def test_config_signaling_and_media_codes(node: Node, browser: Browser) -> None:
    page = await _open(browser, node.url)
    r = await page.evaluate(_CODES_JS, ["sdk-codes", _free_port()])
    assert _code(r["badUrl"], "config/invalid", status=400, retryable=False)["field"] == "url"
    assert _code(r["unknown"], "config/invalid", status=400, retryable=False)["field"] == "reconect"
    assert _code(r["badTimeout"], "config/invalid", status=400, retryable=False)["field"] == "rpcTimeoutMs"
    _code(r["missing"], "config/missing-api-key", status=400, retryable=False)
    _code(r["unsupported"], "transport/unsupported", status=None, retryable=False)
    _code(r["connectFailed"], "signaling/connect-failed", status=None, retryable=True)
    assert r["deadEvents"] == ["signaling/connect-failed"], r  # the first attempt's, then the last one thrown
    assert "protocol 1, the client 2" in _code(r["protocol"], "signaling/protocol", status=None, retryable=False)["detail"]
    assert r["joinedProtocol"] == 1
    rpc = _code(r["rpc"], "signaling/rpc-error", status=404, retryable=False)
    assert rpc["inner"]["code"] == "not_found" and rpc["inner"]["status"] == 404, rpc
    _code(r["deviceNotFound"], "media/device-not-found", status=None, retryable=False)
    _code(r["constraint"], "media/constraint-not-satisfied", status=None, retryable=False)
    _code(r["mediaUnsupported"], "media/unsupported", status=None, retryable=False)
    _code(r["permission"], "media/permission-denied", status=None, retryable=False)


_RATE_JS = """
async ([room]) => {
""" + _PRELUDE + """
  const first = await new LevelChatClient({ url: location.origin, token: await tokenFor("one"), data: false, heartbeatMs: 0 }).connect();
  const second = new LevelChatClient({ url: location.origin, token: await tokenFor("two"), data: false, heartbeatMs: 0 });
  const events = [];
  second.on("error", (e) => events.push(e.toJSON()));
  const started = Date.now();
  const r2 = await second.connect();
  const waited = Date.now() - started;
  // requests past the node's frames per second: with no retry, network/rate-limited; with the
  // default retries, each is sent again after the Retry-After and answered
  const strict = await new LevelChatClient({ url: location.origin, token: await tokenFor("three"), data: false,
                                              heartbeatMs: 0, rpcRetries: 0 }).connect();
  // a quiet second first: the burst opens the node's one-second window for this socket
  await new Promise((resolve) => setTimeout(resolve, 1200));
  const outcomes = await Promise.allSettled(Array.from({ length: 80 }, () => strict.call("ping")));
  const limited = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason.toJSON());
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const patient = await Promise.allSettled(Array.from({ length: 80 }, () => first.call("ping")));
  for (const room of [first, r2, strict]) await room.leave();
  return { events, waited, limited, answered: outcomes.length - limited.length,
           patient: patient.filter((o) => o.status === "fulfilled").length };
}
"""


async def test_429s_are_waited_out(node_factory: Callable[..., Any], browser: Browser) -> None:
    # one upgrade per 4 s: the second connect() meets a 429 however slow the machine is
    node: Node = await node_factory(rate_limit_ip_per_s=0.25, rate_limit_ip_burst=1, signaling_frames_per_s=50)
    try:
        page = await _open(browser, node.url)
        r = await page.evaluate(_RATE_JS, ["sdk-rate"])
        limited = [e for e in r["events"] if e["code"] == "network/rate-limited"]
        first = _code(limited[0] if limited else None, "network/rate-limited", status=429, retryable=True)
        assert first["retryAfterMs"] >= 1000 and r["waited"] >= first["retryAfterMs"], r
        assert r["limited"] and all(e["code"] == "network/rate-limited" and e["inner"]["code"] == "rate_limited" for e in r["limited"]), r
        assert r["answered"] == 50 and r["answered"] + len(r["limited"]) == 80, r  # signaling_frames_per_s
        assert r["patient"] == 80, r
    finally:
        await node.stop()


_STALL_JS = """
async ([room, identity, options]) => {
""" + _PRELUDE + """
  const client = new LevelChatClient({ url: location.origin, token: await tokenFor(identity), data: false, ...options });
  const room_ = await client.connect();
  window.stalled = { room: room_, errors: [], states: [], events: [] };
  client.on("error", (e) => window.stalled.errors.push(e.toJSON()));
  room_.on("state", ({ state }) => window.stalled.states.push(state));
  room_.on("reconnected", (v) => window.stalled.events.push(v));
  return room_.participant.sid;
}
"""


async def test_a_stalled_socket_times_out_and_is_replaced(node: Node, browser: Browser) -> None:
    u = urlsplit(node.url)
    assert u.hostname is not None and u.port is not None
    proxy = TcpProxy(u.hostname, u.port)
    await proxy.start()
    try:
        page = await _open(browser, f"http://127.0.0.1:{proxy.port}")
        # no heartbeat: a request on the stalled socket meets its deadline
        await page.evaluate(_STALL_JS, ["sdk-stall", "rpc", {"heartbeatMs": 0, "rpcTimeoutMs": 1000, "rpcRetries": 0}])
        proxy.freeze()
        err = await page.evaluate("async () => { try { await window.stalled.room.call('ping'); return null; } catch (e) { return e.toJSON(); } }")
        _code(err, "signaling/rpc-timeout", status=None, retryable=True)
        # a heartbeat: its unanswered ping gives the socket up, a new one resumes the session
        sid = await page.evaluate(_STALL_JS, ["sdk-stall", "beat", {"heartbeatMs": 500, "rpcTimeoutMs": 2000,
                                                                     "backoffBaseMs": 50, "backoffMaxMs": 200}])
        proxy.freeze()
        await page.wait_for_function("() => window.stalled.events.length > 0", timeout=15000)
        r = await page.evaluate("() => ({errors: window.stalled.errors, states: window.stalled.states, events: window.stalled.events, sid: window.stalled.room.participant.sid})")
        _code(r["errors"][0], "signaling/timeout", status=None, retryable=True)
        assert r["states"] == ["reconnecting", "connected"] and r["events"] == [{"resumed": True}], r
        assert r["sid"] == sid and node.rooms.rooms["sdk-stall"].participants["beat"].sid == sid, r
    finally:
        await proxy.close()


_TRANSPORT_JS = """
async ([room, identity, fault, deadPort, iceTimeoutMs]) => {
""" + _PRELUDE + """
  const faults = {
    // the node's candidates replaced by one where nothing answers: ICE cannot connect
    ice: (sdp) => sdp.split("\\r\\n").filter((l) => !l.startsWith("a=candidate:")).join("\\r\\n")
      .replace(/(a=mid:[^\\r]*)/, `$1\\r\\na=candidate:1 1 udp 2130706431 127.0.0.1 ${deadPort} typ host`),
  };
  if (!window.originalSrd) window.originalSrd = RTCPeerConnection.prototype.setRemoteDescription;
  const original = window.originalSrd;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc) {
    return original.call(this, desc && desc.sdp ? { type: desc.type, sdp: faults[fault](desc.sdp) } : desc);
  };
  const seen = { errors: [], recovery: [] };
  const client = new LevelChatClient({
    url: location.origin, token: await tokenFor(identity), data: false, iceTimeoutMs, iceRestarts: 1,
    iceServers: [{ urls: `turn:127.0.0.1:${deadPort}?transport=udp`, username: "u", credential: "p" }],
  });
  client.on("error", (e) => seen.errors.push(e.toJSON()));
  const r = await client.connect();
  r.on("transport_recovery", (v) => seen.recovery.push(`${v.transport}:${v.action}`));
  const stream = await getLocalMedia({ video: true });
  await r.publish(stream);
  const deadline = Date.now() + 30000;
  while (!seen.errors.some((e) => e.code.startsWith("transport/")) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  RTCPeerConnection.prototype.setRemoteDescription = original;
  seen.states = [r.publisher.iceConnectionState, r.publisher.connectionState];
  await r.leave();
  stream.getTracks().forEach((t) => t.stop());
  return seen;
}
"""


async def test_transport_failures_restart_then_relay_then_give_up(node: Node, browser: Browser) -> None:
    page = await _open(browser, node.url)
    ice = await page.evaluate(_TRANSPORT_JS, ["sdk-ice", "ice", "ice", _free_port(), 1500])
    assert ice["recovery"] == ["publisher:ice-restart", "publisher:relay"], ice
    assert ice["errors"], ice
    failed = _code(ice["errors"][-1], "transport/ice-failed", status=None, retryable=True)
    assert "1 ICE restart(s) and the TURN relay fallback" in failed["detail"], failed


_DTLS_JS = """
async ([room, identity, badTransports]) => {
""" + _PRELUDE + """
  // the node's answers to the first badTransports publisher transports get a fingerprint that
  // is not the node's certificate: ICE connects, DTLS fails; later transports get the true one
  const flip = (sdp) => sdp.replace(/a=fingerprint:sha-256 (\\S+)/g, (m, fp) => "a=fingerprint:sha-256 " + fp.split(":").map((b) => (b === "AB" ? "CD" : "AB")).join(":"));
  if (!window.originalSrd) window.originalSrd = RTCPeerConnection.prototype.setRemoteDescription;
  const original = window.originalSrd;
  const broken = new WeakSet();
  const fine = new WeakSet();
  RTCPeerConnection.prototype.setRemoteDescription = function (desc) {
    if (desc && desc.type === "answer" && !broken.has(this) && !fine.has(this)) {
      (window.dtlsBroken = (window.dtlsBroken ?? 0) + 1) <= badTransports ? broken.add(this) : fine.add(this);
    }
    return original.call(this, desc && desc.sdp && broken.has(this) ? { type: desc.type, sdp: flip(desc.sdp) } : desc);
  };
  window.dtlsBroken = 0;
  const seen = { errors: [], recovery: [], reconnected: [], states: [], disconnected: [] };
  const client = new LevelChatClient({ url: location.origin, token: await tokenFor(identity), data: false, iceTimeoutMs: 8000, dtlsRetries: 1 });
  client.on("error", (e) => seen.errors.push(e.toJSON()));
  const r = await client.connect();
  r.on("transport_recovery", (v) => seen.recovery.push(`${v.transport}:${v.action}:${v.reason}`));
  r.on("reconnected", (v) => seen.reconnected.push(v));
  r.on("state", ({ state }) => seen.states.push(state));
  r.on("disconnected", (v) => seen.disconnected.push(v.reason));
  const stream = await getLocalMedia({ video: true });
  await r.publish(stream);
  const done = () => badTransports > 1 ? seen.errors.some((e) => e.detail.includes("after 1 retry"))
    : seen.reconnected.length > 0 && r.publisher?.connectionState === "connected";
  const deadline = Date.now() + 45000;
  while (!done() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  await new Promise((resolve) => setTimeout(resolve, 1000)); // nothing more comes after
  RTCPeerConnection.prototype.setRemoteDescription = original;
  seen.publisher = r.publisher?.connectionState ?? null;
  seen.state = r.state;
  seen.transports = window.dtlsBroken;
  window.dtlsRoom = r;
  window.dtlsStream = stream;
  return seen;
}
"""
_DTLS_LEAVE_JS = "async () => { await window.dtlsRoom.leave(); window.dtlsStream.getTracks().forEach((t) => t.stop()); }"


async def test_a_dtls_failure_is_retried_with_new_transports(node: Node, browser: Browser) -> None:
    """The error reference: ``transport/dtls-failed`` is retryable, "SDK retries the negotiation".
    The browser's own "failed", or at the latest the deadline with ICE connected, is DTLS's; an ICE
    restart cannot mend it, so the room joins again afresh with new transports (``dtlsRetries``)."""
    page = await _open(browser, node.url)
    # DTLS fails once: one retry, then the new publisher transport connects and media flows
    once = await page.evaluate(_DTLS_JS, ["sdk-dtls", "once", 1])
    assert once["errors"], once
    first = _code(once["errors"][0], "transport/dtls-failed", status=None, retryable=True)
    assert "joining again with new transports (retry 1 of 1)" in first["detail"], once
    assert [e["code"] for e in once["errors"]] == ["transport/dtls-failed"], once
    assert once["recovery"] == ["publisher:rejoin:dtls"], once
    assert once["reconnected"] == [{"resumed": False}] and once["states"] == ["reconnecting", "connected"], once
    assert (once["publisher"], once["state"], once["transports"]) == ("connected", "connected", 2), once
    assert once["disconnected"] == [], once  # the node's end of the failed session is not the room's
    room = node.rooms.rooms["sdk-dtls"]
    assert [p for p in room.participants] == ["once"]  # the old seat ended, the new one published
    published = room.participants["once"]
    assert [t.kind for t in published.tracks.values()] == ["video"]
    before = node.counters.rtp_in[1]
    deadline = asyncio.get_running_loop().time() + 20
    while node.counters.rtp_in[1] < before + 30:
        assert asyncio.get_running_loop().time() < deadline, "no video from the new publisher transport"
        await asyncio.sleep(0.1)
    await page.evaluate(_DTLS_LEAVE_JS)
    # DTLS fails every time: one retry, then final
    always = await page.evaluate(_DTLS_JS, ["sdk-dtls", "always", 99])
    codes = [e["code"] for e in always["errors"]]
    assert codes == ["transport/dtls-failed", "transport/dtls-failed"], always
    final = _code(always["errors"][1], "transport/dtls-failed", status=None, retryable=True)
    assert "after 1 retry(ies) with new transports" in final["detail"], final
    assert always["recovery"] == ["publisher:rejoin:dtls"], always
    assert always["publisher"] != "connected" and always["reconnected"] == [{"resumed": False}], always
    # the node may end the session for the failure it saw too: then it ends here, saying why
    assert always["disconnected"] in ([], ["dtls_failed"]), always
    await page.evaluate(_DTLS_LEAVE_JS)
