"""levelchat.web on a real aiohttp server over loopback: problems, request ids, CORS, body helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from levelchat.errors import CATALOGUE, TYPE_BASE, ApiError
from levelchat.web import (
    EXPOSED_HEADERS,
    bearer_token,
    json_response,
    make_cors_middleware,
    make_error_middleware,
    read_json,
)


async def _raise_api(request: web.Request) -> web.StreamResponse:
    raise ApiError("room_check_failed", "self-check fails")


async def _raise_limited(request: web.Request) -> web.StreamResponse:
    raise ApiError("rate_limited", "slow down", retry_after_s=3, headers={"X-RateLimit-Reset": "99"})


async def _crash(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("boom")


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ok")


async def _teapot(request: web.Request) -> web.StreamResponse:
    raise web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20)


async def _conflict(request: web.Request) -> web.StreamResponse:
    raise web.HTTPConflict(reason="Busy")


async def _gone(request: web.Request) -> web.StreamResponse:
    raise web.HTTPBadGateway()


async def _read_body(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read())


async def _ok(request: web.Request) -> web.StreamResponse:
    return json_response({"ok": True}, headers={"Location": "/ok/1"})


async def _echo_json(request: web.Request) -> web.StreamResponse:
    return json_response(await read_json(request, max_bytes=64))


async def _token(request: web.Request) -> web.StreamResponse:
    return json_response({"token": bearer_token(request)})


Served = tuple[str, list[tuple[str, int]]]


def _app(origins: tuple[str, ...] | None) -> tuple[web.Application, list[tuple[str, int]]]:
    seen: list[tuple[str, int]] = []
    app = web.Application(
        middlewares=[
            make_error_middleware(lambda request, status: seen.append((request.path, status))),
            make_cors_middleware(origins),
        ],
        client_max_size=1024,
    )
    app.router.add_get("/api", _raise_api)
    app.router.add_get("/limited", _raise_limited)
    app.router.add_get("/crash", _crash)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/too-large", _teapot)
    app.router.add_get("/conflict", _conflict)
    app.router.add_get("/gateway", _gone)
    app.router.add_post("/body", _read_body)
    app.router.add_get("/ok", _ok)
    app.router.add_post("/json", _echo_json)
    app.router.add_get("/token", _token)
    return app, seen


@pytest.fixture
def serve() -> Callable[..., Any]:
    servers: list[TestServer] = []

    async def start(origins: tuple[str, ...] | None = None) -> Served:
        app, seen = _app(origins)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), seen

    start.servers = servers  # type: ignore[attr-defined]
    return start


@pytest.fixture
async def served(serve: Callable[..., Any]) -> AsyncIterator[Served]:
    yield await serve()
    for s in serve.servers:  # type: ignore[attr-defined]
        await s.close()


async def _call(method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any] | str, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, allow_redirects=False, **kw) as resp:
            headers = CIMultiDict(resp.headers)
            if resp.content_type in ("application/json", "application/problem+json"):
                return resp.status, await resp.json(content_type=None), headers
            return resp.status, await resp.text(), headers


PROBLEMS: list[tuple[str, str, dict[str, Any], int, str, dict[str, str | None]]] = [
    # (method, path, request kwargs, status, code, headers expected (None: absent))
    ("GET", "/api", {}, 503, "room_check_failed", {"Retry-After": "30"}),
    ("GET", "/limited", {}, 429, "rate_limited", {"Retry-After": "3", "X-RateLimit-Reset": "99"}),
    ("GET", "/crash", {}, 500, "internal_error", {"Retry-After": None}),
    ("GET", "/nowhere", {}, 404, "not_found", {}),
    ("POST", "/ok", {}, 400, "bad_request", {"Allow": "GET, HEAD"}),
    ("DELETE", "/api", {}, 400, "bad_request", {"Allow": "GET, HEAD"}),
    ("GET", "/too-large", {}, 400, "bad_request", {}),
    ("POST", "/body", {"data": b"x" * 4096}, 400, "bad_request", {}),
    ("GET", "/conflict", {}, 400, "bad_request", {}),
    ("GET", "/gateway", {}, 500, "internal_error", {}),
    ("POST", "/json", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 400, "bad_request", {}),
    ("POST", "/json", {"json": {"a": "x" * 100}}, 400, "bad_request", {}),
    ("POST", "/json", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "bad_request", {}),
    ("POST", "/json", {"json": [1, 2]}, 400, "bad_request", {}),
    ("POST", "/json", {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 400, "bad_request", {}),
]


@pytest.mark.parametrize(("method", "path", "kw", "status", "code", "headers"), PROBLEMS)
async def test_problems(
    served: Served, method: str, path: str, kw: dict[str, Any], status: int, code: str, headers: dict[str, str | None]
) -> None:
    base, seen = served
    got, body, got_headers = await _call(method, base + path, **kw)
    assert got == status
    assert isinstance(body, dict), body
    assert got_headers["Content-Type"] == "application/problem+json"
    assert body["code"] == code
    assert body["title"] == CATALOGUE[code].title
    assert body["type"] == TYPE_BASE + code
    assert body["status"] == status
    assert body["instance"] == path
    assert body["request_id"] == got_headers["X-Request-Id"]
    assert body["request_id"].startswith("req_") and len(body["request_id"]) == 24
    for name, value in headers.items():
        assert got_headers.get(name) == value, name
    assert seen == [(path, status)]


async def test_detail_names_the_problem(served: Served) -> None:
    base, _ = served
    cases: list[tuple[dict[str, Any], str]] = [
        ({"data": b"{}", "headers": {"Content-Type": "text/plain"}}, "content type must be application/json"),
        ({"json": {"a": "x" * 100}}, "larger than 64 bytes"),
        ({"data": b"{nope", "headers": {"Content-Type": "application/json"}}, "not valid JSON"),
        ({"json": [1]}, "must be a JSON object"),
    ]
    for kw, detail in cases:
        _, body, _ = await _call("POST", base + "/json", **kw)
        assert isinstance(body, dict) and detail in body["detail"]


async def test_success_carries_a_request_id_and_redirects_pass(served: Served) -> None:
    base, seen = served
    status, body, headers = await _call("GET", base + "/ok")
    assert (status, body) == (200, {"ok": True})
    assert headers["X-Request-Id"].startswith("req_")
    status, _, headers = await _call("GET", base + "/redirect")
    assert status == 302 and headers["Location"] == "/ok"
    status, body, _ = await _call("POST", base + "/json", json={"a": 1})
    assert (status, body) == (200, {"a": 1})
    ids = {(await _call("GET", base + "/ok"))[2]["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5
    # a raised redirect is re-raised for aiohttp to answer: the callback does not see it
    assert [s for _, s in seen] == [200, 200] + [200] * 5


@pytest.mark.parametrize(
    ("kw", "token"),
    [
        ({"headers": {"Authorization": "Bearer abc.def"}}, "abc.def"),
        ({"headers": {"Authorization": "bearer   abc  "}}, "abc"),
        ({"headers": {"Authorization": "Basic dXNlcjpw"}}, None),
        ({"headers": {"Authorization": "Bearer "}}, None),
        ({"params": {"access_token": "q.token"}}, "q.token"),
        ({"params": {"access_token": ""}}, None),
        ({}, None),
    ],
)
async def test_bearer_token(served: Served, kw: dict[str, Any], token: str | None) -> None:
    base, _ = served
    status, body, _ = await _call("GET", base + "/token", **kw)
    assert status == 200 and body == {"token": token}


PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}


async def test_cors_dev_mode_allows_any_origin(served: Served) -> None:
    base, _ = served
    status, _, headers = await _call(
        "OPTIONS", base + "/ok", headers={**PREFLIGHT, "Access-Control-Request-Headers": "authorization"}
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "authorization"
    assert headers["Access-Control-Expose-Headers"] == EXPOSED_HEADERS
    for name in ("Location", "ETag", "Link", "X-Request-Id", "Retry-After"):
        assert name in headers["Access-Control-Expose-Headers"]
    status, _, headers = await _call("GET", base + "/ok", headers={"Origin": "https://app.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    status, _, headers = await _call("GET", base + "/ok")
    assert "Access-Control-Allow-Origin" not in headers


async def test_cors_allow_list(serve: Callable[..., Any]) -> None:
    base, seen = await serve(("https://app.example",))
    try:
        status, _, headers = await _call("OPTIONS", base + "/ok", headers=PREFLIGHT)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Vary"] == "Origin"
        status, body, headers = await _call(
            "OPTIONS", base + "/ok", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        assert status == 403 and isinstance(body, dict) and body["code"] == "forbidden"
        assert "Access-Control-Allow-Origin" not in headers
        status, _, headers = await _call("GET", base + "/ok", headers={"Origin": "https://evil.example"})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers
        assert [s for _, s in seen] == [204, 403, 200]
    finally:
        for s in serve.servers:  # type: ignore[attr-defined]
            await s.close()
