"""HTTP fuzz over every route of a node and a control plane (issue 11, "Show"), both real processes,
while a WHIP publisher and a WHEP viewer share a room on the node.

Thousands of malformed requests, generated from the routes the two aiohttp routers hold: junk in
path parameters (unicode, NUL, traversal, over-long), wrong methods, bad and deeply nested JSON,
huge bodies, wrong content types, bad tokens, split and chunked bodies, broken chunked framing,
bodies shorter than their Content-Length; and parser-level junk over raw sockets (bad methods,
duplicate Content-Length, oversized headers, NUL bytes, raw non-ASCII paths, TLS on the HTTP port).

Every reply is checked: no 5xx, every refusal a problem+json with a catalogue code and its listed
status, no hang (each request is answered or closed within its timeout; a close without an answer
is accepted only for parser-level junk).  Afterwards both processes are ready, the viewer still
receives frames, and neither logged a traceback or an ERROR.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control.app import create_app as control_app
from control.config import load_config
from sfu.config import load
from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs, admin_token
from tests.e2e.rawhttp import RawReply, chunk, exchange, problem_code, request_bytes, split

log = logging.getLogger(__name__)
LIVE_ROOM = "fuzz-live-room"
TARGET_ROOM = "fuzz-room-1"  # a valid room id that is not the live room: handlers get past validation
TARGET_NODE = "fuzz-node-1"  # registered with the control plane before the fuzz
BODY_TIMEOUT_S = 2.0
PER_PROCESS = 1100
CONCURRENCY = 12
SEED = 11

JUNK_PARAMS = [
    "", "a", "x" * 5000, "%00", "a%00b", "..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "%C3%A9t%C3%A9",
    "%F0%9F%98%80", "%FF%FE", "ab%0Acd", "ab%0D%0Acd", "a%20b", "%25", "{room}", "A" * 65, "-1",
    "%E2%80%AE", "\\", "a;b", "%3Cscript%3E",
]
DEEP = b"[" * 5000 + b"]" * 5000
OBJECTS = [  # every object names an invalid room, so no fuzz request creates or places one
    {"room": 12}, {"room": "../x"}, {"room": "a\u0000bcd", "max_participants": 10**30},
    {"room": 5, "rid": 5}, {"room": None, "codecs": "x", "load": {"rooms": 2**63}},
    {"room": [], "deadline_s": -1}, {"room": "é" * 10, "load": {"participants": -1, "cpu": 1e308}},
    {"room": {"a": 1}, "healthy": "yes", "load": {"rooms": 2**64, "packets_per_s": "x"}},
    {"room": 1.5, "id": "bad id!", "url": 5, "media": None, "capacity": {"max_participants": 2**63}},
    {"room": False, "load": {"rooms": 9223372036854775807}, "empty_timeout_s": 2**70},
]
JSON_BODIES = [json.dumps(o).encode() for o in OBJECTS] + [
    b"{", b"null", b"[]", b'"s"', b"1e999999", b"\xff\xfe{", b'{"room": NaN}', b"9" * 5000, DEEP,
    b'{"a":' * 3000 + b"1" + b"}" * 3000, b"[" * 100_000, b'{"room": "' + b"\\u0000" * 1000 + b'"}', b"",
]
SDP_BODIES = [b"", b"v=0\r\n", b"\x00" * 100, "é".encode("latin-1") * 50, b"a" * (300 * 1024), b"m=" * 20_000,
              b"v=0\r\no=- 1 1 IN IP4 0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"]
TYPES = ["application/json", "application/sdp", "application/trickle-ice-sdpfrag", "text/plain", "",
         "multipart/form-data; boundary=x", "application/json; charset=utf-16", "application/x-www-form-urlencoded"]
TOKENS = ["none", "junk", "valid", "valid", "long"]

PARSER_JUNK = [
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "GET /whip/\u00e9t\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "GET /static/\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",
    b"\r\n\r\n",
    b"GET /\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 2,
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /v1/rtc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\n\r\n",
]


@dataclass
class Req:
    target: str  # "node" or "control"
    parts: list[bytes]
    what: str
    parser_level: bool = False
    timeout_s: float = 15.0


def _routes_of(app: object) -> list[tuple[str, str]]:
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.resource})  # type: ignore[attr-defined]


async def _node_routes() -> list[tuple[str, str]]:
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0}, environ={}))
    await node.start()
    try:
        assert node._runner is not None
        return _routes_of(node._runner.app)
    finally:
        await node.stop()


def _control_routes() -> list[tuple[str, str]]:
    return _routes_of(control_app(load_config(flags={"dev": True}, environ={})))


def _auth(kind: str) -> list[tuple[str, str]]:
    if kind == "none":
        return []
    if kind == "junk":
        return [("Authorization", "Bearer not.a.jwt")]
    if kind == "long":
        return [("Authorization", "Bearer " + "a" * 7000)]
    all_scopes = ("node:admin", "room:admin", "room:create", "node:register", "room:join", "room:publish",
                  "room:subscribe", "recording:write")
    return [("Authorization", f"Bearer {admin_token(*all_scopes)}")]


def _path(template: str, rng: random.Random) -> str:
    out = template
    for name in ("room", "session", "identity", "id", "name"):
        if "{" + name + "}" in out:
            choice = rng.random()
            if choice < 0.25 and name == "room":
                value = TARGET_ROOM
            elif choice < 0.25 and name == "id":
                value = TARGET_NODE
            else:
                value = rng.choice(JUNK_PARAMS)
            out = out.replace("{" + name + "}", value)
    if rng.random() < 0.1:
        out += rng.choice(["?access_token=%00", "?a=%ZZ", "?" + "a=b&" * 500, "?access_token=" + "x" * 3000])
    return out


def _requests(target: str, routes: list[tuple[str, str]], n: int, rng: random.Random) -> list[Req]:
    out: list[Req] = []
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND", "FOO"]
    while len(out) < n:
        method, template = routes[len(out) % len(routes)]
        if rng.random() < 0.15:
            method = rng.choice(methods)
        path = _path(template, rng)
        kind = rng.choice(TOKENS)
        if (method, template) == ("POST", "/v1/node/drain") and kind == "valid":
            kind = "junk"  # a valid drain request would drain the node under test
        headers = _auth(kind)
        if rng.random() < 0.1:
            headers += [("Origin", rng.choice(["https://evil.example", "null", "\u00e9".encode().decode("latin-1")])),
                        ("Access-Control-Request-Method", "POST")]
        body: bytes | None = None
        if method in ("POST", "PUT", "PATCH"):
            body = rng.choice(JSON_BODIES + SDP_BODIES)
            ctype = rng.choice(TYPES) if rng.random() < 0.3 else (
                "application/sdp" if body in SDP_BODIES else "application/json")
            if ctype:
                headers.append(("Content-Type", ctype))
        elif rng.random() < 0.05:
            body = rng.choice(JSON_BODIES)  # a body where none belongs
        shape = rng.random()
        chunked = body is not None and shape < 0.15
        raw = request_bytes(method, path, headers=headers, body=body, chunked=chunked)
        what = f"{method} {path[:80]} body={None if body is None else body[:40]!r} chunked={chunked}"
        timeout_s = 15.0
        if body and shape > 0.97:  # the body stops short of its Content-Length: the body timeout ends it
            raw = raw[: len(raw) - max(1, len(body) // 2)]
            what += " (short body)"
            timeout_s = BODY_TIMEOUT_S + 15
        elif body and chunked and shape < 0.03:  # broken chunk framing
            raw = raw.replace(b"\r\n0\r\n\r\n", b"\r\nZZ\r\n\r\n")
            what += " (bad chunk)"
        parts = split(raw, len(raw) // 2) if rng.random() < 0.1 else [raw]
        out.append(Req(target, parts, what, timeout_s=timeout_s))
    return out


def _target_node_down(req: Req, reply: RawReply) -> bool:
    """The one 5xx a well-formed request may get: the control plane forwards an action to
    ``TARGET_NODE`` (a node drain), whose registered URL nothing listens on, and says so with a
    retryable catalogue problem.  Not a fault of the input, and not a crash."""
    head = req.parts[0].split(b"\r\n", 1)[0]
    if reply.status != 503 or f"/v1/nodes/{TARGET_NODE}/".encode() not in head:
        return False
    return problem_code(reply) == "service_unavailable" and b"did not answer" in reply.body and "retry-after" in reply.headers


def _check(req: Req, reply: RawReply) -> str | None:
    """None, or what is wrong with ``reply``."""
    if reply.status == 0:
        return None if req.parser_level else "closed without an answer"
    if reply.status >= 500 and not _target_node_down(req, reply):
        return f"{reply.status}: {reply.body[:200]!r}"
    if reply.status >= 400 and req.parts[0].startswith(b"HEAD "):  # a HEAD answer has no body to check
        ctype = reply.headers.get("content-type", "")
        return None if ctype.startswith("application/problem+json") else f"{reply.status} as {ctype!r}"
    if reply.status >= 400:
        try:
            problem_code(reply)
        except (AssertionError, ValueError) as exc:
            return f"not a catalogue problem: {exc}"
    return None


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[tuple[Proc, Proc]]:
    procs = Procs(tmp_path)
    env = {"LEVELCHAT_SFU_RATE_LIMIT_IP_PER_S": "0", "LEVELCHAT_SFU_RATE_LIMIT_KEY_PER_S": "0",
           "LEVELCHAT_SFU_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    try:
        node = procs.node("fuzz", None, env=env)
        control = procs.control(env={"LEVELCHAT_CONTROL_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
        await node.wait_healthy()
        await control.wait_healthy()
        yield node, control
    finally:
        procs.stop_all()


async def test_http_fuzz(procs: tuple[Proc, Proc]) -> None:
    node, control = procs
    ports = {"node": int(node.url.rsplit(":", 1)[1]), "control": int(control.url.rsplit(":", 1)[1])}
    rng = random.Random(SEED)
    node_routes, control_routes = await _node_routes(), _control_routes()
    assert len(node_routes) >= 20 and len(control_routes) >= 10
    reqs = _requests("node", node_routes, PER_PROCESS, rng) + _requests("control", control_routes, PER_PROCESS, rng)
    reqs += [Req(t, [j], f"parser junk {j[:40]!r}", parser_level=True) for j in PARSER_JUNK for t in ports]
    reqs += [Req(t, split(j, 7), f"parser junk, split {j[:40]!r}", parser_level=True)
             for j in PARSER_JUNK for t in ports]
    rng.shuffle(reqs)
    assert len(reqs) >= 2000

    registration = {"id": TARGET_NODE, "url": "http://127.0.0.1:9", "media": {"host": "127.0.0.1", "port": 9},
                    "capacity": {"max_participants": 10, "max_rooms": 5}}
    reg = await exchange(ports["control"], [request_bytes("POST", "/v1/nodes", body=json.dumps(registration).encode(),
                         headers=[*_auth("valid"), ("Content-Type", "application/json")])])
    assert reg.status == 201, reg.body

    pub = WhipPublisher(node.url, LIVE_ROOM, token(LIVE_ROOM, "alice"), audio=False)
    viewer = WhepSubscriber(node.url, LIVE_ROOM, token(LIVE_ROOM, "viewer"), audio=False)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    try:
        await pub.connect(timeout=15)
        status, body = await viewer.connect(timeout=15)
        assert status == 201, body
        await wait_for(lambda: viewer.frames["video"] >= 10, 20, "viewer frames before the fuzz")
        frames = viewer.frames["video"]
        sem = asyncio.Semaphore(CONCURRENCY)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(req: Req) -> None:
            async with sem:
                try:
                    reply = await exchange(ports[req.target], req.parts, timeout_s=req.timeout_s)
                except TimeoutError:
                    failures.append(f"{req.target} {req.what}: no answer and no close in {req.timeout_s} s")
                    return
                except OSError as exc:
                    failures.append(f"{req.target} {req.what}: {exc}")
                    return
                statuses[reply.status] = statuses.get(reply.status, 0) + 1
                problem = _check(req, reply)
                if problem:
                    failures.append(f"{req.target} {req.what}: {problem}")

        await asyncio.gather(*(one(r) for r in reqs))
        elapsed = loop.time() - t0
        log.info("%d requests in %.1f s; statuses %s", len(reqs), elapsed, dict(sorted(statuses.items())))
        assert not failures, f"{len(failures)} bad replies:\n" + "\n".join(failures[:30])

        for target in ports:
            ready = await exchange(ports[target], [request_bytes("GET", "/readyz")])
            assert ready.status == 200, (target, ready.body)
        await wait_for(lambda: viewer.frames["video"] > frames + 20, 15, "viewer frames after the fuzz")
    finally:
        await viewer.close()
        await pub.close()
    for proc in (node, control):
        stderr = proc.stderr()
        assert "Traceback" not in stderr and " ERROR " not in stderr, proc.tail(60)
    assert chunk(b"") == b"0\r\n\r\n"
