"""aiohttp glue shared by the node and the control plane: request ids, RFC 7807 problems, CORS.

Every error response leaves through ``problem_response``; every response carries ``X-Request-Id``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from itertools import accumulate
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
        return ApiError("not_found", f"no route for {request.path[:200]}")
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
            log.info("request %s %s %s failed: %s", rid, request.method, request.path[:200], err, extra={"request_id": rid})
            resp = problem_response(request, err)
        except (BodyTimeout, web.RequestPayloadError) as exc:
            log.info("request %s %s %s: body refused: %s", rid, request.method, request.path[:200], exc, extra={"request_id": rid})
            resp = problem_response(request, ApiError("bad_request", f"the request body was refused: {exc}"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            mapped = _from_http_exception(exc, request)
            log.info(
                "request %s %s %s failed: %s", rid, request.method, request.path[:200], mapped, extra={"request_id": rid}
            )
            resp = problem_response(request, mapped)
        except Exception:
            log.exception("request %s %s %s crashed", rid, request.method, request.path[:200], extra={"request_id": rid})
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


class BodyTimeout(TimeoutError):
    """Set on a request's payload when its body is not complete within the body read timeout
    (``levelchat.httpserver``); a ``TimeoutError`` so aiohttp's lingering read lets it pass."""


#: nesting deeper than this in a JSON document is refused before it is parsed
MAX_JSON_DEPTH = 32
#: a string (to its end, closed or not: one pass, never quadratic) or a bracket
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of a JSON text nest deeper than ``limit`` (brackets inside
    strings ignored), found without recursing: C-speed scans, no Python loop per character (the
    signaling WebSocket runs it on every frame)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """A JSON document (HTTP body or WebSocket frame), or ``bad_request`` saying what is wrong:
    larger than ``max_bytes``, nested deeper than ``max_depth``, not UTF-8, not JSON, or using
    ``NaN``/``Infinity``.  Never lets a ``RecursionError`` out."""
    if len(text) > max_bytes:
        raise ApiError("bad_request", f"the JSON document is larger than {max_bytes} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError("bad_request", "the JSON document is not UTF-8") from None
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ApiError("bad_request", f"the JSON document is larger than {max_bytes} bytes")
    if json_too_deep(text, max_depth):
        raise ApiError("bad_request", f"the JSON document is nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError("bad_request", f"body is not valid JSON: {exc}") from None


async def read_body(request: web.Request, max_bytes: int = MAX_BODY_BYTES, what: str = "request body") -> bytes:
    """The whole request body, however the client split it into segments or chunks, or
    ``bad_request``: larger than ``max_bytes``, not received within the body timeout, or badly
    framed (chunked encoding)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError("bad_request", f"the {what} is larger than {max_bytes} bytes")
    buf = bytearray()
    try:
        while True:
            chunk = await request.content.read(max_bytes + 1 - len(buf))
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > max_bytes:
                raise ApiError("bad_request", f"the {what} is larger than {max_bytes} bytes")
    except BodyTimeout as exc:
        raise ApiError("bad_request", f"the {what} was not received in time: {exc}") from None
    except web.RequestPayloadError as exc:
        raise ApiError("bad_request", f"the {what} is badly framed: {exc}") from None


async def read_json(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, or ``bad_request`` saying what is wrong."""
    ctype = request.content_type
    if ctype != "application/json":
        raise ApiError("bad_request", f"content type must be application/json, not {ctype or 'none'}")
    data = parse_json(await read_body(request, max_bytes), max_bytes=max_bytes)
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


def readiness_response(ready: bool, reason: str | None, **more: Any) -> web.Response:
    """``GET /readyz`` of every program, one shape: ``{"ready": true, "reason": null, ...}`` (200),
    or a ``service_unavailable`` problem (503) that carries ``ready: false`` and the ``reason``."""
    if ready:
        return json_response({"ready": True, "reason": None, **more})
    raise ApiError("service_unavailable", f"not ready: {reason}", extra={"ready": False, "reason": reason, **more})
