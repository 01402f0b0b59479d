"""The node's control-plane agent: register, heartbeat, and react to revocation.

Contract: ``control/README.md`` (Nodes).  The agent never blocks the node: registration runs in the
background while WHIP/WHEP and the room API serve as usual, and readiness stays local.

- Several control-plane replicas (``control_urls``, sharing one store): every request goes to the
  one that last answered; when it cannot be reached or answers 5xx the next one is tried at once,
  and only after a full round of failures does the caller back off (``_call``).
- Registration (``POST /v1/nodes``) is retried with exponential backoff and full jitter while the
  control plane is unreachable or answers 5xx.
- Every report carries ``instance`` (random per process) and ``room_participants`` (the live rooms
  and their participants): a restarted node's registration retires its previous run's lease at
  once, and the control plane takes back the rooms the node really hosts.
- ``node_exists`` (409): the id's lease may be this node's previous run (one registered without an
  instance, or whose URL still answers), so the agent waits the ``Retry-After`` once; refused
  again, another live node holds the id and the agent signals ``fatal`` (``python -m sfu`` then
  exits non-zero).
- Heartbeats (``PUT /v1/nodes/{id}/status``) every ``heartbeat_interval_s`` the control plane
  advertises; failures are counted (``heartbeat_failures``); ``not_found`` means the lease lapsed
  or the control plane forgot us: register again.
- ``node_revoked`` (410), at registration or heartbeat: the node refuses new work at once, keeps
  its live sessions for ``revoke_drain_s``, then closes what is left; heartbeats stop, and
  registration is tried now and then: once an operator re-provisions the node, it takes work again.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from levelchat.tasks import cancel_and_wait
from levelchat.tokens import ApiKey, mint
from sfu.config import NodeConfig
from sfu.transport.peer import CloseReason

log = logging.getLogger(__name__)

VERSION = "0.1.0"
REGISTER_SCOPE = "node:register"
MAX_BACKOFF_EXPONENT = 32


class ReplyKind(enum.Enum):
    """What a control-plane reply means to the agent."""

    OK = "ok"
    EXISTS = "node_exists"  # 409: the id's lease is alive
    REVOKED = "node_revoked"  # 410
    NOT_FOUND = "not_found"  # 404: unknown id or lapsed lease: register again
    UNAVAILABLE = "unavailable"  # no reply, timeout, 5xx, 408, 429: try again later
    REFUSED = "refused"  # another 4xx: the request itself is refused


class AgentState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    REVOKED = "revoked"
    FAILED = "failed"  # ``fatal`` is set
    STOPPED = "stopped"


def classify(status: int, code: str | None) -> ReplyKind:
    if 200 <= status < 300:
        return ReplyKind.OK
    if status == 409 and code == "node_exists":
        return ReplyKind.EXISTS
    if status == 410:
        return ReplyKind.REVOKED
    if status == 404:
        return ReplyKind.NOT_FOUND
    if status >= 500 or status in (408, 429):
        return ReplyKind.UNAVAILABLE
    return ReplyKind.REFUSED


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as delay seconds (the HTTP-date form is not used by the control plane)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    return seconds


@dataclass(frozen=True)
class ControlReply:
    kind: ReplyKind
    status: int | None  # None: no reply at all
    code: str | None
    detail: str
    retry_after_s: float | None = None
    body: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, status: int, retry_after: str | None, raw: bytes) -> ControlReply:
        body: Mapping[str, Any] | None = None
        try:
            decoded = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            decoded = None
        if isinstance(decoded, dict):
            body = decoded
        code = body.get("code") if body is not None else None
        code = code if isinstance(code, str) else None
        detail = body.get("detail") if body is not None else None
        detail = detail if isinstance(detail, str) else f"HTTP {status}"
        return cls(classify(status, code), status, code, detail, parse_retry_after(retry_after), body)

    @classmethod
    def unreachable(cls, detail: str) -> ControlReply:
        return cls(ReplyKind.UNAVAILABLE, None, None, detail)

    def describe(self) -> str:
        head = f"{self.status}" if self.status is not None else "no reply"
        return f"{head} {self.code or ''}: {self.detail}".replace("  ", " ")


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits ``uniform(0, min(cap, base * 2**n))``."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self, rand: float) -> float:
        """``rand`` is uniform in [0, 1)."""
        if not 0.0 <= rand < 1.0:
            raise ValueError(f"rand must be in [0, 1), got {rand}")
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, MAX_BACKOFF_EXPONENT))
        self.attempt += 1
        return float(ceiling * rand)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class LoadSnapshot:
    """What the node reports about itself; counters are totals since start."""

    rooms: int
    participants: int
    packets_out: int
    healthy: bool
    draining: bool


class LoadMeter:
    """Turns process CPU time and the forwarded-packet total into rates between two samples."""

    def __init__(self, now_s: float, cpu_s: float, packets: int) -> None:
        self._now_s = now_s
        self._cpu_s = cpu_s
        self._packets = packets

    def sample(self, now_s: float, cpu_s: float, packets: int) -> tuple[float, float]:
        """(cpu as a fraction of one core in [0, 1], packets per second) since the previous sample."""
        elapsed = now_s - self._now_s
        d_cpu = cpu_s - self._cpu_s
        d_packets = packets - self._packets
        self._now_s, self._cpu_s, self._packets = now_s, cpu_s, packets
        if elapsed <= 0:
            return 0.0, 0.0
        cpu = min(1.0, max(0.0, d_cpu / elapsed))
        return cpu, max(0.0, d_packets / elapsed)


class NodeTokens:
    """``node:register`` tokens the node mints for itself, re-minted at half their lifetime."""

    def __init__(self, key: ApiKey, project: str, node_id: str, ttl_s: int) -> None:
        if ttl_s < 2:
            raise ValueError(f"token ttl must be at least 2 s, got {ttl_s}")
        self._key = key
        self._project = project
        self._node_id = node_id
        self._ttl_s = ttl_s
        self._token: str | None = None
        self._refresh_at = 0.0

    def get(self, now_s: float) -> str:
        if self._token is None or now_s >= self._refresh_at:
            self._token = mint(
                self._key,
                project=self._project,
                now_s=now_s,
                ttl_s=self._ttl_s,
                identity=f"node:{self._node_id}",
                scopes=(REGISTER_SCOPE,),
            )
            self._refresh_at = now_s + self._ttl_s / 2
        return self._token


#: the shortest time after its first registration a node answers unknown rooms as retryable
SETTLE_MIN_S = 1.0
#: while revoked, registration is retried every this many heartbeat intervals (at least 1 s)
REVOKED_POLL_HEARTBEATS = 5


@dataclass(frozen=True)
class AgentSettings:
    #: the control-plane replicas, in the order they are tried (at least one)
    control_urls: tuple[str, ...]
    node_id: str
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: upper bound of one request; heartbeats use min(this, the heartbeat interval)
    request_timeout_s: float = 5.0
    token_ttl_s: int = 120
    revoke_drain_s: float = 30.0
    #: wait after ``node_exists`` when the reply carries no ``Retry-After``
    exists_default_wait_s: float = 10.0
    exists_margin_s: float = 0.25
    default_heartbeat_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.control_urls:
            raise ValueError("at least one control-plane URL is needed")

    @property
    def control_url(self) -> str:
        """The first control-plane URL (the one tried first)."""
        return self.control_urls[0]

    @classmethod
    def from_config(cls, cfg: NodeConfig, **overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {
            "control_urls": cfg.control_endpoints,
            "node_id": cfg.effective_node_id,
            "revoke_drain_s": cfg.revoke_drain_s,
        }
        values.update(overrides)
        return cls(**values)


class AgentHost(Protocol):
    """What the agent needs of the node it registers: a ``sfu.node.Node``, or the front of a
    multi-worker node (``sfu.workers.front``) that reports its workers as one node."""

    config: NodeConfig
    revoked: bool

    @property
    def url(self) -> str: ...

    @property
    def media_port(self) -> int: ...

    @property
    def tcp_port(self) -> int | None:
        """The ICE-TCP port (worker 0's on a multi-worker node); None: ICE-TCP off."""
        ...

    def room_ids(self) -> list[str]: ...

    def room_participants(self) -> dict[str, int]:
        """Participants per live room: the control plane takes a room back with it."""
        ...

    def room_settings(self) -> dict[str, dict[str, Any]]:
        """Each live room's settings (``max_participants``, ``codecs``, ``empty_timeout_s``) by id:
        a control plane that lost its store learns the rooms back with them."""
        ...

    def cpu_seconds(self) -> float:
        """CPU time used so far, in seconds of one core's budget (the load's ``cpu`` is its rate)."""
        ...

    def load_snapshot(self) -> LoadSnapshot: ...

    def revoke(self) -> None: ...

    def close_all_rooms(self, reason: CloseReason) -> int: ...

    def usage_report(self) -> dict[str, Any] | None:
        """Usage to send with the next heartbeat (``sfu.api.usage``), the same until answered."""
        ...

    def usage_answered(self, body: Mapping[str, Any]) -> None:
        """A heartbeat was answered (its body)."""
        ...


class ControlPlaneAgent:
    """Keeps one node registered; start with ``start()`` inside the node's loop."""

    def __init__(
        self,
        node: AgentHost,
        settings: AgentSettings,
        *,
        rand: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.settings = settings
        self.state = AgentState.IDLE
        self.heartbeat_failures = 0
        self.heartbeats = 0
        self.registrations = 0
        #: times a request moved on to the next control-plane URL
        self.failovers = 0
        self._url_index = 0
        self._answered_url: str | None = settings.control_urls[0]
        self.lease_s: float | None = None
        self.heartbeat_interval_s = settings.default_heartbeat_interval_s
        #: set when the node must exit (its id is held by another live node, or refused outright)
        self.fatal = asyncio.Event()
        self.fatal_reason: str | None = None
        self._rand = rand
        self._wall = wall_clock
        key_id, secret = next(iter(node.config.api_keys.items()))
        self._tokens = NodeTokens(ApiKey(key_id, secret), node.config.project, settings.node_id, settings.token_ttl_s)
        self._backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s)
        self._meter: LoadMeter | None = None
        #: this process: a restarted node registers as a new instance, which retires the old lease
        self.instance = secrets.token_hex(8)
        #: ``time.monotonic()`` of this process's first accepted registration (``settling``)
        self.registered_at: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def control_url(self) -> str:
        """The control-plane URL requests go to now (the one that last answered)."""
        return self.settings.control_urls[self._url_index]

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("agent already started")
        self._session = aiohttp.ClientSession()
        self._meter = LoadMeter(time.monotonic(), self.node.cpu_seconds(), self.node.load_snapshot().packets_out)
        self._task = asyncio.create_task(self._run(), name=f"control-agent-{self.settings.node_id}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # a node's shutdown never hangs on a lost cancel
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.state is not AgentState.FAILED and self.state is not AgentState.REVOKED:
            self.state = AgentState.STOPPED

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                kind = await self._register()
                while kind is ReplyKind.OK or kind is ReplyKind.REVOKED:
                    if kind is ReplyKind.OK:
                        kind = await self._heartbeat_until_change()
                    else:
                        kind = await self._drain_until_reprovisioned()
                if kind is ReplyKind.NOT_FOUND:
                    continue
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = self._backoff.next_delay(self._rand())
                log.exception("control-plane agent failed unexpectedly; restarting it in %.1f s", delay)
                await asyncio.sleep(delay)

    async def _register(self) -> ReplyKind:
        """Until registered (OK), revoked (REVOKED), or told to exit (REFUSED, ``fatal`` set)."""
        self.state = AgentState.REGISTERING
        self._backoff.reset()
        waited_for_lease = False
        while True:
            reply = await self._call("POST", "/v1/nodes", self._registration())
            if reply.kind is ReplyKind.OK:
                self._adopt(reply)
                self.registrations += 1
                self._backoff.reset()
                self.state = AgentState.REGISTERED
                log.info(
                    "registered with the control plane %s as %s (lease %s s, heartbeat every %s s)",
                    self.control_url,
                    self.settings.node_id,
                    self.lease_s,
                    self.heartbeat_interval_s,
                )
                return ReplyKind.OK
            if reply.kind is ReplyKind.REVOKED:
                return ReplyKind.REVOKED
            if reply.kind is ReplyKind.EXISTS:
                if waited_for_lease:
                    self._fail(
                        f"node_exists: node id {self.settings.node_id!r} is held by another live node "
                        f"(control plane {self.control_url}: {reply.detail}); "
                        "give this node another id or revoke the other one"
                    )
                    return ReplyKind.REFUSED
                waited_for_lease = True
                wait = reply.retry_after_s
                wait = self.settings.exists_default_wait_s if wait is None else wait
                log.warning(
                    "node_exists: node id %r has a live lease (maybe this node's previous run); "
                    "registering again in %.1f s",
                    self.settings.node_id,
                    wait,
                )
                await asyncio.sleep(wait + self.settings.exists_margin_s)
                continue
            if reply.kind is ReplyKind.REFUSED and reply.status == 400:
                self._fail(f"the control plane refuses this node's registration: {reply.describe()}")
                return ReplyKind.REFUSED
            delay = self._backoff.next_delay(self._rand())
            level = logging.ERROR if reply.kind is ReplyKind.REFUSED else logging.WARNING
            log.log(level, "registration with %s failed (%s); retrying in %.1f s",
                    self._all_urls(), reply.describe(), delay)
            await asyncio.sleep(delay)

    async def _heartbeat_until_change(self) -> ReplyKind:
        """Heartbeat until the control plane answers NOT_FOUND or REVOKED."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.heartbeat_interval_s
        failing = False
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            reply = await self._call(
                "PUT",
                f"/v1/nodes/{self.settings.node_id}/status",
                self._status(),
                timeout_s=min(self.settings.request_timeout_s, max(0.5, self.heartbeat_interval_s)),
            )
            if reply.kind is ReplyKind.OK:
                self.heartbeats += 1
                self._adopt(reply)
                self.node.usage_answered(reply.body or {})
                if failing:
                    log.info("heartbeats reach the control plane again")
                failing = False
            elif reply.kind is ReplyKind.NOT_FOUND:
                log.warning("control plane does not know this node (%s): registering again", reply.detail)
                return ReplyKind.NOT_FOUND
            elif reply.kind is ReplyKind.REVOKED:
                return ReplyKind.REVOKED
            else:
                self.heartbeat_failures += 1
                if not failing:
                    log.warning("heartbeat failed (%s); the node keeps serving", reply.describe())
                failing = True
            next_at += self.heartbeat_interval_s
            now = loop.time()
            if next_at < now:
                next_at = now + self.heartbeat_interval_s

    async def _drain_until_reprovisioned(self) -> ReplyKind:
        """Refuse new work, close what is left at the drain deadline, and ask now and then
        whether an operator re-provisioned this node (``POST /v1/nodes/{id}/provision``):
        registration then succeeds and the node takes work again."""
        self.state = AgentState.REVOKED
        drain_s = self.settings.revoke_drain_s
        self.node.revoke()
        log.error(
            "node_revoked: node %r was revoked by an operator; refusing new work, "
            "closing the remaining sessions in %.0f s",
            self.settings.node_id,
            drain_s,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        drained = False
        poll_s = max(1.0, self.heartbeat_interval_s * REVOKED_POLL_HEARTBEATS)
        while True:
            await asyncio.sleep(min(poll_s, deadline - loop.time()) if not drained else poll_s)
            if not drained and loop.time() >= deadline:
                drained = True
                closed = self.node.close_all_rooms(CloseReason.DRAINED)
                log.warning("revocation drain deadline passed: closed %d room(s)", closed)
            reply = await self._call("POST", "/v1/nodes", self._registration())
            if reply.kind is ReplyKind.OK:
                self._adopt(reply)
                self.registrations += 1
                self.node.revoked = False
                self.state = AgentState.REGISTERED
                log.warning("node %r was re-provisioned: taking new work again", self.settings.node_id)
                return ReplyKind.OK

    def _fail(self, reason: str) -> None:
        self.state = AgentState.FAILED
        self.fatal_reason = reason
        log.error("%s", reason)
        self.fatal.set()

    # -- bodies ----------------------------------------------------------------------------------
    def _registration(self) -> dict[str, Any]:
        cfg = self.node.config
        return {
            "id": self.settings.node_id,
            "url": self.node.url,
            # every candidate address (IPv4 and IPv6 on a dual-stack node), the first as "host"
            "media": {
                "host": cfg.advertised_ip,
                "hosts": list(cfg.advertised_ips),
                "port": self.node.media_port,
                **({"tcp_port": tcp} if (tcp := self.node.tcp_port) else {}),  # ICE-TCP (contract: "Connectivity")
            },
            "region": cfg.region or None,
            "capacity": {"max_participants": cfg.max_participants, "max_rooms": cfg.max_rooms},
            "version": VERSION,
            # a node back after its lease lapsed keeps its live rooms instead of seeing them re-placed
            "rooms": self.node.room_ids(),
            # and a control plane that lost its store learns them back with their settings
            "room_settings": self.node.room_settings(),
            "instance": self.instance,
            "room_participants": self.node.room_participants(),
        }

    def _status(self) -> dict[str, Any]:
        snap = self.node.load_snapshot()
        cpu, pps = 0.0, 0.0
        if self._meter is not None:
            cpu, pps = self._meter.sample(time.monotonic(), self.node.cpu_seconds(), snap.packets_out)
        return {
            "healthy": snap.healthy,
            "draining": snap.draining,
            "load": {
                "rooms": snap.rooms,
                "participants": snap.participants,
                "cpu": round(cpu, 4),
                "packets_per_s": round(pps, 1),
            },
            "instance": self.instance,
            "room_participants": self.node.room_participants(),
            **({"usage": usage} if (usage := self.node.usage_report()) is not None else {}),
        }

    def settling(self) -> bool:
        """Not registered yet, or registered less than two heartbeat intervals (at least
        ``SETTLE_MIN_S``) ago: the control plane may still be placing the rooms of this node's
        previous run again here (``sfu.node.Node.existing_room``)."""
        if self.registered_at is None:
            return True
        return time.monotonic() - self.registered_at < max(SETTLE_MIN_S, 2 * self.heartbeat_interval_s)

    def _adopt(self, reply: ControlReply) -> None:
        if self.registered_at is None:
            self.registered_at = time.monotonic()
        body = reply.body or {}
        interval = body.get("heartbeat_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
            self.heartbeat_interval_s = float(interval)
        lease = body.get("lease_s")
        if isinstance(lease, (int, float)) and not isinstance(lease, bool) and lease > 0:
            self.lease_s = float(lease)

    # -- HTTP ------------------------------------------------------------------------------------
    def _all_urls(self) -> str:
        return ", ".join(self.settings.control_urls)

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> ControlReply:
        """One request, failing over: the current URL first; on no reply or a 5xx, the next one at
        once, up to one full round.  The URL that answers becomes the current one."""
        urls = self.settings.control_urls
        reply = await self._call_one(urls[self._url_index], method, path, body, timeout_s)
        for _ in range(len(urls) - 1):
            if not _fails_over(reply):
                break
            leaving = urls[self._url_index]
            self._url_index = (self._url_index + 1) % len(urls)
            self.failovers += 1
            # loud once, when the replica that answered last goes away; quiet while all are down
            level = logging.WARNING if leaving == self._answered_url else logging.DEBUG
            log.log(level, "control plane %s failed (%s); failing over to %s", leaving, reply.describe(), self.control_url)
            reply = await self._call_one(self.control_url, method, path, body, timeout_s)
        if not _fails_over(reply):
            self._answered_url = self.control_url
        elif len(urls) > 1:
            # a full round failed: the next round (after the caller's backoff) starts where this one did
            self._url_index = (self._url_index + 1) % len(urls)
            self._answered_url = None
        return reply

    async def _call_one(
        self, base: str, method: str, path: str, body: Mapping[str, Any], timeout_s: float | None
    ) -> ControlReply:
        assert self._session is not None
        url = base + path
        headers = {"Authorization": f"Bearer {self._tokens.get(self._wall())}"}
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.settings.request_timeout_s)
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                raw = await resp.content.read(64 * 1024)
                return ControlReply.parse(resp.status, resp.headers.get("Retry-After"), raw)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return ControlReply.unreachable(f"{method} {url}: {type(exc).__name__}: {exc}")


def _fails_over(reply: ControlReply) -> bool:
    """No reply, or a 5xx: another replica may serve the request."""
    return reply.status is None or reply.status >= 500
