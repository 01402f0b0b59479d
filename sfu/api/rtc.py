"""``GET /v1/rtc?access_token=...``: the signaling WebSocket (JSON-RPC 2.0, ``docs/signaling.md``).

The token is checked before anything else: a refused upgrade is answered with the problem as
HTTP (a non-WebSocket client reads it there); a WebSocket client gets it as a JSON-RPC error
with ``"id": null`` and the socket closes with code ``4000 + status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from levelchat.errors import ApiError
from levelchat.tokens import Claims, validate_room
from levelchat.web import bearer_token, new_request_id
from sfu import clock
from sfu.api.jsonrpc import (
    MAX_FRAME_BYTES,
    ErrorResponse,
    Request,
    Response,
    RpcCode,
    RpcError,
    request_id_of,
)
from sfu.api.rtc_session import Link, RtcService, RtcSession
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

RTC_PATH = "/v1/rtc"
RTC_SERVICE_KEY = web.AppKey("rtc_service", RtcService)
RTC_NODE_KEY = web.AppKey("rtc_node", object)
HEARTBEAT_S = 20.0
#: a socket that sends this many frames in one second is refused further frames (``rate_limited``)
MAX_FRAMES_PER_S = 50
_CLOSE = object()


def _authorize(node: Node, request: web.Request) -> tuple[Claims, str, str]:
    claims = node.verifier.verify(bearer_token(request), time.time())
    claims.require("room:join")
    asked = request.query.get("room")
    if asked is not None:
        validate_room(asked)
        claims.require_room_access(asked)
    room = claims.room or asked
    if room is None:
        raise ApiError("bad_request", "the token has no room claim: name the room with ?room=")
    identity = claims.identity
    if identity is None:
        raise ApiError("invalid_identity", "a signaling session needs a token with an identity (sub)")
    return claims, room, identity


async def _refuse(ws: web.WebSocketResponse, err: ApiError) -> None:
    frame = ErrorResponse.of(None, RpcError(RpcCode.REFUSED, err), instance=RTC_PATH, request_id=new_request_id())
    await ws.send_str(bytes(frame).decode())
    await ws.close(code=4000 + err.status, message=err.code.encode())


async def rtc_get(request: web.Request) -> web.StreamResponse:
    node: Node = request.app[RTC_NODE_KEY]  # type: ignore[assignment]
    service = request.app[RTC_SERVICE_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    if not ws.can_prepare(request).ok:
        _authorize(node, request)  # a plain GET: the problem as HTTP
        raise ApiError("bad_request", f"{RTC_PATH} is a WebSocket endpoint: send an Upgrade request")
    try:
        claims, room_id, identity = _authorize(node, request)
    except ApiError as err:
        await ws.prepare(request)
        await _refuse(ws, err)
        return ws
    await ws.prepare(request)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def close(code: int, reason: str) -> None:
        loop.call_soon(queue.put_nowait, (_CLOSE, code, reason))

    session = RtcSession(service, claims, room_id, identity, Link(send=lambda f: queue.put_nowait(f.decode()), close=close))
    writer = loop.create_task(_write(ws, queue))
    try:
        await _read(ws, session, queue)
    finally:
        participant = session.participant
        if participant is not None and not participant.closed:
            node.router.leave(participant, CloseReason.LEFT, clock.now_ms())
        service.forget(session)
        session.ended = True
        session.methods.clear()  # its bound methods refer back to it: no cycle outlives the socket
        queue.put_nowait((_CLOSE, 1000, "closed"))
        try:
            await asyncio.wait_for(writer, 2.0)
        except (TimeoutError, ConnectionError):
            writer.cancel()
    return ws


async def _write(ws: web.WebSocketResponse, queue: asyncio.Queue[Any]) -> None:
    while True:
        item = await queue.get()
        if isinstance(item, tuple) and item and item[0] is _CLOSE:
            if not ws.closed:
                await ws.close(code=item[1], message=item[2].encode()[:120])
            return
        if ws.closed:
            continue
        try:
            await ws.send_str(item)
        except ConnectionError:
            return


async def _read(ws: web.WebSocketResponse, session: RtcSession, queue: asyncio.Queue[Any]) -> None:
    window_start = time.monotonic()
    frames = 0
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
            break
        if session.ended:
            break
        now = time.monotonic()
        if now - window_start >= 1.0:
            window_start, frames = now, 0
        frames += 1
        text = msg.data
        rid = None
        try:
            if frames > MAX_FRAMES_PER_S:
                raise RpcError(
                    RpcCode.REFUSED,
                    ApiError("rate_limited", f"more than {MAX_FRAMES_PER_S} frames in a second", retry_after_s=1),
                )
            req = Request.parse(text)
            rid = req.id
            handler = session.methods.get(req.method)
            if handler is None:
                raise RpcError(RpcCode.METHOD_NOT_FOUND, ApiError("bad_request", f"unknown method {req.method!r}"))
            try:
                result = await handler(req.params)
            except ApiError as err:
                raise RpcError(RpcCode.REFUSED, err) from None
            if rid is not None:
                queue.put_nowait(bytes(Response(rid, result)).decode())
        except RpcError as err:
            rid = rid if rid is not None else request_id_of(text)
            reqid = new_request_id()
            log.info("rtc %s: request %s refused: %s", session.identity, reqid, err.error)
            frame = ErrorResponse.of(rid, err, instance=RTC_PATH, request_id=reqid)
            queue.put_nowait(bytes(frame).decode())
        except Exception:
            reqid = new_request_id()
            log.exception("rtc %s: request %s crashed", session.identity, reqid)
            crash = RpcError(RpcCode.REFUSED, ApiError("internal_error", "unexpected server condition"))
            queue.put_nowait(bytes(ErrorResponse.of(rid, crash, instance=RTC_PATH, request_id=reqid)).decode())


def setup(app: web.Application, node: Node) -> None:
    """Register ``GET /v1/rtc`` and the service behind it (started with the app)."""
    service = RtcService(node)
    app[RTC_SERVICE_KEY] = service
    app[RTC_NODE_KEY] = node

    async def on_startup(_app: web.Application) -> None:
        service.start()

    async def on_cleanup(_app: web.Application) -> None:
        await service.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get(RTC_PATH, rtc_get)
