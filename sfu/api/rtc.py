from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

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
    reply_id,
)
from sfu.api.rtc_session import Link, RtcService, RtcSession
from sfu.api.rtc_socket import FloodLog, FrameRate, LogBudget, Outbox, SocketPolicy
from sfu.api.ws_mask import MaskedWebSocketResponse
from sfu.counters import SignalingCounters, WsClose
from sfu.metrics import SignalingCollector
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

RTC_PATH = "/v1/rtc"
RTC_SERVICE_KEY = web.AppKey("rtc_service", RtcService)
RTC_NODE_KEY = web.AppKey("rtc_node", object)
#: the defaults of ``signaling_heartbeat_s`` and ``signaling_frames_per_s``
HEARTBEAT_S = SocketPolicy.heartbeat_s
MAX_FRAMES_PER_S = SocketPolicy.frames_per_s
#: how long a closing socket may take to flush its close frame before its connection is dropped
CLOSE_GRACE_S = 10.0
#: the send queue's share of the close: its frames went nowhere
CLOSE_SEND_QUEUE_FULL = "send_queue_full"
CLOSE_JOIN_TIMEOUT = "join_timeout"


@dataclass
class Signaling:
    """The node's signaling sockets: their limits, counters and flood log."""

    policy: SocketPolicy
    counters: SignalingCounters
    flood: FloodLog

    @classmethod
    def of(cls, policy: SocketPolicy) -> Signaling:
        counters = SignalingCounters()
        return cls(policy, counters, FloodLog(counters))


RTC_SIGNALING_KEY = web.AppKey("rtc_signaling", Signaling)


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
    sig = request.app[RTC_SIGNALING_KEY]
    ws = MaskedWebSocketResponse(heartbeat=sig.policy.heartbeat_s, max_msg_size=MAX_FRAME_BYTES)
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
    sig.counters.sockets += 1
    try:
        await _serve(request, ws, node, service, sig, RtcIdentity(claims, room_id, identity))
    finally:
        sig.counters.sockets -= 1
        _abort_later(request)
    return ws


@dataclass(frozen=True)
class RtcIdentity:
    claims: Claims
    room_id: str
    identity: str


async def _serve(
    request: web.Request, ws: MaskedWebSocketResponse, node: Node, service: RtcService, sig: Signaling, who: RtcIdentity
) -> None:
    loop = asyncio.get_running_loop()
    overflow: asyncio.Future[None] = loop.create_future()

    def on_overflow() -> None:
        if not overflow.done():
            overflow.set_result(None)

    outbox = Outbox(sig.policy.send_queue_bytes, on_overflow)

    def close(code: int, reason: str) -> None:
        loop.call_soon(outbox.close, code, reason)  # after a reply queued in this same step

    def send(frame: bytes) -> None:
        outbox.put(frame.decode())  # refused past the bound: the overflow closes the socket

    link = Link(send=send, close=close)
    session = RtcSession(service, who.claims, who.room_id, who.identity, link)
    timer = loop.call_later(sig.policy.join_timeout_s, _join_deadline, session, outbox, sig)
    writer = loop.create_task(_write(ws, outbox))
    reader = loop.create_task(_read(ws, session, outbox, sig))
    try:
        await asyncio.wait((reader, overflow), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        reader.cancel()
        participant = session.participant
        if participant is not None and not participant.closed:
            node.router.leave(participant, CloseReason.LEFT, clock.now_ms())
        service.forget(session)
        session.ended = True
        session.methods.clear()  # its bound methods refer back to it: no cycle outlives the socket
        if overflow.done():
            sig.counters.closed[WsClose.SEND_QUEUE_FULL] += 1
            log.warning("rtc %s: closed: the client left more than %d bytes unread", who.identity, outbox.limit)
            writer.cancel()
            ws.discard_input()  # a flood goes on being read (and thrown away) until the close is out
            await _close(ws, WSCloseCode.POLICY_VIOLATION, CLOSE_SEND_QUEUE_FULL)
        else:
            outbox.close(1000, "closed")
            try:
                await asyncio.wait_for(writer, 2.0)
            except (TimeoutError, ConnectionError):
                pass


def _join_deadline(session: RtcSession, outbox: Outbox, sig: Signaling) -> None:
    """A socket that has not joined by now is closed: an unjoined socket may not be held open."""
    if session.participant is not None or session.ended:
        return
    sig.counters.closed[WsClose.JOIN_TIMEOUT] += 1
    err = ApiError("bad_request", f"no join within {sig.policy.join_timeout_s:g} s of connecting")
    frame = ErrorResponse.of(None, RpcError(RpcCode.REFUSED, err), instance=RTC_PATH, request_id=new_request_id())
    outbox.put(bytes(frame).decode())
    session.end(WSCloseCode.POLICY_VIOLATION, CLOSE_JOIN_TIMEOUT)


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    """Close, waiting at most ``CLOSE_GRACE_S`` for the client (in this task, not one of its own)."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError):
        pass


def _abort_later(request: web.Request) -> None:
    """Drop the connection if its close has not gone out by then (a client that does not read
    would otherwise keep its unsent bytes and the socket forever)."""
    transport = request.transport
    if transport is not None:
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)


async def _write(ws: web.WebSocketResponse, outbox: Outbox) -> None:
    while True:
        text = await outbox.next()
        if text is None:
            if outbox.closing is not None and not outbox.overflowed and not ws.closed:
                code, reason = outbox.closing
                await _close(ws, code, reason)
            return
        if ws.closed:
            continue
        try:
            await ws.send_str(text)
        except ConnectionError:
            return


def _count_error(counters: SignalingCounters, exc: object) -> None:
    """An ERROR message from aiohttp: why the socket failed."""
    if isinstance(exc, WebSocketError):
        if exc.code == WSCloseCode.PROTOCOL_ERROR:
            counters.closed[WsClose.PROTOCOL_ERROR] += 1
        elif exc.code == WSCloseCode.MESSAGE_TOO_BIG:
            counters.closed[WsClose.TOO_BIG] += 1
    elif isinstance(exc, TimeoutError):  # the heartbeat's pong did not come
        counters.closed[WsClose.NO_PONG] += 1


async def _read(ws: web.WebSocketResponse, session: RtcSession, outbox: Outbox, sig: Signaling) -> None:
    limit = sig.policy.frames_per_s
    rate = FrameRate(limit)
    budget = LogBudget()
    counters = sig.counters
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
            if msg.type is WSMsgType.ERROR:
                _count_error(counters, msg.data)
            break
        if session.ended:
            break
        counters.frames_in += 1
        n = rate.count()
        if n > limit:
            sig.flood.dropped(session.identity)
            if n <= 2 * limit:  # read for its id: a request learns why it got nothing
                answer, rid = reply_id(msg.data)
                if answer and rid is not None:
                    err = RpcError(
                        RpcCode.REFUSED,
                        ApiError("rate_limited", f"more than {limit} frames in a second", retry_after_s=1),
                    )
                    outbox.put(bytes(ErrorResponse.of(rid, err, instance=RTC_PATH, request_id=new_request_id())).decode())
            continue
        await _handle(session, msg.data, outbox, budget)


async def _handle(session: RtcSession, text: str | bytes, outbox: Outbox, budget: LogBudget) -> None:
    """One frame within the rate: the method's result, or an error (never one to a notification)."""
    rid: int | str | None = None
    parsed = False
    try:
        req = Request.parse(text)
        rid, parsed = req.id, True
        handler = session.methods.get(req.method)
        if handler is None:
            raise RpcError(RpcCode.METHOD_NOT_FOUND, ApiError("bad_request", f"unknown method {req.method!r}"))
        try:
            result = await handler(req.params)
        except ApiError as err:
            raise RpcError(RpcCode.REFUSED, err) from None
        if rid is not None:
            outbox.put(bytes(Response(rid, result)).decode())
    except RpcError as err:
        answer, rid = (rid is not None, rid) if parsed else reply_id(text)
        reqid = new_request_id()
        _log(budget, logging.INFO, "rtc %s: %s %s refused: %s", session.identity,
             "request" if answer else "notification", reqid, err.error)
        if answer:
            outbox.put(bytes(ErrorResponse.of(rid, err, instance=RTC_PATH, request_id=reqid)).decode())
    except Exception:
        reqid = new_request_id()
        if budget.take()[0]:
            log.exception("rtc %s: request %s crashed", session.identity, reqid)
        answer, rid = (rid is not None, rid) if parsed else reply_id(text)
        if answer:
            crash = RpcError(RpcCode.REFUSED, ApiError("internal_error", "unexpected server condition"))
            outbox.put(bytes(ErrorResponse.of(rid, crash, instance=RTC_PATH, request_id=reqid)).decode())


def _log(budget: LogBudget, level: int, msg: str, *args: object) -> None:
    ok, held = budget.take()
    if ok:
        if held:
            msg += " (%d such lines held back)"
            args = (*args, held)
        log.log(level, msg, *args)


def setup(app: web.Application, node: Node) -> None:
    """Register ``GET /v1/rtc`` and the service behind it (started with the app)."""
    service = RtcService(node)
    app[RTC_SERVICE_KEY] = service
    app[RTC_NODE_KEY] = node
    sig = Signaling.of(SocketPolicy.of(node.config))
    app[RTC_SIGNALING_KEY] = sig
    node.metrics_registry.register(SignalingCollector(sig.counters))
    node.recordings.room_notifiers.append(service.tell_room)  # a recording's status

    async def on_startup(_app: web.Application) -> None:
        service.start()

    async def on_cleanup(_app: web.Application) -> None:
        await service.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get(RTC_PATH, rtc_get)
