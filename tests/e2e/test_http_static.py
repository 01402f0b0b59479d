"""Static files and parser-level refusals (issue 11, defects 6, 8 and 10): ``/static/`` names that
cannot be files (over-long, NUL, traversal) and missing files are ``not_found`` problems; the demo
page and the dev token helper are served only with ``demo_page`` (dev mode's default); requests
aiohttp's parser refuses are ``bad_request`` problems, logged as one rate-limited warning and no
traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from sfu.node import Node
from tests.e2e.rawhttp import exchange, problem_code, request_bytes


def _port(node: Node) -> int:
    return node.http_port


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/static/" + "a" * 5000, 404, "not_found"),  # was ENAMETOOLONG: a 500
        ("/static/nope.js", 404, "not_found"),  # was an empty application/octet-stream 404
        ("/static/%00", 404, "not_found"),
        ("/static/..%2Fconfig.py", 404, "not_found"),
        ("/static/../sfu/config.py", 404, "not_found"),
        ("/static/.hidden", 404, "not_found"),
        ("/static/", 404, "not_found"),
        ("/static/sub/levelchat.js", 404, "not_found"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_static_refusals_are_problems(node: Node, path: str, status: int, code: str) -> None:
    reply = await exchange(_port(node), [request_bytes("GET", path)])
    assert reply.status == status and problem_code(reply) == code, reply


async def test_demo_page_only_in_dev_or_when_configured(node_factory: Callable[..., Awaitable[Node]]) -> None:
    dev = await node_factory()
    quiet = await node_factory(demo_page=False)
    try:
        for path in ("/", "/static/index.html", "/static/room.html", "/static/app.js", "/static/devtoken.js"):
            assert (await exchange(_port(dev), [request_bytes("GET", path)])).status == 200, path
            reply = await exchange(_port(quiet), [request_bytes("GET", path)])
            assert reply.status == 404 and problem_code(reply) == "not_found", (path, reply)
        sdk = ("levelchat.js", "levelchat-signaling.js", "levelchat-errors.js", "levelchat-config.js", "levelchat-data.js",
               "levelchat-transport.js", "levelchat-codecs.js", "levelchat-recording.js", "levelchat-dynacast.js",
               "whip.js", "stats.js")
        for path in [f"/static/{name}" for name in sdk]:  # the SDK, always
            for n in (dev, quiet):
                reply = await exchange(_port(n), [request_bytes("GET", path)])
                assert reply.status == 200 and "javascript" in reply.headers["content-type"], path
        for n in (dev, quiet):  # its TypeScript declarations beside it
            reply = await exchange(_port(n), [request_bytes("GET", "/static/levelchat.d.ts")])
            assert reply.status == 200 and reply.headers["content-type"].startswith("application/typescript"), reply
    finally:
        for n in (dev, quiet):
            await n.stop()


JUNK = [
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /whip/\u00e9t\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
]


async def test_parser_refusals_are_problems_and_quiet(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.INFO, logger="levelchat.http")
    for _ in range(10):
        for raw in JUNK:
            reply = await exchange(_port(node), [raw])
            assert reply.status == 400 and problem_code(reply) == "bad_request", (raw[:40], reply)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage()[:200] for r in errors]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "levelchat.http"]
    assert 1 <= len(warnings) <= 2, [r.getMessage()[:200] for r in warnings]  # 50 refusals, one warning
    assert (await exchange(_port(node), [request_bytes("GET", "/healthz")])).status == 200


async def test_unset_cors_origins_allow_no_cross_origin_call(node_factory: Callable[..., Awaitable[Node]]) -> None:
    """What ``docs/operations.md`` says: outside dev mode's preset, an unset ``cors_origins``
    allows no origin (a preflight is ``forbidden``, a simple request gets no CORS headers)."""
    node = await node_factory(cors_origins=())
    try:
        preflight = await exchange(_port(node), [request_bytes("OPTIONS", "/whip/cors-room", headers=[
            ("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")])])
        assert preflight.status == 403 and problem_code(preflight) == "forbidden", preflight
        simple = await exchange(_port(node), [request_bytes("GET", "/healthz", headers=[("Origin", "https://app.example")])])
        assert simple.status == 200 and "access-control-allow-origin" not in simple.headers
    finally:
        await node.stop()
