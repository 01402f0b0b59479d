"""What the control plane does, independent of HTTP: leases, placement with creation on the node,
join tokens.  Every refusal is an ``ApiError`` with a catalogue code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web

from control.config import ControlConfig
from control.metrics import ControlMetrics
from control.model import (
    Heartbeat,
    HeartbeatOutcome,
    Node,
    NodeRegistration,
    NodeState,
    Placement,
    PlacementOutcome,
    RegisterOutcome,
    Room,
    RoomSpec,
    RoomState,
)
from control.nodeclient import (
    NodeCallOutcome,
    NodeCallResult,
    NodeReply,
    answers,
    create_room,
    download,
    forward,
)
from control.repair import Repairs
from control.store import Store
from control.usage import ControlUsage
from levelchat.errors import CATALOGUE, SDK_ONLY_STATUSES, ApiError
from levelchat.tokens import ApiKey, Claims, TokenVerifier, mint, validate_identity, validate_room
from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.model import make_event

log = logging.getLogger("levelchat.control")

NODE_TOKEN_TTL_S = 60
CONTROL_IDENTITY = "control-plane"
#: Scopes ``POST /v1/tokens`` may grant; node scopes are never handed to participants.
GRANTABLE_SCOPES = frozenset({"room:join", "room:publish", "room:subscribe", "room:admin", "recording:write"})
DEFAULT_TOKEN_TTL_S = 3600
MAX_TOKEN_TTL_S = 86400
#: the longest the control plane waits for a node's old URL when a new instance registers
TAKEOVER_PROBE_S = 2.0


@dataclass(frozen=True)
class RoomLocation:
    room: Room
    node: Node
    created: bool  # placed (and created on the node) by this call


@dataclass(frozen=True)
class JoinToken:
    token: str
    url: str
    room: Room
    node: Node


class ControlService:
    def __init__(
        self,
        config: ControlConfig,
        store: Store,
        session: aiohttp.ClientSession,
        metrics: ControlMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._session = session
        self._clock = clock
        self.keys = {kid: ApiKey(kid, secret) for kid, secret in config.api_keys.items()}
        self.verifier = TokenVerifier(self.keys.values(), config.project)
        self._node_key = self.keys[sorted(self.keys)[0]]
        self.repairs = Repairs(
            store,
            session,
            timeout_s=config.node_timeout_seconds,
            now_ms=self.now_ms,
            room_token=self._room_token,
            place=self._place_node_id,
        )
        #: participant- and recording-minutes reported by the nodes, the quota (control.usage)
        self.usage = ControlUsage(config, store, self.now_ms)
        #: signed webhooks (levelchat.webhooks): node_registered, node_unhealthy, node_revoked
        self.webhooks: WebhookDispatcher | None = None
        self._node_states: dict[str, NodeState] = {}

    async def close(self) -> None:
        """Cancel the background repairs (``control.repair``) still running."""
        await self.repairs.close()

    def _hook(self, event: str, node: Node | None, **extra: object) -> None:
        """Queue a webhook event about ``node`` (never blocks: the queue commits off the loop)."""
        if self.webhooks is not None and node is not None and self.webhooks.takers(event):
            self.webhooks.emit(make_event(event, node={**node.to_json(self.now_ms()), **extra}))

    # -- time and auth -------------------------------------------------------------------------

    def now_s(self) -> float:
        return self._clock()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def authorize(self, token: str | None, *scopes: str) -> Claims:
        claims = self.verifier.verify(token, self.now_s())
        claims.require(*scopes)
        return claims

    def authorize_any(self, token: str | None, alternatives: Iterable[str]) -> Claims:
        """The token must carry at least one of ``alternatives``."""
        claims = self.verifier.verify(token, self.now_s())
        options = list(alternatives)
        if not any(s in claims.scopes for s in options):
            raise ApiError("token/unauthorized", f"token needs one of the scopes: {', '.join(options)}")
        return claims

    # -- nodes ---------------------------------------------------------------------------------

    async def register(self, reg: NodeRegistration, *, node_bound: bool = False) -> tuple[Node, RegisterOutcome]:
        """``node_bound``: the credential is the node's own (identity ``node:<id>``).  A registration
        from a new instance of the node (a restart: another ``instance``) with such a credential
        replaces a live lease held by an earlier instance at once when that one is gone: it
        registered the same URL (which the new process now holds), or its URL no longer answers.
        A lease registered without an instance (an older node) is waited out as before."""
        now = self.now_ms()
        outcome, node, taken, dropped = await self.store.register_node(reg, now, self.config.lease_ms)
        if (
            outcome is RegisterOutcome.EXISTS
            and node is not None
            and node_bound
            and reg.instance is not None
            and node.instance is not None
            and node.instance != reg.instance
            and await self._old_instance_gone(node, reg)
        ):
            outcome, node, taken, dropped = await self.store.register_node(
                reg, now, self.config.lease_ms, takeover=True
            )
            if outcome is RegisterOutcome.REREGISTERED:
                log.warning("node %s restarted (instance %s): its previous lease is retired", reg.id, reg.instance)
        if outcome is RegisterOutcome.REVOKED:
            raise ApiError("node_revoked", f"node {reg.id!r} is revoked; an operator must provision it again")
        if outcome is RegisterOutcome.EXISTS:
            remaining_s = max(1, -(-((node.lease_expires_at if node else now) - now) // 1000))
            raise ApiError(
                "node_exists",
                f"node id {reg.id!r} is held by a node whose lease is alive for {remaining_s} s more",
                retry_after_s=remaining_s,
            )
        assert node is not None
        log.info("node %s %s at %s", reg.id, outcome.value, reg.url)
        self.repairs.close_copies(node.id, taken)
        self.repairs.place_again(node.id, dropped)
        self._hook("node_registered", node, outcome=outcome.value)
        await self.refresh_gauges()
        return node, outcome

    async def _old_instance_gone(self, old: Node, reg: NodeRegistration) -> bool:
        if old.url == reg.url:
            return True
        timeout = min(self.config.node_timeout_seconds, TAKEOVER_PROBE_S)
        return not await answers(self._session, old.url, timeout)

    async def heartbeat(self, node_id: str, hb: Heartbeat) -> Node:
        outcome, node, taken = await self.store.heartbeat(node_id, hb, self.now_ms(), self.config.lease_ms)
        if outcome is HeartbeatOutcome.SUPERSEDED:
            raise ApiError(
                "not_found",
                f"node {node_id!r} is held by another instance of it now (a restart); register again with POST /v1/nodes",
            )
        if outcome is HeartbeatOutcome.REVOKED:
            raise ApiError("node_revoked", f"node {node_id!r} is revoked: stop taking new work and drain")
        if outcome is HeartbeatOutcome.UNKNOWN:
            raise ApiError("not_found", f"node {node_id!r} is not registered; register it with POST /v1/nodes")
        if outcome is HeartbeatOutcome.EXPIRED:
            raise ApiError("not_found", f"the lease of node {node_id!r} lapsed; register it again with POST /v1/nodes")
        assert node is not None
        self.repairs.close_copies(node_id, taken)
        return node

    def _room_token(self, room: str, scope: str) -> str:
        return mint(
            self._node_key,
            project=self.config.project,
            now_s=self.now_s(),
            ttl_s=NODE_TOKEN_TTL_S,
            identity=CONTROL_IDENTITY,
            room=room,
            scopes=[scope],
        )

    async def forward_to_node(self, node: Node, room: str, method: str, path: str, body: bytes | None) -> NodeReply | None:
        """One call of ``node``'s API for ``room`` with a short-lived ``room:admin`` token of the
        control plane's own; the reply as it came (None: no answer)."""
        token = self._room_token(room, "room:admin")
        return await forward(self._session, node.url, token, method, path, body, self.config.node_timeout_seconds)

    async def forward_as_operator(self, node: Node, method: str, path: str, body: bytes | None) -> NodeReply | None:
        """One call of ``node``'s own operator API (``/v1/rooms``, ``/v1/node/drain``) with a
        short-lived room-less ``node:admin`` + ``room:admin`` token of the control plane's own."""
        token = mint(
            self._node_key,
            project=self.config.project,
            now_s=self.now_s(),
            ttl_s=NODE_TOKEN_TTL_S,
            identity=CONTROL_IDENTITY,
            scopes=["node:admin", "room:admin"],
        )
        return await forward(self._session, node.url, token, method, path, body, self.config.node_timeout_seconds)

    def scoped_token(self, room: str | None, scopes: Iterable[str]) -> str:
        """A short-lived token of the control plane's own for a node: ``scopes``, bound to ``room``
        (or to none, as the caller's token was)."""
        return mint(
            self._node_key,
            project=self.config.project,
            now_s=self.now_s(),
            ttl_s=NODE_TOKEN_TTL_S,
            identity=CONTROL_IDENTITY,
            room=room,
            scopes=list(scopes),
        )

    async def forward_scoped(
        self, node: Node, room: str | None, scopes: Iterable[str], method: str, path: str, body: bytes | None
    ) -> NodeReply | None:
        """One call of ``node``'s API with ``scoped_token(room, scopes)``; the reply as it came."""
        token = self.scoped_token(room, scopes)
        return await forward(self._session, node.url, token, method, path, body, self.config.node_timeout_seconds)

    async def download_from(
        self, node: Node, room: str | None, scopes: Iterable[str], path: str, request: web.Request
    ) -> web.StreamResponse | NodeReply | None:
        """A large ``GET`` of ``node``'s (a recording's file) streamed to ``request``'s client."""
        token = self.scoped_token(room, scopes)
        return await download(self._session, node.url, token, path, request, self.config.node_timeout_seconds)

    async def get_node(self, node_id: str) -> Node:
        node = await self.store.get_node(node_id)
        if node is None:
            raise ApiError("not_found", f"node {node_id!r} is not registered")
        return node

    async def revoke(self, node_id: str) -> Node:
        node = await self.store.revoke(node_id, self.now_ms())
        if node is None:
            raise ApiError("not_found", f"node {node_id!r} is not registered")
        log.warning("node %s revoked", node_id)
        self._hook("node_revoked", node)
        await self.refresh_gauges()
        return node

    async def provision(self, node_id: str) -> Node:
        node = await self.store.provision(node_id, self.now_ms())
        if node is None:
            raise ApiError("not_found", f"node {node_id!r} is not registered")
        log.info("node %s provisioned", node_id)
        await self.refresh_gauges()
        return node

    async def list_nodes(self) -> list[Node]:
        return await self.store.list_nodes()

    # -- rooms ---------------------------------------------------------------------------------

    async def ensure_room(self, spec: RoomSpec) -> RoomLocation:
        """Place the room (unless it is live already) and create it on the node, trying other nodes
        when one cannot be reached or refuses for its own reasons."""
        exclude: set[str] = set()
        last: NodeCallResult | None = None
        for _ in range(self.config.max_placement_attempts):
            now = self.now_ms()
            p = await self.store.place_room(spec, now, frozenset(exclude), self.config.room_grace_ms)
            if p.outcome is PlacementOutcome.EXISTING:
                assert p.room is not None and p.node is not None
                return RoomLocation(p.room, p.node, created=False)
            if p.outcome is PlacementOutcome.AWAY:
                assert p.retry_at is not None and p.node is not None
                raise _away(spec.room, p.node, p.retry_at - now)
            if p.outcome is not PlacementOutcome.PLACED:
                raise self._placement_error(p, last)
            assert p.room is not None and p.node is not None
            token = self._room_token(spec.room, "room:create")
            last = await create_room(self._session, p.node.url, token, spec, self.config.node_timeout_seconds)
            if last.outcome is NodeCallOutcome.CREATED:
                self.metrics.rooms_placed.inc()
                log.info("room %s placed on node %s", spec.room, p.node.id)
                return RoomLocation(p.room, p.node, created=True)
            await self.store.release_room(spec.room, p.node.id, p.previous)
            if last.outcome is NodeCallOutcome.REFUSED:
                raise _refusal(p.node, last)
            log.warning("node %s could not create room %s: %s", p.node.id, spec.room, last.detail)
            await self.store.mark_unhealthy(p.node.id)
            exclude.add(p.node.id)
        raise ApiError(
            "room_check_failed",
            f"{len(exclude)} node(s) failed to create room {spec.room!r}"
            + (f"; last: {last.detail}" if last is not None else ""),
        )

    async def _place_node_id(self, spec: RoomSpec) -> str:
        return (await self.ensure_room(spec)).node.id

    def _placement_error(self, p: Placement, last: NodeCallResult | None) -> ApiError:
        tail = f"; last node failure: {last.detail}" if last is not None else ""
        if p.outcome is PlacementOutcome.NO_NODES:
            return ApiError("service_unavailable", "no SFU node is registered with a live lease" + tail)
        if p.outcome is PlacementOutcome.ALL_FAILING:
            return ApiError(
                "room_check_failed",
                f"{p.live_nodes} node(s) registered, none healthy, non-draining and reachable" + tail,
            )
        return ApiError("service_unavailable", f"all {p.passing_nodes} healthy node(s) are at capacity" + tail)

    async def lookup_room(self, name: str) -> tuple[Room, Node | None]:
        """Where the room lives; never places anything.  A room whose node is away within the grace
        is ``service_unavailable`` (retry); a lost one is shown ``lost`` (the next ``ensure_room``,
        from ``POST /v1/rooms`` or ``POST /v1/tokens``, places it again)."""
        room = await self.store.get_room(name)
        if room is None or room.state is RoomState.CLOSED:
            raise ApiError("room_not_found", f"room {name!r} is not known to the control plane")
        now = self.now_ms()
        node = await self.store.get_node(room.node_id)
        if room.state is RoomState.LIVE and node is not None and node.lease_alive(now):
            return room, node
        until = node.away_until(now, self.config.room_grace_ms) if node is not None else None
        if until is not None:
            assert node is not None
            raise _away(name, node, until - now)
        return replace(room, state=RoomState.LOST), node

    async def join_token(
        self,
        claims: Claims,
        *,
        room: object,
        identity: object,
        scopes: object,
        ttl_s: object,
        name: object,
        metadata: object,
    ) -> JoinToken:
        room_id = validate_room(room)
        claims.require_room(room_id)
        who = validate_identity(identity)
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise ApiError("bad_request", "field 'scopes' must be a non-empty list of scope names")
        refused = sorted(set(scopes) - GRANTABLE_SCOPES)
        if refused:
            raise ApiError(
                "bad_request",
                f"scope(s) {', '.join(refused)} cannot be granted here; grantable: {', '.join(sorted(GRANTABLE_SCOPES))}",
            )
        ttl = DEFAULT_TOKEN_TTL_S if ttl_s is None else ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TOKEN_TTL_S:
            raise ApiError("bad_request", f"field 'ttl_s' must be an integer from 1 to {MAX_TOKEN_TTL_S}")
        for field_name, value in (("name", name), ("metadata", metadata)):
            if value is not None and not isinstance(value, str):
                raise ApiError("bad_request", f"field {field_name!r} must be a string")
        known = await self.store.get_room(room_id)
        spec = known.spec if known is not None and known.state is not RoomState.CLOSED else RoomSpec(room=room_id)
        loc = await self.ensure_room(spec)
        token = mint(
            self.keys[claims.key_id],
            project=self.config.project,
            now_s=self.now_s(),
            ttl_s=ttl,
            identity=who,
            room=room_id,
            scopes=scopes,
            name=name if isinstance(name, str) else None,
            metadata=metadata if isinstance(metadata, str) else None,
        )
        return JoinToken(token, loc.node.url, loc.room, loc.node)

    # -- housekeeping --------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Mark rooms of lapsed leases lost and refresh the node gauges."""
        now = self.now_ms()
        lapsed = await self.store.expire_leases(now)
        for node_id in lapsed:
            log.warning("node %s lost its lease: its rooms are marked lost", node_id)
        nodes = await self.store.list_nodes()
        self.metrics.observe_nodes(nodes, now)
        self._hook_transitions(nodes, now)
        return lapsed

    def _hook_transitions(self, nodes: list[Node], now_ms: int) -> None:
        """``node_unhealthy`` for each node seen going from live to unhealthy or expired (this
        replica's view: each replica of a shared store sends its own, at least once)."""
        states = {n.id: n.state(now_ms) for n in nodes}
        for n in nodes:
            before, after = self._node_states.get(n.id), states[n.id]
            if before is NodeState.LIVE and after in (NodeState.UNHEALTHY, NodeState.EXPIRED):
                self._hook("node_unhealthy", n, reason="lease lapsed" if after is NodeState.EXPIRED else "unhealthy")
        self._node_states = states

    async def refresh_gauges(self) -> None:
        self.metrics.observe_nodes(await self.store.list_nodes(), self.now_ms())


def _away(room: str, node: Node, remaining_ms: int) -> ApiError:
    seconds = max(1, -(-remaining_ms // 1000))
    return ApiError(
        "service_unavailable",
        f"room {room!r} is on node {node.id}, whose lease lapsed; it may come back with the room's "
        f"participants, so the room is not placed elsewhere for {seconds} s more: retry",
        retry_after_s=min(seconds, 5),
    )


def _refusal(node: Node, result: NodeCallResult) -> ApiError:
    """A node's 4xx about the request: keep its catalogue code when it fits, else ``bad_request``."""
    detail = f"node {node.id} refused the room: {result.detail}"
    spec = CATALOGUE.get(result.code) if result.code else None
    if spec is not None and result.status is not None:
        if spec.status == result.status:
            return ApiError(spec.code, detail)
        if spec.status is None and result.status in SDK_ONLY_STATUSES:
            return ApiError(spec.code, detail, status=result.status)
    return ApiError("bad_request", detail)
