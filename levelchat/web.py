"""aiohttp glue shared by the node and the control plane: request ids, RFC 7807 problems, CORS.

Every error response leaves through ``problem_response``; every response carries ``X-Request-Id``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from levelchat.errors import ApiError, to_http

log = logging.getLogger("levelchat.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_KEY = web.RequestKey("request_id", str)
MAX_BODY_BYTES = 64 * 1024
EXPOSED_HEADERS = "Location, ETag, Link, X-Request-Id, Retry-After, X-RateLimit-Reset, LevelChat-Refused-Track"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(10)


def request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID_KEY)
    if not isinstance(rid, str):
        rid = new_request_id()
        request[REQUEST_ID_KEY] = rid
    return rid


def problem_response(request: web.Request, err: ApiError) -> web.Response:
    rid = request_id(request)
    p = to_http(err, instance=request.path, request_id=rid)
    return web.Response(status=p.status, body=json.dumps(p.body).encode(), headers=p.headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ApiError:
    if exc.status == 404:
        return ApiError("not_found", f"no route for {request.path}")
    if exc.status == 405:
        allowed = getattr(exc, "allowed_methods", None) or ()
        headers = {"Allow": ", ".join(sorted(allowed))} if allowed else None
        return ApiError("bad_request", f"method {request.method} is not allowed on {request.path}", headers=headers)
    if exc.status == 413:
        return ApiError("bad_request", f"request body is larger than {request.client_max_size} bytes")
    if exc.status == 429:
        return ApiError("rate_limited", "too many requests")
    if 400 <= exc.status < 500:
        return ApiError("bad_request", exc.reason or "bad request")
    return ApiError("internal_error", "unexpected server condition")


def make_error_middleware(
    on_response: Callable[[web.Request, int], None] | None = None,
) -> Middleware:
    """Turn every failure into a catalogue problem; ``on_response`` sees (request, status)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request)
        try:
            resp = await handler(request)
        except ApiError as err:
            log.info("request %s %s %s failed: %s", rid, request.method, request.path, err, extra={"request_id": rid})
            resp = problem_response(request, err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            mapped = _from_http_exception(exc, request)
            log.info(
                "request %s %s %s failed: %s", rid, request.method, request.path, mapped, extra={"request_id": rid}
            )
            resp = problem_response(request, mapped)
        except Exception:
            log.exception("request %s %s %s crashed", rid, request.method, request.path, extra={"request_id": rid})
            resp = problem_response(request, ApiError("internal_error", "unexpected server condition"))
        if not resp.prepared:
            resp.headers["X-Request-Id"] = rid
        if on_response is not None:
            on_response(request, resp.status)
        return resp

    return middleware


def make_cors_middleware(
    allowed_origins: Iterable[str] | None,
) -> Middleware:
    """CORS for WHIP/WHEP/room API. ``None`` allows any origin (dev mode)."""
    origins = None if allowed_origins is None else frozenset(allowed_origins)

    def allowed(origin: str) -> bool:
        return origins is None or origin in origins

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if not allowed(origin):
                raise ApiError("forbidden", f"origin {origin} is not allowed")
            resp: web.StreamResponse = web.Response(status=204)
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type, If-Match"
            )
            resp.headers["Access-Control-Max-Age"] = "600"
        else:
            resp = await handler(request)
        if origin and allowed(origin) and not resp.prepared:
            resp.headers["Access-Control-Allow-Origin"] = origin if origins is not None else "*"
            resp.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            resp.headers["Vary"] = "Origin"
        return resp

    return middleware


async def read_json(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, or ``bad_request`` saying what is wrong."""
    ctype = request.content_type
    if ctype != "application/json":
        raise ApiError("bad_request", f"content type must be application/json, not {ctype or 'none'}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError("bad_request", f"request body is larger than {max_bytes} bytes")
    raw = b""
    while len(raw) <= max_bytes:  # read(n) returns what has arrived: a large body comes in chunks
        chunk = await request.content.read(max_bytes + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > max_bytes:
        raise ApiError("bad_request", f"request body is larger than {max_bytes} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("bad_request", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("bad_request", "body must be a JSON object")
    return data


def bearer_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    token = request.query.get("access_token")
    return token or None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json", headers=headers
    )
