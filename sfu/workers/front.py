"""The front of a multi-worker node: the public HTTP port, room pinning, proxying, one node to the
control plane.

``python -m sfu`` runs a ``Front`` instead of a ``Node`` when ``workers`` > 1.  The front starts
the workers (``Supervisor``), pins every room to one of them (``PinTable``) and forwards each
room-scoped request to the room's worker (``proxy``): WHIP/WHEP and their session URLs, the room
API, the signaling WebSocket.  Workers verify tokens and answer as a node does; the front applies
the rate limits and CORS (it sees the clients), answers health, readiness, metrics and drain for
the whole node, and runs the control-plane agent with the workers' load summed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from levelchat import console
from levelchat.errors import ApiError
from levelchat.httpserver import GuardedAppRunner
from levelchat.tokens import ApiKey, TokenVerifier, validate_room
from levelchat.web import (
    bearer_token,
    json_response,
    parse_json,
    read_json,
    readiness_response,
)
from sfu import clock
from sfu.agent import AgentSettings, ControlPlaneAgent, LoadSnapshot
from sfu.api.http import add_static_routes, api_application
from sfu.api.participants import ROUTES as PARTICIPANT_ROUTES
from sfu.api.recordings import ROUTES as RECORDING_ROUTES
from sfu.api.rtc import RTC_PATH
from sfu.config import HttpBound, NodeConfig
from sfu.metrics import CONTENT_TYPE
from sfu.transport.peer import CloseReason
from sfu.workers.metrics import FrontCollector, relabel, render_front
from sfu.workers.placement import PinTable, Route, WorkerLoad, choose
from sfu.workers.proxy import forward, forward_download, forward_websocket
from sfu.workers.spread import FrontRelays
from sfu.workers.supervisor import POLL_S, Supervisor, Worker, WorkerState
from sfu.workers.usage import FrontUsage, control_total
from sfu.workers.worker import INTERNAL

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: the front's drain waits this long past the workers' deadline before it gives up on them
DRAIN_MARGIN_S = 5.0


class Front(HttpBound):
    def __init__(self, config: NodeConfig) -> None:
        n = config.worker_count
        #: the node as a whole: ``max_rooms`` and ``max_participants`` apply to each worker, so the
        #: node's capacity (what the agent registers) is theirs times the number of workers
        self.config = replace(config, max_rooms=config.max_rooms * n, max_participants=config.max_participants * n)
        self.verifier = TokenVerifier([ApiKey(k, s) for k, s in config.api_keys.items()], config.project)
        self.pins = PinTable()
        self.supervisor = Supervisor(
            config, on_status=self._on_status, on_down=self._on_down, on_up=self._on_up
        )
        self.http_counts: dict[tuple[str, str], int] = {}
        self.http_port = config.http_port
        self.draining = False
        self.drained = asyncio.Event()
        self.agent: ControlPlaneAgent | None = None
        #: under a control plane: the workers' usage reported with the heartbeats (sfu.workers.usage)
        self.usage: FrontUsage | None = None
        self._revoked = False
        self._runner: web.AppRunner | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: relays between the workers, and where a spread room's joins go (sfu.workers.spread)
        self.relays = FrontRelays(config, self.supervisor)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.supervisor.start()
        except RuntimeError as exc:
            raise OSError(str(exc)) from None
        self._runner = GuardedAppRunner(self.make_app(), self.config.http_limits)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            await self.supervisor.stop()
            raise
        addresses = self._runner.addresses
        if addresses and isinstance(addresses[0], tuple):
            self.http_port = int(addresses[0][1])
        await self.relays.setup_all()
        if self.config.control_endpoints:
            self.usage = FrontUsage(
                self.workers[0].config.usage_db, self.config.project, self.config.usage_period_start_day,
                self.config.usage_flush_s,
            )
            await self.usage.start()
            self.agent = ControlPlaneAgent(self, AgentSettings.from_config(self.config, node_id=self.node_id))
            self.agent.start()
        log.info(
            "node %s listening: http %s, %d forwarding workers on media udp %s ports %s",
            self.node_id, self.url, len(self.workers), self.config.media_host,
            ", ".join(str(w.media_port) for w in self.workers),
        )

    async def stop(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self.agent is not None:
            await self.agent.stop()
        if self.usage is not None:
            await self.usage.stop()
        for task in list(self._background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.supervisor.stop()

    @property
    def workers(self) -> list[Worker]:
        return self.supervisor.workers

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- supervisor callbacks ---------------------------------------------------------------------
    def _on_status(self, w: Worker) -> None:
        rooms = (w.status or {}).get("rooms", [])
        self.pins.reconcile(w.index, [r for r in rooms if isinstance(r, str)], clock.now_ms())

    def _on_down(self, w: Worker) -> None:
        self.relays.worker_down(w, self._spawn)
        lost = self.pins.drop_worker(w.index)
        if lost:
            log.error("worker %d died with %d room(s): %s", w.index, len(lost), ", ".join(sorted(lost)[:20]))

    async def _on_up(self, w: Worker) -> None:
        """A restarted worker takes on the node's state: revoked, draining; its relays again."""
        await self.relays.worker_up(w)
        if self._revoked:
            await self.supervisor.request(w, "POST", "/internal/revoke", {"revoked": True})
        if self.draining:
            await self.supervisor.request(w, "POST", "/internal/drain", {"deadline_s": 0})

    # -- where a request goes ---------------------------------------------------------------------
    def loads(self) -> list[WorkerLoad]:
        out = []
        for w in self.workers:
            status = w.status or {}
            participants = status.get("participants", 0)
            out.append(
                WorkerLoad(
                    index=w.index,
                    up=w.up,
                    ready=w.up and bool(status.get("ready")),
                    participants=participants if isinstance(participants, int) else 0,
                    rooms=len(status.get("rooms", ())),
                )
            )
        return out

    def worker_for(self, room: str | None, *, creating: bool) -> Worker:
        if room is None:
            index, how = choose(self.loads()), Route.ANY
        else:
            index, how = self.pins.route(room, creating=creating, loads=self.loads(), now_ms=clock.now_ms())
        if index is None:
            raise ApiError("service_unavailable", "no forwarding worker of this node is up; retry shortly")
        if how is Route.PLACED:
            log.info("room %s placed on worker %d", room, index, extra={"room": room})
        return self.workers[index]

    async def _forward(self, w: Worker, request: web.Request, body: bytes | None = None) -> web.Response:
        if w.session is None:
            raise ApiError("service_unavailable", f"forwarding worker {w.index} is not up; retry shortly")
        return await forward(w.session, w.index, request, body=body)

    def _room_route(self, *, creating: bool) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            room = validate_room(request.match_info["room"])
            return await self._forward(self.worker_for(room, creating=creating), request)

        return handler

    async def rooms_post(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        room: str | None = None
        try:
            body = parse_json(raw)
        except ApiError:
            body = None  # the worker refuses it
        if isinstance(body, dict):
            if "room" not in body:
                # the front names the room, so it knows where it lives
                body["room"] = "room-" + secrets.token_hex(6)
                raw = json.dumps(body).encode()
            if isinstance(body["room"], str):
                try:
                    room = validate_room(body["room"])
                except ApiError:
                    room = None
        w = self.worker_for(room, creating=room is not None)
        return await self._forward(w, request, raw)

    async def recording_route(self, request: web.Request) -> web.StreamResponse:
        """``/v1/recordings/{id}...``: the id names no room, so each worker is asked in turn; the
        first answer other than ``not_found`` (the worker that has it) is the answer."""
        up = [w for w in self.workers if w.up]
        if not up:
            raise ApiError("service_unavailable", "no forwarding worker of this node is up; retry shortly")
        download = request.method == "GET" and "name" in request.match_info
        resp: web.StreamResponse | None = None
        for w in up:
            if w.session is None:
                continue
            if download:  # a file: streamed, never held whole in the front
                resp = await forward_download(w.session, w.index, request)
            else:
                resp = await self._forward(w, request, b"")
            if not isinstance(resp, web.Response) or resp.status != 404:
                return resp
            if not isinstance(resp.body, bytes) or b'"not_found"' not in resp.body:
                return resp
        if resp is None:
            raise ApiError("service_unavailable", "no forwarding worker of this node is up; retry shortly")
        return resp

    async def rooms_list(self, request: web.Request) -> web.StreamResponse:
        """Every worker's open rooms; a worker's refusal (the token) comes back as it is."""
        up = [w for w in self.workers if w.up]
        if not up:
            raise ApiError("service_unavailable", "no forwarding worker of this node is up; retry shortly")
        answers = await asyncio.gather(*(self._forward(w, request, b"") for w in up))
        rooms: list[Any] = []
        for resp in answers:
            if resp.status != 200:
                return resp
            assert isinstance(resp.body, bytes)
            rooms.extend(json.loads(resp.body).get("rooms", []))
        return json_response({"rooms": rooms})

    def _rtc_room(self, request: web.Request) -> str | None:
        """The room a signaling session joins: ``?room=`` or the token's ``room`` claim (read
        unverified: the worker verifies the token)."""
        asked = request.query.get("room")
        if asked is None:
            tok = bearer_token(request)
            if tok is None:
                return None
            try:
                claim = jwt.decode(tok, options={"verify_signature": False}).get("room")
            except jwt.PyJWTError:
                return None
            asked = claim if isinstance(claim, str) else None
        if asked is None:
            return None
        try:
            return validate_room(asked)
        except ApiError:
            return None

    async def rtc(self, request: web.Request) -> web.StreamResponse:
        room = self._rtc_room(request)
        w = self.worker_for(room, creating=room is not None)
        if w.session is None:
            raise ApiError("service_unavailable", f"forwarding worker {w.index} is not up; retry shortly")
        if not web.WebSocketResponse().can_prepare(request).ok:
            return await self._forward(w, request)  # a plain GET: the worker answers the problem
        if room is None:
            return await forward_websocket(w.session, w.index, request, heartbeat_s=self.config.signaling_heartbeat_s)
        home, w = w, self.relays.choose(room, w)  # a room spreads over workers (docs/relays.md)
        assert w.session is not None
        if w is not home:
            await self.relays.prepare(w, room)
        with self.relays.session(room, w):
            return await forward_websocket(w.session, w.index, request, heartbeat_s=self.config.signaling_heartbeat_s)

    # -- /v1/webhooks: every worker queues its own rooms' events, so each holds every endpoint ----
    def _up(self) -> list[Worker]:
        up = [w for w in self.workers if w.up and w.session is not None]
        if not up:
            raise ApiError("service_unavailable", "no forwarding worker of this node is up; retry shortly")
        return up

    async def _to_others(self, first: Worker, method: str, path: str, body: Any = None) -> None:
        """The same private call to every up worker but ``first`` (failures logged: a worker down
        now keeps what its own queue file holds)."""

        async def one(w: Worker) -> None:
            try:
                await self.supervisor.request(w, method, path, body)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("worker %d: %s %s failed: %s", w.index, method, path, exc)

        await asyncio.gather(*(one(w) for w in self.workers if w.up and w is not first))

    async def webhooks_post(self, request: web.Request) -> web.StreamResponse:
        """The first worker authorizes, validates and names the endpoint; the others get it with
        that id (``/internal/webhooks``), so the list, the tests and ``DELETE`` agree."""
        first = self._up()[0]
        resp = await self._forward(first, request, await request.read())
        if resp.status == 201 and isinstance(resp.body, bytes):
            await self._to_others(first, "POST", INTERNAL + "/webhooks", json.loads(resp.body))
        return resp

    async def webhooks_delete(self, request: web.Request) -> web.StreamResponse:
        first = self._up()[0]
        resp = await self._forward(first, request, b"")
        if resp.status == 204:
            await self._to_others(first, "DELETE", INTERNAL + "/webhooks/" + request.match_info["id"])
        return resp

    async def any_worker(self, request: web.Request) -> web.StreamResponse:
        """A node-wide request every worker answers alike (the webhook list and test, usage)."""
        return await self._forward(self._up()[0], request, await request.read())

    # -- drain and revocation ---------------------------------------------------------------------
    @property
    def revoked(self) -> bool:
        return self._revoked

    @revoked.setter
    def revoked(self, value: bool) -> None:
        if value != self._revoked:
            self._revoked = value
            self._spawn(self.supervisor.broadcast("POST", "/internal/revoke", {"revoked": value}))

    def revoke(self) -> None:
        self.revoked = True

    def usage_report(self) -> dict[str, Any] | None:
        """What the workers wrote to their shared usage file since the last report (``FrontUsage``)."""
        return self.usage.report() if self.usage is not None else None

    def usage_answered(self, body: Mapping[str, Any]) -> None:
        if self.usage is not None:
            self._spawn(self.usage.answered())
        total = control_total(body)
        if total is not None:  # the workers check their joins against the project's total
            self._spawn(self.supervisor.broadcast("POST", INTERNAL + "/usage", total))

    def close_all_rooms(self, reason: CloseReason) -> int:
        """Close every room on every worker (in the background); the number of rooms known now."""
        count = len(self.room_ids())
        self._spawn(self.supervisor.broadcast("POST", "/internal/close_all", {"reason": reason.value}))
        return count

    def start_drain(self, deadline_s: float) -> None:
        """Drain every worker; ``drained`` is set when all have (or the deadline is long past)."""
        self.draining = True
        self.drained.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain_task = asyncio.create_task(self._drain(deadline_s))
        log.warning("draining %d workers: no new rooms; closing what is left in %.0f s", len(self.workers), deadline_s)

    async def _drain(self, deadline_s: float) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s + DRAIN_MARGIN_S
        await self.supervisor.broadcast("POST", "/internal/drain", {"deadline_s": deadline_s})
        while loop.time() < give_up:
            states = await self.supervisor.broadcast("GET", "/internal/status")
            if all(isinstance(s, dict) and s.get("drained") for s in states):
                break
            await asyncio.sleep(POLL_S / 2)
        else:
            log.error("workers did not report drained %.0f s past the deadline; stopping anyway", DRAIN_MARGIN_S)
        log.warning("drain complete on every worker")
        self.drained.set()

    def cancel_drain(self) -> bool:
        if not self.draining:
            return False
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        self.draining = False
        self.drained.clear()
        self._spawn(self.supervisor.broadcast("DELETE", "/internal/drain"))
        log.warning("drain cancelled: taking new rooms again")
        return True

    def drain_state(self) -> dict[str, object]:
        snap = self.load_snapshot()
        return {
            "draining": self.draining,
            "drained": self.drained.is_set(),
            "rooms": snap.rooms,
            "participants": snap.participants,
            "workers": [w.describe() for w in self.workers],
        }

    def _admin(self, request: web.Request) -> None:
        self.verifier.verify(bearer_token(request), time.time()).require("node:admin")

    async def drain_post(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        deadline_s: object = self.config.drain_deadline_s
        if request.can_read_body:
            deadline_s = (await read_json(request)).get("deadline_s", deadline_s)
        if not isinstance(deadline_s, (int, float)) or isinstance(deadline_s, bool) or not 0 <= deadline_s <= 86400:
            raise ApiError("bad_request", "deadline_s must be a number of seconds from 0 to 86400")
        self.start_drain(float(deadline_s))
        return json_response(self.drain_state(), status=202)

    async def drain_delete(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        if not self.cancel_drain():
            raise ApiError("conflict", "this node is not draining")
        return json_response(self.drain_state())

    async def drain_get(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        return json_response(self.drain_state())

    # -- the node as the agent and the probes see it ----------------------------------------------
    @property
    def media_port(self) -> int:
        return self.workers[0].media_port

    @property
    def tcp_port(self) -> int | None:
        return self.workers[0].tcp_port

    def room_ids(self) -> list[str]:
        rooms: set[str] = set()
        for w in self.workers:
            rooms.update(r for r in (w.status or {}).get("rooms", ()) if isinstance(r, str))
        return sorted(rooms)

    def room_settings(self) -> dict[str, dict[str, Any]]:
        settings: dict[str, dict[str, Any]] = {}
        for w in self.workers:
            reported = (w.status or {}).get("room_settings")
            if isinstance(reported, dict):
                settings.update((k, v) for k, v in reported.items() if isinstance(k, str) and isinstance(v, dict))
        return settings

    def room_participants(self) -> dict[str, int]:
        """Participants per live room, over the workers (a room lives on one worker)."""
        counts: dict[str, int] = {}
        for w in self.workers:
            reported = (w.status or {}).get("room_participants")
            if isinstance(reported, dict):
                counts.update((r, n) for r, n in reported.items() if isinstance(r, str) and isinstance(n, int))
        return counts

    def cpu_seconds(self) -> float:
        """The workers' CPU seconds over their number: the load's ``cpu`` is then the node's
        fraction of its cores in use."""
        return sum(w.cpu_seconds() for w in self.workers) / len(self.workers)

    def load_snapshot(self) -> LoadSnapshot:
        participants = 0
        for w in self.workers:
            n = (w.status or {}).get("participants", 0)
            participants += n if isinstance(n, int) else 0
        healthy = all(w.up and bool((w.status or {}).get("healthy")) for w in self.workers)
        return LoadSnapshot(
            rooms=len(self.room_ids()),
            participants=participants,
            packets_out=sum(w.packets_out() for w in self.workers),
            healthy=healthy,
            draining=self.draining,
        )

    def readiness(self) -> tuple[bool, str]:
        if self._revoked:
            return False, "revoked"
        if self.draining:
            return False, "draining"
        for w in self.workers:
            if not w.up:
                exited = f" (exited with status {w.last_exit})" if w.last_exit is not None else ""
                return False, f"worker {w.index}: {w.state.value}{exited}"
            if w.status is None:
                return False, f"worker {w.index}: no status yet"
            if not w.status.get("ready"):
                return False, f"worker {w.index}: {w.status.get('reason', 'not ready')}"
        return True, "ok"

    # -- operations --------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness: the front answers (a dead worker is restarted, not a reason to restart all);
        the workers' states are listed."""
        up = sum(1 for w in self.workers if w.up)
        return json_response(
            {
                "status": "ok" if up == len(self.workers) else "degraded",
                "workers": [w.describe() for w in self.workers],
            }
        )

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        ready, reason = self.readiness()
        return readiness_response(ready, reason, workers=[w.describe() for w in self.workers])

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        async def scrape(w: Worker) -> tuple[int, str] | None:
            if not w.up or w.session is None:
                return None
            try:
                async with w.session.get("http://worker/metrics") as resp:
                    return w.index, await resp.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None

        texts = [t for t in await asyncio.gather(*(scrape(w) for w in self.workers)) if t is not None]
        states = {s.value: 0 for s in WorkerState}
        for w in self.workers:
            states[w.state.value] += 1
        collector = FrontCollector(
            relabel(texts),
            self.http_counts,
            self.agent.heartbeat_failures if self.agent is not None else 0,
            states,
            {w.index: w.restarts for w in self.workers},
            failovers=self.agent.failovers if self.agent is not None else 0,
        )
        return web.Response(body=render_front(collector), headers={"Content-Type": CONTENT_TYPE})

    def make_app(self) -> web.Application:
        app = api_application(self.config, self.http_counts)
        r = app.router
        creating, existing = self._room_route(creating=True), self._room_route(creating=False)
        r.add_post("/whip/{room}", creating)
        # the TURN servers (Link headers, minted by a worker) pass through; an OPTIONS places no room
        r.add_route("OPTIONS", "/whip/{room}", existing)
        r.add_delete("/whip/{room}/{session}", existing)
        r.add_patch("/whip/{room}/{session}", existing)
        r.add_post("/whep/{room}", existing)
        r.add_route("OPTIONS", "/whep/{room}", existing)
        r.add_post("/whep/{room}/{identity}", existing)
        r.add_delete("/whep/{room}/{session}", existing)
        r.add_patch("/whep/{room}/{session}", existing)
        r.add_post("/whep/{room}/{session}/layer", existing)
        r.add_post("/v1/rooms", self.rooms_post)
        r.add_get("/v1/rooms", self.rooms_list)
        r.add_get("/v1/rooms/{room}", existing)
        r.add_delete("/v1/rooms/{room}", existing)
        r.add_post("/v1/rooms/{room}/recording", existing)
        for method, path, _handler in PARTICIPANT_ROUTES:  # the participants API: the room's worker
            r.add_route(method, path, existing)
        for method, path, _h in RECORDING_ROUTES:  # the worker that has the recording
            r.add_route(method, path, self.recording_route)
        r.add_post("/v1/webhooks", self.webhooks_post)
        r.add_get("/v1/webhooks", self.any_worker)
        r.add_delete("/v1/webhooks/{id}", self.webhooks_delete)
        r.add_post("/v1/webhooks/test", self.any_worker)
        r.add_get("/v1/usage", self.any_worker)  # the workers share the usage file
        r.add_post("/v1/node/drain", self.drain_post)
        r.add_delete("/v1/node/drain", self.drain_delete)
        r.add_get("/v1/node/drain", self.drain_get)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get(RTC_PATH, self.rtc)
        add_static_routes(app, self.config)
        console.add_routes(app)  # the operator console's static page
        return app

