"""The SDK's codec and recording codes in Chromium, each in the situation the error reference
describes and asserted as an error object (``code``, ``retryable``, ``status``, ``detail``):
``codec/unsupported`` for a room locked to a codec Chromium cannot encode (raised before any
offer: no ``publish`` frame leaves the page) and for an offer the node refuses (raised as that
code, not ``signaling/rpc-error``); ``recording/not-permitted`` for a room without the recording
policy and for a token without ``recording:write``; ``recording/backend-failed`` for a recordings
directory that cannot be created, to the caller and, through the node's ``recording``
notification, to every participant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.browser.test_browser_sdk_errors import _code, _open
from tests.e2e.conftest import token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

_PRELUDE = """
  const { LevelChatClient, getLocalMedia } = await import("/static/levelchat.js");
  const { mintDevToken } = await import("/static/devtoken.js");
  const all = ["room:join", "room:publish", "room:subscribe"];
  const tokenFor = (identity, extra = []) => mintDevToken({ room, identity, scopes: [...all, ...extra] });
  const err = async (fn) => { try { await fn(); return null; } catch (e) { return e.toJSON ? e.toJSON() : { code: String(e) }; } };
  // every signaling frame the page sends, by method
  if (!window.sentMethods) {
    window.sentMethods = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      try { window.sentMethods.push(JSON.parse(data).method); } catch { /* not JSON */ }
      return send.call(this, data);
    };
  }
  const join = async (identity, extra = [], data = false) => {
    const errors = [];
    const client = new LevelChatClient({ url: location.origin, token: await tokenFor(identity, extra), data });
    client.on("error", (e) => errors.push(e.toJSON()));
    const r = await client.connect();
    return { r, errors };
  };
"""

_CAPS_JS = """
() => ({
  encode: RTCRtpSender.getCapabilities("video").codecs.map((c) => `${c.mimeType} ${c.sdpFmtpLine ?? ""}`),
  decode: RTCRtpReceiver.getCapabilities("video").codecs.map((c) => `${c.mimeType} ${c.sdpFmtpLine ?? ""}`),
})
"""

_CODEC_JS = """
async ([room]) => {
""" + _PRELUDE + """
  const { r, errors } = await join("pub");
  const video = await getLocalMedia({ video: true });
  const audio = await getLocalMedia({ audio: true });
  const before = window.sentMethods.length;
  const refused = await err(() => r.publish(video));
  const sentAfterRefusal = window.sentMethods.slice(before).filter((m) => m === "publish");
  const tracks = await r.publish(audio);  // the room's audio codec is fine
  const out = { codecs: r.joined.codecs, refused, sentAfterRefusal, errors, audioTracks: tracks.map((t) => t.kind),
                senders: r.publisher.getSenders().filter((s) => s.track).map((s) => s.track.kind) };
  await r.leave();
  [...video.getTracks(), ...audio.getTracks()].forEach((t) => t.stop());
  return out;
}
"""


async def _create_room(node: Node, room: str, **policy: Any) -> None:
    tok = token(room, "admin", scopes=("room:create",))
    async with aiohttp.ClientSession() as http, http.post(
        f"{node.url}/v1/rooms", json={"room": room, **policy}, headers={"Authorization": f"Bearer {tok}"}
    ) as resp:
        assert resp.status == 201, await resp.text()


async def test_a_room_of_codecs_chromium_cannot_encode_is_refused_before_the_offer(node: Node, browser: Browser) -> None:
    page = await _open(browser, node.url)
    caps = await page.evaluate(_CAPS_JS)
    assert not any("H265" in c for c in caps["encode"]), caps  # the situation this test needs
    await _create_room(node, "sdk-h265", codecs=["opus", "H265"])
    r = await page.evaluate(_CODEC_JS, ["sdk-h265"])
    assert r["codecs"] == ["opus", "H265"], r  # the join result carries the room's policy
    refused = _code(r["refused"], "codec/unsupported", status=None, retryable=False)
    assert "H265" in refused["detail"] and "VP8" in refused["detail"], refused  # both sides named
    assert r["sentAfterRefusal"] == [], r  # no publish frame left the page for the video
    assert r["audioTracks"] == ["audio"] and r["senders"] == ["audio"], r  # then audio is published alone
    if not any("H265" in c for c in caps["decode"]):  # nor decode it: reported at connect()
        decode = [e for e in r["errors"] if e["code"] == "codec/unsupported"]
        assert len(decode) == 1 and "decode" in decode[0]["detail"] and "video" in decode[0]["detail"], r


_RECORDING_JS = """
async ([room, scopes]) => {
""" + _PRELUDE + """
  const { r, errors } = await join("recorder", scopes);
  const out = { errors };
  out.start = await err(async () => { out.started = await r.startRecording(); });
  if (out.started) out.stopped = await r.stopRecording(out.started.id);
  await r.leave();
  return out;
}
"""


async def test_recording_not_permitted_by_the_room_or_the_token(node: Node, browser: Browser) -> None:
    page = await _open(browser, node.url)
    # a room without the recording policy (made by the join), a token that has recording:write
    policy = await page.evaluate(_RECORDING_JS, ["sdk-rec-policy", ["recording:write"]])
    denied = _code(policy["start"], "recording/not-permitted", status=None, retryable=False)
    assert "does not allow recording" in denied["detail"], denied
    # a room that allows it, a token without recording:write
    await _create_room(node, "sdk-rec-scope", recording=True)
    scope = await page.evaluate(_RECORDING_JS, ["sdk-rec-scope", []])
    denied = _code(scope["start"], "recording/not-permitted", status=None, retryable=False)
    assert "recording:write" in denied["detail"], denied
    # both: it records, and stops
    ok = await page.evaluate(_RECORDING_JS, ["sdk-rec-scope", ["recording:write"]])
    assert ok["start"] is None and ok["started"]["status"] == "recording", ok
    assert ok["stopped"]["id"] == ok["started"]["id"] and ok["stopped"]["status"] in ("finishing", "completed"), ok


_BACKEND_JS = """
async ([room]) => {
""" + _PRELUDE + """
  const starter = await join("starter", ["recording:write"]);
  const other = await join("other");
  const told = [];
  other.r.on("recording", (v) => told.push(v));
  const start = await err(() => starter.r.startRecording());
  const deadline = Date.now() + 20000;
  const failed = (errors) => errors.some((e) => e.code === "recording/backend-failed");
  while (!(failed(other.errors) && failed(starter.errors)) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await starter.r.leave();
  await other.r.leave();
  return { start, told, starterErrors: starter.errors, otherErrors: other.errors };
}
"""


async def test_an_unwritable_recordings_directory_is_backend_failed_for_everyone(
    node_factory: Callable[..., Any], browser: Browser, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # root ignores permissions, not a file in the path
    node: Node = await node_factory(recordings_dir=str(blocker / "recs"))
    try:
        await _create_room(node, "sdk-rec-fail", recording=True)
        page = await _open(browser, node.url)
        r = await page.evaluate(_BACKEND_JS, ["sdk-rec-fail"])
        _code(r["start"], "recording/backend-failed", status=None, retryable=True)
        for errors in (r["starterErrors"], r["otherErrors"]):
            told = [e for e in errors if e["code"] == "recording/backend-failed"]
            assert len(told) == 1, r
            _code(told[0], "recording/backend-failed", status=None, retryable=True)
        assert [t["status"] for t in r["told"]] == ["failed"], r
        assert r["told"][0]["code"] == "recording/backend-failed" and r["told"][0]["recording"].startswith("RC_"), r
        assert r["told"][0]["recording"] in r["otherErrors"][-1]["detail"], r
    finally:
        await node.stop()


_REFUSED_JS = """
async ([room, data]) => {
""" + _PRELUDE + """
  const { r, errors } = await join("pub", [], data);
  await r.dataReady;  // with data channels, the publisher transport is negotiated before the refusal
  const video = await getLocalMedia({ video: true });
  const audio = await getLocalMedia({ audio: true });
  const before = window.sentMethods.length;
  const refused = await err(() => r.publish(video));
  const sent = window.sentMethods.slice(before).filter((m) => m === "publish");
  const tracks = await r.publish(audio);  // the transport was rolled back: audio goes alone
  const out = { refused, sent, errors, tracks: tracks.map((t) => t.kind), state: r.publisher.signalingState,
                senders: r.publisher.getTransceivers().filter((t) => t.sender.track).map((t) => t.sender.track.kind),
                open: r.dataChannels.reliable?.readyState ?? null };
  await r.leave();
  [...video.getTracks(), ...audio.getTracks()].forEach((t) => t.stop());
  return out;
}
"""

#: policy entries naming a profile of a codec Chromium has; the first whose profile it lacks is used
_PROFILES = (("VP9/1", "VP9", "profile-id=1"), ("VP9/3", "VP9", "profile-id=3"), ("AV1/1", "AV1", "profile=1"))


@pytest.mark.parametrize("data", [False, True], ids=["fresh-transport", "negotiated-transport"])
async def test_an_offer_the_node_refuses_is_codec_unsupported_not_rpc_error(node: Node, browser: Browser, data: bool) -> None:
    page = await _open(browser, node.url)
    caps = await page.evaluate(_CAPS_JS)
    entry = next(
        (e for e, name, fmtp in _PROFILES
         if any(c.startswith(f"video/{name} ") for c in caps["encode"]) and not any(fmtp in c for c in caps["encode"])),
        None,
    )  # fmt: skip
    assert entry is not None, caps  # the situation this test needs: a profile Chromium cannot send
    await _create_room(node, "sdk-profile", codecs=["opus", entry])
    r = await page.evaluate(_REFUSED_JS, ["sdk-profile", data])
    refused = _code(r["refused"], "codec/unsupported", status=None, retryable=False)
    assert refused["inner"]["code"] == "codec/unsupported" and entry in refused["detail"], refused  # the node's words
    assert r["sent"] == ["publish"], r  # the name check passed: the node saw the offer and refused it
    assert r["tracks"] == ["audio"] and r["senders"] == ["audio"] and r["state"] == "stable", r
    assert not [e for e in r["errors"] if e["code"] == "codec/unsupported"], r  # Chromium decodes VP9/AV1
    assert r["open"] == ("open" if data else None), r  # the data channels went on
