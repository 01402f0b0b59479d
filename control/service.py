"""What the control plane does, independent of HTTP: leases, placement with creation on the node,
join tokens.  Every refusal is an ``ApiError`` with a catalogue code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

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
from control.nodeclient import NodeCallOutcome, NodeCallResult, create_room
from control.store import Store
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
        #: signed webhooks (levelchat.webhooks): node_registered, node_unhealthy, node_revoked
        self.webhooks: WebhookDispatcher | None = None
        self._node_states: dict[str, NodeState] = {}

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

    async def register(self, reg: NodeRegistration) -> tuple[Node, RegisterOutcome]:
        now = self.now_ms()
        outcome, node = await self.store.register_node(reg, now, self.config.lease_ms)
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
        self._hook("node_registered", node, outcome=outcome.value)
        await self.refresh_gauges()
        return node, outcome

    async def heartbeat(self, node_id: str, hb: Heartbeat) -> Node:
        outcome, node = await self.store.heartbeat(node_id, hb, self.now_ms(), self.config.lease_ms)
        if outcome is HeartbeatOutcome.REVOKED:
            raise ApiError("node_revoked", f"node {node_id!r} is revoked: stop taking new work and drain")
        if outcome is HeartbeatOutcome.UNKNOWN:
            raise ApiError("not_found", f"node {node_id!r} is not registered; register it with POST /v1/nodes")
        if outcome is HeartbeatOutcome.EXPIRED:
            raise ApiError("not_found", f"the lease of node {node_id!r} lapsed; register it again with POST /v1/nodes")
        assert node is not None
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
            p = await self.store.place_room(spec, self.now_ms(), frozenset(exclude))
            if p.outcome is PlacementOutcome.EXISTING:
                assert p.room is not None and p.node is not None
                return RoomLocation(p.room, p.node, created=False)
            if p.outcome is not PlacementOutcome.PLACED:
                raise self._placement_error(p, last)
            assert p.room is not None and p.node is not None
            token = mint(
                self._node_key,
                project=self.config.project,
                now_s=self.now_s(),
                ttl_s=NODE_TOKEN_TTL_S,
                identity=CONTROL_IDENTITY,
                room=spec.room,
                scopes=["room:create"],
            )
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

    async def lookup_room(self, name: str) -> RoomLocation:
        """Where the room lives; a lost room (its node's lease lapsed) is placed again first."""
        room = await self.store.get_room(name)
        if room is None or room.state is RoomState.CLOSED:
            raise ApiError("room_not_found", f"room {name!r} is not known to the control plane")
        node = await self.store.get_node(room.node_id)
        if room.state is RoomState.LIVE and node is not None and node.lease_alive(self.now_ms()):
            return RoomLocation(room, node, created=False)
        log.info("room %s lost with node %s: placing it again", name, room.node_id)
        return await self.ensure_room(room.spec)

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
        if known is not None and known.state is not RoomState.CLOSED:
            loc = await self.lookup_room(room_id)
        else:
            loc = await self.ensure_room(RoomSpec(room=room_id))
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
