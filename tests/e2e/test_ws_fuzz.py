"""Issue 11, defect 6 (the WebSocket part) and the JSON-RPC fuzz: thousands of malformed frames on
the signaling socket of a real node process (bad JSON, 100k-deep nesting, wrong types for every
method's parameters, huge ids, binary frames, oversize frames, odd unicode).  No frame makes the
node answer ``internal_error``; every reply is a JSON-RPC error (or result) whose ``data`` is a
catalogue problem with the catalogue's status; notifications get nothing; the node stays ready and
a live WHIP -> WHEP session keeps flowing."""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from levelchat.errors import CATALOGUE
from tests.e2e.ws_support import closed, live_node, metrics, rtc_path

pytestmark = pytest.mark.timeout(240)
log = logging.getLogger(__name__)
ROOM = "fuzz-1"
METHODS = ("join", "publish", "unpublish", "answer", "trickle", "mute", "leave", "ping", "set_layer", "restart_ice")
PARAMS = ("name", "sdp", "track", "muted", "layer", "candidate")
ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**64, 1e308, -0.0, "", "x", "x" * 70_000, "TR_nope", "\u0000", "\U0001f600",
    "\u202e\u2066", [], {}, [1, "a"], {"a": {"b": []}}, "v=0\r\n", "auto", "q",
)
RPC_CODES = {-32700, -32600, -32601, -32602, -32000}
MAX_FRAME = 128 * 1024


@dataclass(frozen=True)
class Case:
    data: str | bytes
    binary: bool = False
    replies: bool = True  # False: a notification, which the node must not answer
    oversize: bool = False  # the node closes the socket (1009)


def _text(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False)


def _req(method: Any, params: Any, rid: Any = 7, **extra: Any) -> str:
    return _text({"jsonrpc": "2.0", "id": rid, "method": method, "params": params, **extra})


def _notification(text: str) -> bool:
    """A JSON-RPC 2.0 call without an id (JSON-RPC 2.0 §4.1: never answered)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(raw, dict) and raw.get("jsonrpc") == "2.0" and isinstance(raw.get("method"), str)
        and bool(raw["method"]) and raw.get("id") is None
    )


def cases(rng: random.Random) -> Iterator[Case]:
    # not JSON at all, or cut short
    good = _req("ping", {})
    for i in range(1, len(good)):
        yield Case(good[:i])
    for _ in range(400):
        yield Case(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), binary=True)
        yield Case("".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 80))))
    for raw in ("", " ", "null", "1", "[]", '"s"', "{}", "NaN", "Infinity", "-Infinity", "[NaN]", "{nope",
                '{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}, "x": NaN}', '"\\ud800"',
                '{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', '{"jsonrpc":"2.0","id":1,"method":"\\u0000"}',
                '{"a":1,"a":2}', "\ufeff" + good, good + good, "[" + good + "]"):
        yield Case(raw)
    # deep nesting: bare, in params, in the id, unbalanced, inside strings (harmless)
    for depth in (33, 1000, 100_000):
        yield Case("[" * depth + "]" * depth if depth < 60_000 else "[" * depth)
        yield Case('{"a":' * min(depth, 20_000) + "1" + "}" * min(depth, 20_000))
        nested = "[" * min(depth, 60_000) + "]" * min(depth, 60_000)
        yield Case('{"jsonrpc":"2.0","id":3,"method":"ping","params":{"x":' + nested + "}}")
        yield Case('{"jsonrpc":"2.0","id":' + nested + ',"method":"ping"}')
    yield Case('{"jsonrpc":"2.0","id":4,"method":"ping","params":{"x":"' + "[" * 100_000 + '"}}')
    # the envelope: versions, methods and ids of every odd type and size
    for value in ODD_VALUES:
        yield Case(_text({"jsonrpc": value, "id": 1, "method": "ping"}))
        yield Case(_req(value, {}))
        if value is not None:
            yield Case(_req("ping", {}, rid=value))
        yield Case(_req("ping", value))
    for rid in (10**400, -(2**63), 2**53 + 1, "i" * 100_000, 1.5, 1e400):
        yield Case(_text({"jsonrpc": "2.0", "id": rid, "method": "ping", "params": {}}).replace("Infinity", "1e400"))
    # every method with every parameter of every odd type, as requests and as notifications
    for method in METHODS:
        for name in PARAMS:
            for value in ODD_VALUES:
                if method == "join" and name == "name" and isinstance(value, str) and 0 < len(value) <= 128:
                    continue  # a valid join: would take a seat (done once below)
                yield Case(_req(method, {name: value}))
                if rng.random() < 0.2:
                    yield Case(_text({"jsonrpc": "2.0", "method": method, "params": {name: value}}), replies=False)
        yield Case(_req(method, {n: rng.choice(ODD_VALUES) for n in PARAMS}))
        yield Case(_req(method, [1, 2]))
        yield Case(_text({"jsonrpc": "2.0", "method": method, "params": [1]}), replies=False)
    # valid requests with a few characters changed (JSON punctuation, escapes, non-ASCII)
    for _ in range(1200):
        text = list(_req(rng.choice(METHODS), {rng.choice(PARAMS): rng.choice(ODD_VALUES[:14])}, rid=rng.randrange(99)))
        for _ in range(rng.randrange(1, 4)):
            text[rng.randrange(len(text))] = rng.choice('{}[]",:0-e. \\u\u00e9\U0001f600')
        mutated = "".join(text)
        yield Case(mutated, replies=not _notification(mutated))
    # binary frames carrying requests, and frames over the limit
    yield Case(good.encode(), binary=True)
    yield Case(("\ufffe" * 10 + good).encode("utf-16"), binary=True)
    yield Case("x" * (MAX_FRAME + 1), oversize=True)
    yield Case(b"\x00" * (MAX_FRAME + 10), binary=True, oversize=True)
    yield Case('{"jsonrpc":"2.0","id":9,"method":"ping","params":{"p":"' + "y" * MAX_FRAME + '"}}', oversize=True)


def check_reply(reply: dict[str, Any], case: Case) -> str:
    """A well-formed JSON-RPC answer with a catalogue problem; returns the problem code (or "result")."""
    assert reply.get("jsonrpc") == "2.0", reply
    if "result" in reply:
        return "result"
    err = reply["error"]
    assert err["code"] in RPC_CODES, (case, reply)
    problem = err["data"]
    spec = CATALOGUE.get(problem["code"])
    assert spec is not None, (case, reply)
    assert problem["code"] != "internal_error", (case, reply)
    assert spec.status is None or problem["status"] == spec.status, (case, reply)
    assert problem["type"].startswith("https://levelchat.io/errors/") and problem["title"] == err["message"]
    return str(problem["code"])


class Fuzzer:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url.replace("http://", "ws://")
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connects = 0
        self.codes: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()

    async def socket(self) -> aiohttp.ClientWebSocketResponse:
        if self.ws is None or self.ws.closed:
            self.connects += 1
            self.ws = await self.http.ws_connect(self.url + rtc_path(ROOM, f"fuzz-{self.connects}"))
            # a seat taken the valid way first, so that the methods past join are reached as well
            await self.ws.send_str(_req("join", {"name": "fuzzer"}, rid="j"))
            while json.loads((await self.ws.receive(timeout=10)).data).get("id") != "j":
                pass
        return self.ws

    async def run(self, case: Case) -> None:
        ws = await self.socket()
        if case.binary:
            await ws.send_bytes(case.data if isinstance(case.data, bytes) else case.data.encode())
        else:
            await ws.send_str(case.data if isinstance(case.data, str) else case.data.decode())
        if case.oversize:
            msg = await ws.receive(timeout=10)
            while msg.type is aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            self.closes[ws.close_code or 0] += 1
            assert ws.close_code == 1009, ws.close_code
            return
        # a marker request after the frame: every reply before the marker's belongs to the frame
        await ws.send_str(_req("ping", {}, rid="marker"))
        replies: list[dict[str, Any]] = []
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                self.closes[ws.close_code or 0] += 1  # "leave" ends the session (1000): go on anew
                data = case.data if isinstance(case.data, str) else case.data.decode("utf-8", "replace")
                assert ws.close_code == 1000 and '"leave"' in data, (case, msg, ws.close_code)
                return
            frame = json.loads(msg.data)
            if "id" not in frame:
                continue  # a notification from the node (offer, participant_joined, ...)
            if frame["id"] == "marker":
                break
            replies.append(frame)
        assert len(replies) == (1 if case.replies else 0), (case, replies)
        for reply in replies:
            self.codes[check_reply(reply, case)] += 1


async def test_jsonrpc_fuzz_gets_catalogue_errors_and_never_an_internal_error(tmp_path: Path) -> None:
    rng = random.Random(11)
    all_cases = list(cases(rng))
    assert len(all_cases) > 3000
    async with live_node(tmp_path, ROOM, signaling_frames_per_s=1_000_000) as live:
        url = live.node.url
        start = time.monotonic()
        frames_before = live.frames()
        before = await metrics(url)
        async with aiohttp.ClientSession() as http:
            fuzz = Fuzzer(http, url)
            for i, case in enumerate(all_cases):
                await fuzz.run(case)
                if i % 500 == 0:
                    async with http.get(url + "/readyz") as resp:
                        assert resp.status == 200, await resp.text()
            if fuzz.ws is not None:
                await fuzz.ws.close()
        took = time.monotonic() - start
        log.info("fuzz: %d frames in %.1f s over %d sockets; replies %s; closes %s",
                 len(all_cases), took, fuzz.connects, dict(fuzz.codes), dict(fuzz.closes))
        assert fuzz.codes["bad_request"] > 2000, fuzz.codes
        after = await metrics(url)
        assert closed(after, "too_big") - closed(before, "too_big") == fuzz.closes[1009] == 3
        received = "levelchat_sfu_signaling_frames_received_total"
        assert after[received] - before[received] >= 2 * len(all_cases) - 3
        assert "internal_error" not in live.node.stderr() and "Traceback" not in live.node.stderr(), live.node.tail(80)
        assert live.frames() > frames_before
        await live.still_flowing()
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
            assert resp.status == 200
