"""Forwarding one public request to a worker over its unix socket: plain HTTP, and the signaling
WebSocket frame by frame both ways.

What the worker answers comes back unchanged (status, body, its headers: ``Location``,
``ETag``, ``LevelChat-Refused-Track``, ``Retry-After``...), so a worker's refusal reaches the
client as the same catalogue problem, with the front's request id (passed on in
``FRONT_REQUEST_ID``).  The front's own middlewares (CORS, rate limits, request counting) wrap
it; hop-by-hop headers and ``Origin`` (CORS is the front's) are not passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from levelchat.errors import ApiError
from levelchat.web import request_id
from sfu.api.jsonrpc import MAX_FRAME_BYTES
from sfu.api.rtc import CLOSE_GRACE_S, HEARTBEAT_S
from sfu.api.ws_mask import MaskedWebSocketResponse
from sfu.workers.worker import FRONT_REQUEST_ID

log = logging.getLogger(__name__)

WORKER_BASE = "http://worker"
PROXY_TIMEOUT_S = 15.0
#: not passed on in either direction
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Date", "Server",
        "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept",
        "Sec-WebSocket-Protocol", FRONT_REQUEST_ID,
    )
)
#: not passed to workers (CORS is answered by the front)
REQUEST_ONLY = frozenset(("origin", "access-control-request-method", "access-control-request-headers"))


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in REQUEST_ONLY:
            out.add(name, value)
    out[FRONT_REQUEST_ID] = request_id(request)
    if request.remote:
        out["X-Forwarded-For"] = request.remote
    return out


def _response_headers(resp: aiohttp.ClientResponse) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in resp.headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and not lower.startswith("access-control-"):
            out.add(name, value)
    return out


def unavailable(index: int, exc: BaseException) -> ApiError:
    log.warning("worker %d did not answer: %s: %s", index, type(exc).__name__, exc)
    return ApiError("service_unavailable", f"forwarding worker {index} is not answering; retry shortly")


async def forward(
    session: aiohttp.ClientSession, index: int, request: web.Request, *, body: bytes | None = None
) -> web.Response:
    """``request`` to the worker behind ``session``; its answer as the front's response."""
    data = body if body is not None else await request.read()
    try:
        async with session.request(
            request.method,
            WORKER_BASE + request.path_qs,
            headers=_request_headers(request),
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S),
        ) as resp:
            raw = await resp.read()
            return web.Response(status=resp.status, body=raw, headers=_response_headers(resp))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise unavailable(index, exc) from None


#: a download through the front: the worker's answer is copied in chunks this big, never held whole
STREAM_CHUNK_BYTES = 1 << 16
#: and its idle limit (a chunk must come within this long); no total (a recording may be large)
STREAM_IDLE_S = 30.0


async def forward_download(
    session: aiohttp.ClientSession, index: int, request: web.Request
) -> web.StreamResponse | web.Response:
    """A ``GET`` whose answer may be large (a recording's file): a success is streamed to the
    client as it comes from the worker; anything else comes back whole (a problem is small)."""
    try:
        resp = await session.get(
            WORKER_BASE + request.path_qs,
            headers=_request_headers(request),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=PROXY_TIMEOUT_S, sock_read=STREAM_IDLE_S),
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise unavailable(index, exc) from None
    async with resp:
        try:
            if resp.status != 200:
                raw = await resp.read()
                return web.Response(status=resp.status, body=raw, headers=_response_headers(resp))
            out = web.StreamResponse(status=200, headers=_response_headers(resp))
            if resp.content_length is not None:
                out.content_length = resp.content_length
            await out.prepare(request)
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK_BYTES):
                await out.write(chunk)
            await out.write_eof()
            return out
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unavailable(index, exc) from None


async def forward_websocket(
    session: aiohttp.ClientSession, index: int, request: web.Request, *, heartbeat_s: float = HEARTBEAT_S
) -> web.StreamResponse:
    """The signaling WebSocket: connect to the worker first (a failure is a problem over HTTP),
    then accept the client and pass frames both ways until either side closes; the close code
    and reason (``4000 + status``, the catalogue code) are passed on.

    The client's side has the worker's bounds that are about the connection itself: unmasked
    frames are refused (1002), the heartbeat, and a client that does not take a frame within
    ``CLOSE_GRACE_S`` is dropped (frames wait in no queue here: the worker's own send queue fills
    and closes its side).  Join deadline, frame rate and send queue are the worker's."""
    headers = _request_headers(request)
    try:
        upstream = await session.ws_connect(
            WORKER_BASE + request.path_qs,
            headers=headers,
            heartbeat=heartbeat_s,
            max_msg_size=MAX_FRAME_BYTES,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise unavailable(index, exc) from None
    client = MaskedWebSocketResponse(heartbeat=heartbeat_s, max_msg_size=MAX_FRAME_BYTES)
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close()
        raise

    async def to_worker() -> None:
        await _pass_frames(client, upstream)
        if not upstream.closed:
            await _bounded(upstream.close(code=client.close_code or 1000))

    async def to_client() -> None:
        msg = await _pass_frames(upstream, client)
        extra = msg.extra if msg is not None and msg.type is WSMsgType.CLOSE else None
        reason = extra.encode()[:120] if isinstance(extra, str) else b""
        if not client.closed:
            await _bounded(client.close(code=upstream.close_code or 1000, message=reason))

    tasks = [asyncio.ensure_future(to_worker()), asyncio.ensure_future(to_client())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # let the other direction finish its close handshake, briefly
        if pending:
            await asyncio.wait(pending, timeout=2.0)
    except ConnectionError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        if not upstream.closed:
            await _bounded(upstream.close())
        if not client.closed:
            await _bounded(client.close())
        if request.transport is not None:  # a client that reads nothing cannot hold the connection
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, request.transport.abort)
    return client


async def _bounded(close: Awaitable[object]) -> None:
    """Await a close, for at most ``CLOSE_GRACE_S`` (in this task: a close run as a task of its
    own races the frames still being passed)."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await close
    except (TimeoutError, ConnectionError):
        pass


_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pass_frames(src: _Socket, dst: _Socket) -> aiohttp.WSMessage | None:
    """Send on ``dst`` each text or binary frame ``src`` receives; the first other message (a
    close, an error) ends it and is returned; None when ``dst`` failed or took no frame within
    ``CLOSE_GRACE_S``."""
    try:
        while True:
            msg = await src.receive()
            if msg.type is WSMsgType.TEXT:
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await dst.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await dst.send_bytes(msg.data)
            else:
                return msg
    except (TimeoutError, ConnectionError):
        return None
