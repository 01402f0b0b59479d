"""``/v1/webhooks`` for the node and the control plane: ``POST`` (add), ``GET`` (list),
``DELETE /v1/webhooks/{id}``, ``POST /v1/webhooks/test {"event"}`` (``no_valid_recipients``
when no endpoint takes it).  Who may call them is the host's ``authorize``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.web import json_response, read_json
from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.model import EVENTS, make_event


@dataclass(frozen=True)
class WebhookApi:
    #: raises a token error unless the request may manage webhooks
    authorize: Callable[[web.Request], None]
    #: the open dispatcher, or None while none is open
    current: Callable[[], WebhookDispatcher | None]
    #: opens the dispatcher when needed (the first endpoint added through the API)
    ensure: Callable[[], Awaitable[WebhookDispatcher]]
    #: the objects a test event carries (``{"node": {"id": ...}}``)
    source: Callable[[], dict[str, Any]]


def add_routes(app: web.Application, api: WebhookApi) -> None:
    async def post(request: web.Request) -> web.StreamResponse:
        api.authorize(request)
        body = await read_json(request)
        d = await api.ensure()
        return json_response(await d.add(d.parse_endpoint(body)), status=201)

    async def get(request: web.Request) -> web.StreamResponse:
        api.authorize(request)
        d = api.current()
        return json_response({"webhooks": d.describe() if d is not None else []})

    async def delete(request: web.Request) -> web.StreamResponse:
        api.authorize(request)
        d = api.current()
        eid = request.match_info["id"]
        if d is None:
            raise ApiError("not_found", f"no webhook endpoint {eid[:64]!r}")
        await d.remove(eid)
        return web.Response(status=204)

    async def test(request: web.Request) -> web.StreamResponse:
        api.authorize(request)
        body = await read_json(request)
        event = body.get("event")
        if not isinstance(event, str) or event not in EVENTS:
            raise ApiError("bad_request", f"event must be one of: {', '.join(sorted(EVENTS))}")
        d = api.current()
        if d is None or not d.takers(event):
            raise ApiError("no_valid_recipients", f"no webhook endpoint takes {event!r} events")
        sent = make_event(event, **api.source())
        return json_response({"id": sent["id"], "event": event, "endpoints": d.emit(sent)}, status=202)

    app.router.add_post("/v1/webhooks", post)
    app.router.add_get("/v1/webhooks", get)
    app.router.add_delete("/v1/webhooks/{id}", delete)
    app.router.add_post("/v1/webhooks/test", test)
