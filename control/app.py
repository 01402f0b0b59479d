"""The control-plane aiohttp application: middlewares, store and HTTP client lifetimes, lease reaper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from control.api import SERVICE_KEY, add_routes
from control.config import ControlConfig
from control.metrics import ControlMetrics
from control.service import ControlService
from control.store import Store, StoreUnavailable, open_store, unavailable_errors
from control.store.bounded import BoundedStore
from control.usage import CONTROL_JOINS
from levelchat.console import add_routes as add_console_routes
from levelchat.errors import ApiError
from levelchat.httpserver import serve_forever
from levelchat.tasks import cancel_and_wait
from levelchat.usage.metrics import UsageCollector, UsageFigures
from levelchat.web import Handler, bearer_token, make_cors_middleware, make_error_middleware
from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.http import WebhookApi
from levelchat.webhooks.http import add_routes as add_webhook_routes
from levelchat.webhooks.metrics import WebhookCollector

log = logging.getLogger("levelchat.control")

UNMATCHED_ROUTE = "unmatched"


def route_template(request: web.Request) -> str:
    """The route's template (``/v1/nodes/{id}``), never the concrete path: ids stay out of labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def make_store_errors_middleware() -> Middleware:
    """A store that cannot be reached answers ``service_unavailable`` (with ``Retry-After``)
    rather than ``internal_error``; the outage itself is logged once by ``BoundedStore``."""
    errors = unavailable_errors()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors as exc:
            if not isinstance(exc, StoreUnavailable):
                log.warning("store unavailable during %s %s: %s", request.method, request.path, exc)
            raise ApiError("service_unavailable", f"the control plane's store is unavailable: {exc}") from None

    return middleware


def reap_interval_s(config: ControlConfig) -> float:
    return max(0.05, min(1.0, config.lease_seconds / 4))


def create_app(
    config: ControlConfig,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """An app serving ``config``; it opens ``config.store`` unless given a ``store`` (which it then
    does not close).  Either way every store call is bounded (``BoundedStore``)."""
    metrics = ControlMetrics()

    def count(request: web.Request, status: int) -> None:
        metrics.http_requests.labels(route=route_template(request), code=str(status)).inc()

    middlewares = [
        make_error_middleware(count),  # answers the CORS middleware's own refusals; counts once
        make_cors_middleware(config.cors_origins),
        make_error_middleware(),  # problems made inside, so CORS decorates them for browser apps
        make_store_errors_middleware(),
    ]
    app = web.Application(
        middlewares=middlewares,
        client_max_size=64 * 1024,
    )
    add_routes(app)
    add_console_routes(app)  # the operator console's static page

    def authorize_webhooks(request: web.Request) -> None:
        """contracts.md: ``room:admin`` (an operator's token, bound to no room); ``node:admin``, which
        the control plane's other admin routes take, too."""
        claims = _service_of(app).authorize_any(bearer_token(request), ("room:admin", "node:admin"))
        if "node:admin" not in claims.scopes and claims.room is not None:
            raise ApiError("token/unauthorized", f"token is bound to room {claims.room!r}: webhooks are the project's")

    hooks = WebhookApi(
        authorize=authorize_webhooks,
        current=lambda: _service_of(app).webhooks,
        ensure=lambda: _ensure_webhooks(_service_of(app)),
        source=lambda: {},
    )
    add_webhook_routes(app, hooks)
    metrics.registry.register(WebhookCollector(lambda: _service_of(app).webhooks if SERVICE_KEY in app else None))

    def usage_figures() -> UsageFigures:
        return _service_of(app).usage.figures() if SERVICE_KEY in app else UsageFigures(0, 0)

    metrics.registry.register(UsageCollector(config.project, usage_figures, CONTROL_JOINS))

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        inner = store if store is not None else await open_store(
            config.store, prefix=f"levelchat:{config.project}:", timeout_s=config.store_timeout_seconds
        )
        the_store = BoundedStore(inner, config.store_timeout_seconds, unavailable_errors())
        metrics.store_up.set_function(lambda: 1.0 if the_store.available else 0.0)
        session = aiohttp.ClientSession()
        svc = ControlService(config, the_store, session, metrics, clock)
        svc.webhooks = await open_webhooks(config)
        app[SERVICE_KEY] = svc
        reaper = asyncio.create_task(_reap_forever(svc, reap_interval_s(config)), name="control-lease-reaper")
        try:
            yield
        finally:
            await cancel_and_wait(reaper)
            await svc.close()
            await session.close()
            if svc.webhooks is not None:
                await svc.webhooks.stop()  # what is queued stays in the file for the next start
            if own_store:
                await inner.close()

    app.cleanup_ctx.append(lifetime)
    return app


def _service_of(app: web.Application) -> ControlService:
    return app[SERVICE_KEY]


async def open_webhooks(config: ControlConfig) -> WebhookDispatcher:
    """The control plane's webhook dispatcher: its queue is a table in the SQLite store's file (or
    ``webhooks_db``; with Redis, a file local to this replica)."""
    d = WebhookDispatcher(
        db_path=config.webhooks_db_path(config.port),
        configured=config.webhooks,
        api_keys=config.api_keys,
        settings=config.webhook_settings,
    )
    await d.start()
    return d


async def _ensure_webhooks(svc: ControlService) -> WebhookDispatcher:
    if svc.webhooks is None:
        raise ApiError("service_unavailable", "webhooks are not open yet")
    return svc.webhooks


async def _reap_forever(svc: ControlService, interval_s: float) -> None:
    while True:
        try:
            await svc.reap()
        except asyncio.CancelledError:
            raise
        except StoreUnavailable:
            pass  # logged once per outage by BoundedStore; this loop is also what notices the end
        except Exception:
            log.exception("lease reaper failed; retrying")
        await asyncio.sleep(interval_s)


def serve(config: ControlConfig) -> None:
    """Run until interrupted."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if config.dev:
        log.warning("dev mode: API key %r, project %r, store %s", *sorted(config.api_keys)[:1], config.project, config.store)
    serve_forever(create_app(config), config.host, config.port, config.http_limits)
