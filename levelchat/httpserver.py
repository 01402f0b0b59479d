"""The HTTP server under the node, the multi-worker front and the control plane: aiohttp's, with
every resource a client can hold bounded and every refusal a catalogue problem.

* A request head must be complete within ``header_timeout_s`` of its first byte, a request body
  within ``body_timeout_s`` of its head (the handler's read then fails: ``bad_request``), an idle
  connection is closed after ``keepalive_timeout_s``.
* Connections are counted per peer address and in total (WebSocket upgrades included: the count is
  the connection's); one past a cap is answered ``rate_limited`` (per address) or
  ``service_unavailable`` (total) and closed.  Unix-socket peers (the front talking to its workers)
  are not capped.
* aiohttp's own refusals (a request it cannot parse) are problem+json ``bad_request``; they are
  logged as one rate-limited warning, never as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web, web_protocol, web_server
from aiohttp.web_request import BaseRequest

from levelchat.errors import ApiError, to_http
from levelchat.web import BodyTimeout, new_request_id, problem_response

log = logging.getLogger("levelchat.http")
#: a refused connection is kept this long (reading and dropping) so its client reads the answer
REFUSAL_LINGER_S = 1.0
#: at most this many refused connections linger at once; past it they are closed at once
MAX_LINGERING = 1000
JUNK_WARNING_EVERY_S = 10.0


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 15.0
    max_connections_per_ip: int = 64
    max_connections: int = 10_000

    def problems(self) -> list[str]:
        """What is wrong with these limits (config validation), as ``key: reason`` strings."""
        out = []
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                out.append(f"http_{name}: {value} must be above 0 and at most 3600")
        if self.max_connections < 1 or self.max_connections_per_ip < 1:
            out.append("http_max_connections and http_max_connections_per_ip must be at least 1")
        return out


@dataclass(frozen=True)
class HttpConfig:
    """The ``http_*`` keys a server's config (the node's, the control plane's) inherits: read
    timeouts and connection caps (``docs/operations.md``, "HTTP connections")."""

    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keepalive_timeout_s: float = 15.0
    http_max_connections_per_ip: int = 64
    http_max_connections: int = 10_000

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            header_timeout_s=self.http_header_timeout_s,
            body_timeout_s=self.http_body_timeout_s,
            keepalive_timeout_s=self.http_keepalive_timeout_s,
            max_connections_per_ip=self.http_max_connections_per_ip,
            max_connections=self.http_max_connections,
        )


class JunkLog:
    """One warning per ``every_s`` about requests aiohttp could not parse, with the count since the
    last one: junk from the internet is expected and must not flood the logs."""

    def __init__(self, every_s: float = JUNK_WARNING_EVERY_S) -> None:
        self.every_s = every_s
        self.count = 0
        self._since = 0
        self._last = float("-inf")

    def note(self, peer: str, what: str) -> None:
        self.count += 1
        self._since += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            log.warning("refused %d unparsable request(s) since the last such warning; latest from %s: %s",
                        self._since, peer, what)
            self._last = now
            self._since = 0


class ConnectionRegistry:
    """Open connections per peer address and in total, against the caps."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.by_ip: dict[str, int] = {}
        self.total = 0
        self.refused = 0
        self.lingering = 0

    def admit(self, ip: str) -> ApiError | None:
        """None (and the connection is counted), or the refusal to answer it with."""
        if self.total >= self.limits.max_connections:
            self.refused += 1
            return ApiError("service_unavailable", f"this server holds its maximum of {self.limits.max_connections} connections",
                            retry_after_s=5)
        n = self.by_ip.get(ip, 0)
        if n >= self.limits.max_connections_per_ip:
            self.refused += 1
            return ApiError("rate_limited", f"{ip} holds its maximum of {self.limits.max_connections_per_ip} connections",
                            retry_after_s=5)
        self.by_ip[ip] = n + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        n = self.by_ip.get(ip, 0) - 1
        if n > 0:
            self.by_ip[ip] = n
        else:
            self.by_ip.pop(ip, None)
        self.total -= 1


def raw_problem(err: ApiError, instance: str = "/") -> bytes:
    """A whole HTTP/1.1 response carrying ``err``, for answers given outside a request."""
    p = to_http(err, instance=instance, request_id=new_request_id())
    body = json.dumps(p.body).encode()
    head = [f"HTTP/1.1 {p.status} {HTTPStatus(p.status).phrase}"]
    head += [f"{k}: {v}" for k, v in p.headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


def _catalogue_error(status: int, message: str | None) -> ApiError:
    detail = (message or "").strip().split("\n")[0][:200] or f"HTTP {status}"
    if status == 404:
        return ApiError("not_found", detail)
    if status == 429:
        return ApiError("rate_limited", detail)
    if status == 503:
        return ApiError("service_unavailable", detail)
    if status >= 500:
        return ApiError("internal_error", "unexpected server condition")
    return ApiError("bad_request", detail)


class GuardedRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection protocol with the caps, the header and body timeouts and problem+json
    refusals (see the module's docstring)."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._peer_ip: str | None = None  # counted in the registry while set
        self._refused = False
        self._lingering = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the latest request head parsed

    # -- connection caps ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            ip = str(peer[0])
            refusal = self._guard.registry.admit(ip)
            if refusal is not None:
                self._refuse(transport, refusal)
                return
            self._peer_ip = ip
        super().connection_made(transport)

    def _refuse(self, base: asyncio.BaseTransport, err: ApiError) -> None:
        self._refused = True
        self._force_close = True
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not asyncio's classes
        registry = self._guard.registry
        try:
            transport.write(raw_problem(err))
        except Exception:  # noqa: BLE001 - the peer is already gone
            transport.abort()
            return
        if registry.lingering >= MAX_LINGERING:
            transport.close()
            return
        # keep reading (and dropping) a moment: closing with unread request bytes would reset the
        # connection and the client could lose the answer
        registry.lingering += 1
        self._lingering = True
        transport.write_eof()
        self._loop.call_later(REFUSAL_LINGER_S, transport.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            if self._lingering:
                self._lingering = False
                self._guard.registry.lingering -= 1
            return
        if self._peer_ip is not None:
            self._guard.registry.release(self._peer_ip)
            self._peer_ip = None
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        self._body = None
        super().connection_lost(exc)
        # aiohttp leaves the WebSocket's data-received callback (a bound method of the response,
        # which holds the request, which holds this handler): a reference cycle per closed
        # WebSocket that only the collector's full pass would free, with all it holds
        self._data_received_cb = None

    # -- read timeouts -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        parsing = self._payload_parser is None and not self._upgraded
        if parsing and data and self._header_timer is None and (self._body is None or self._body.is_eof()):
            # the first byte of a request head
            self._header_timer = self._loop.call_later(self._guard.limits.header_timeout_s, self._head_too_slow)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before and self._messages:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            _msg, payload = self._messages[-1]
            self._body = payload
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if not payload.is_eof():
                self._body_timer = self._loop.call_later(self._guard.limits.body_timeout_s, self._body_too_slow, payload)

    def _process_keepalive(self) -> None:
        if self._header_timer is not None:
            # a head is on its way: the header timeout, not the idle one, ends it (and the next
            # response arms the idle timer again, which it does only when no handle is left)
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _head_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None or self._force_close:
            return
        if self._request_in_progress:  # a pipelined head behind a request still being answered
            self._header_timer = self._loop.call_later(self._guard.limits.header_timeout_s, self._head_too_slow)
            return
        self._guard.junk.note(self._peer_ip or "a unix socket peer", "request head not complete in time")
        limit = self._guard.limits.header_timeout_s
        if not self._messages:
            self.transport.write(raw_problem(ApiError("bad_request", f"the request head was not received within {limit:g} s")))
        self.force_close()

    def _body_too_slow(self, payload: Any) -> None:
        self._body_timer = None
        if not payload.is_eof():
            payload.set_exception(BodyTimeout(f"not complete within {self._guard.limits.body_timeout_s:g} s"))
            self.close()  # no further request on this connection

    # -- aiohttp's own refusals --------------------------------------------------------------------
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        err = _catalogue_error(status, message)
        if status >= 500 and exc is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
            log.error("request from %s failed", request.remote, exc_info=exc)
        elif status < 500:
            self._guard.junk.note(str(request.remote), err.detail)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already, the error cannot be")
        resp = problem_response(request, err)  # type: ignore[arg-type]
        resp.force_close()
        return resp


class GuardedServer(web_server.Server):
    """aiohttp's low-level server making ``GuardedRequestHandler`` connections."""

    def __init__(self, handler: Any, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.registry = ConnectionRegistry(limits)
        self.junk = JunkLog()

    def __call__(self) -> web_protocol.RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` serving ``app`` through a ``GuardedServer``."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handle_signals", False)
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout_s, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web_server.Server:
        plain = await super()._make_server()
        raise_fd_limit(self.limits.max_connections + MAX_LINGERING + 1024)
        return GuardedServer(
            plain.request_handler,
            limits=self.limits,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )

    @property
    def guarded(self) -> GuardedServer | None:
        server = self.server
        return server if isinstance(server, GuardedServer) else None


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards ``wanted`` (up to the hard limit), so
    the connection caps are reached before the process runs out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit to %d: %s", target, exc)


def serve_forever(
    app: web.Application, host: str, port: int, limits: HttpLimits, *,
    on_started: Callable[[GuardedAppRunner], Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (a CLI's main loop)."""

    async def main() -> None:
        runner = GuardedAppRunner(app, limits)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            if on_started is not None:
                await on_started(runner)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
