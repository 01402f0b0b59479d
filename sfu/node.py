"""The SFU node: one media port, the router, the HTTP API and housekeeping, started and stopped together."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.httpserver import GuardedAppRunner
from levelchat.tokens import ApiKey, TokenVerifier
from levelchat.usage.metrics import UsageCollector
from levelchat.webhooks.metrics import WebhookCollector
from sfu import clock, gcpolicy
from sfu.agent import AgentSettings, ControlPlaneAgent, LoadSnapshot
from sfu.api.http import create_app
from sfu.api.sessions import SessionService
from sfu.api.usage import NODE_JOINS, NodeUsage
from sfu.api.webhooks import NodeWebhooks
from sfu.config import HttpBound, NodeConfig
from sfu.counters import MediaCounters
from sfu.gcpolicy import GcFreezer
from sfu.loopstats import GcPauses, LoopLagProbe
from sfu.memtrim import HeapTrimmer
from sfu.metrics import LoopCollector, NodeCollector, make_registry
from sfu.recording.manager import RecordingManager
from sfu.routing.allocation import TICK_MS
from sfu.routing.quality_feed import by_quality
from sfu.routing.rooms import Room, RoomPolicy, RoomRegistry
from sfu.routing.router import Router
from sfu.selfcheck import SelfCheck
from sfu.signaling.limits import OfferLimits
from sfu.signaling.sdp import Setup
from sfu.transport.certificate import Certificate
from sfu.transport.dtls_pool import HandshakePool
from sfu.transport.peer import CloseReason
from sfu.transport.srtp import SrtpProfile
from sfu.transport.tcp import TcpLimits, TcpMediaServer
from sfu.transport.udp import MediaPort
from sfu.turn import IceServer, mint_all

log = logging.getLogger(__name__)
TICK_S = 1.0
ALLOCATION_TICK_MS = TICK_MS
DRAIN_POLL_S = 0.5


class Node(HttpBound):
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.instance = secrets.token_hex(4)
        self.counters = MediaCounters()
        self.port = MediaPort(config.media_host, config.media_port, self.counters)
        self.port.set_pacing(config.pacing())
        #: ICE-TCP beside the UDP port (``ice_tcp``)
        self.tcp: TcpMediaServer | None = None
        if config.ice_tcp:
            limits = TcpLimits(
                max_connections=config.tcp_max_connections,
                max_connections_per_ip=config.tcp_max_connections_per_ip,
                bind_timeout_s=config.tcp_bind_timeout_s,
                send_buffer_bytes=config.tcp_send_buffer_bytes,
            )
            self.tcp = TcpMediaServer(self.port, config.media_host, config.ice_tcp_port, limits)
        self.certificate = Certificate.generate()
        self.rooms = RoomRegistry(max_rooms=config.max_rooms, max_participants=config.max_participants)
        self.verifier = TokenVerifier([ApiKey(k, s) for k, s in config.api_keys.items()], config.project)
        self.http_counts: dict[tuple[str, str], int] = {}
        self.metrics_registry = make_registry(
            NodeCollector(
                self.counters, self._gauges, self.http_counts, self._counter_values, self.port.sessions_by_transport,
                self._qualities,
            )
        )
        #: signed webhooks from the router's room events (sfu.api.webhooks)
        self.webhooks = NodeWebhooks(config)
        self.metrics_registry.register(WebhookCollector(lambda: self.webhooks.dispatcher))
        #: participant- and recording-minutes of the period, the quota on joins (sfu.api.usage)
        self.usage = NodeUsage(config)
        self.metrics_registry.register(UsageCollector(config.project, self.usage.figures, NODE_JOINS))
        self.turn_credentials_issued = 0
        #: the forwarding loop's stalls and the collector's pauses (sfu.loopstats)
        self.loop_probe = LoopLagProbe()
        self.gc_pauses = GcPauses()
        self.metrics_registry.register(LoopCollector(self.loop_probe, self.gc_pauses))
        #: DTLS handshake steps off the forwarding loop (sfu.transport.dtls_pool)
        threads = config.dtls_handshake_threads
        self.handshakes = HandshakePool(threads) if threads else None
        #: the process's collector policy (sfu.gcpolicy): set by the programs that own the process
        #: (``python -m sfu``, a worker), never by an in-process node in tests or tools
        self.gc_freezer: GcFreezer | None = None
        #: recording without transcoding: a recorder process per recording (sfu.recording)
        self.recordings = RecordingManager(config, self.webhooks.emit)
        self.recordings.usage = self.usage  # recording minutes (issue 14)
        self.draining = False
        self.drained = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self.revoked = False
        self.self_check_ok = True
        self.self_check_reason = "not run yet"
        self._runner: web.AppRunner | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._allocation_task: asyncio.Task[None] | None = None
        #: gives the heap back to the system after many sessions ended (sfu.memtrim)
        self.heap_trimmer = HeapTrimmer()
        self.router: Router
        self.selfcheck: SelfCheck | None = None
        self.agent: ControlPlaneAgent | None = None
        self.sessions: SessionService
        self.http_port = config.http_port

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.port.open(loop)
        self.loop_probe.start(loop)
        self.gc_pauses.install()
        if self.tcp is not None:
            await self.tcp.start()
            self.port.tcp_port = self.tcp.bound_port
        self.router = Router(
            rooms=self.rooms,
            port=self.port,
            certificate=self.certificate,
            counters=self.counters,
            srtp_profiles=[SrtpProfile.from_name(n) for n in self.config.srtp_profiles],
            loop=loop,
            publisher_max_bitrate_bps=self.config.publisher_max_bitrate_bps,
            setup_timeout_ms=int(self.config.session_setup_timeout_s * 1000),
            handshakes=self.handshakes,
            publisher_transport_cc=self.config.publisher_transport_cc,
            publisher_twcc_interval_ms=self.config.publisher_twcc_interval_ms,
        )
        self.router.observers.append(self.webhooks.on_event)
        self.router.observers.append(self.recordings.on_event)
        self.recordings.start_sweeper()
        self.router.observers.append(self.usage.on_event)
        cfg = self.config
        self.sessions = SessionService(
            self.router,
            advertised_ips=cfg.advertised_ips,
            preferred_role=Setup(cfg.dtls_role),
            limits=OfferLimits(cfg.max_media_sections, cfg.max_ssrcs, cfg.max_published_tracks),
        )
        # the webhook queue opens before the API serves, unless its file is named after the port
        # the API binds (no node_id, no webhooks_db, port 0): then just after, early events buffered
        hooks_first = bool(cfg.webhooks_db or cfg.node_id or cfg.http_port)
        if hooks_first:
            await self.webhooks.start(self.node_id, self.http_port)
            await self.usage.start(self.http_port)
        self._runner = GuardedAppRunner(self.make_app(), self.config.http_limits)
        await self._runner.setup()
        await self.make_site(self._runner).start()
        addresses = self._runner.addresses
        if addresses and isinstance(addresses[0], tuple):
            self.http_port = int(addresses[0][1])
        if not hooks_first:
            await self.webhooks.start(self.node_id, self.http_port)
            await self.usage.start(self.http_port)
        self.self_check_ok = True
        self.self_check_reason = "not run yet"
        self.selfcheck = SelfCheck(
            self,
            interval_s=self.config.self_check_interval_s,
            deadline_ms=self.config.self_check_deadline_ms,
            failures_to_fail=self.config.self_check_failures,
            passes_to_recover=self.config.self_check_recoveries,
            max_loop_lag_ms=self.config.max_loop_lag_ms,
        )
        await self.selfcheck.start()
        self._tick_task = asyncio.create_task(self._ticker())
        self._allocation_task = asyncio.create_task(self._allocation_ticker())
        if self.config.control_endpoints:
            self.agent = ControlPlaneAgent(self, AgentSettings.from_config(self.config, node_id=self.node_id))
            self.agent.start()  # registers in the background: never delays serving
        log.info(
            "node %s listening: http %s, media udp %s:%d, tcp %s (advertised %s)",
            self.config.effective_node_id,
            self.url,
            self.config.media_host,
            self.port.port,
            self.port.tcp_port or "off",
            " ".join(self.config.advertised_ips),
        )

    async def stop(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self.agent is not None:
            await self.agent.stop()
        if self.selfcheck is not None:
            await self.selfcheck.stop()
        self.loop_probe.stop()
        self.gc_pauses.uninstall()
        for task in (self._tick_task, self._allocation_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        now = clock.now_ms()
        for room in list(self.rooms.rooms.values()):
            self.router.close_room(room, CloseReason.NODE_SHUTDOWN, now)
        await self.recordings.close()  # the rooms closed: their recordings finish their files
        if self._runner is not None:
            await self._runner.cleanup()
        await self.usage.stop()
        await self.webhooks.stop()  # commits what is queued: delivered after the next start
        if self.handshakes is not None:
            self.handshakes.close()
        if self.tcp is not None:
            await self.tcp.stop()
        self.port.close()

    def own_gc(self) -> None:
        """This node owns its process: freeze what start-up made (``gc.freeze``), and sessions'
        objects after each set-up burst (sfu.gcpolicy)."""
        gcpolicy.freeze_start_up()
        self.gc_freezer = GcFreezer()

    def make_app(self) -> web.Application:
        """The HTTP API (a forwarding worker adds its private routes: ``sfu.workers.worker``)."""
        return create_app(self)

    def make_site(self, runner: web.AppRunner) -> web.BaseSite:
        return web.TCPSite(runner, self.config.http_host, self.config.http_port, reuse_address=True)

    async def _allocation_ticker(self) -> None:
        """Subscribers' estimates spent on their layers (sfu.routing.allocation): O(those due)."""
        loop = self.router.allocation
        while True:
            await asyncio.sleep(ALLOCATION_TICK_MS / 1000)
            try:
                loop.run_due(clock.now_ms())
            except Exception:
                log.exception("allocation tick failed")

    async def _ticker(self) -> None:
        """Housekeeping: each participant's once a second, a slot of the router's wheel at a time
        (every 20 ms: no stall of the forwarding loop for all sessions at once); the node's own
        once a second."""
        second_due = clock.now_ms() + int(TICK_S * 1000)
        while True:
            await asyncio.sleep(max(0.001, (self.router.wheel.next_due_ms() - clock.now_ms()) / 1000))
            try:
                now = clock.now_ms()
                self.router.tick_due(now)
                if now >= second_due:
                    second_due = now + int(TICK_S * 1000)
                    self.sessions.expire()
                    self.heap_trimmer.observe(self.held_by_clients(), now)
                    if self.gc_freezer is not None:
                        action = self.gc_freezer.decide(len(self.router.participants), now)
                        if action is not None:
                            gcpolicy.apply(action)
            except Exception:
                log.exception("housekeeping tick failed")

    def held_by_clients(self) -> int:
        """What clients make the node hold now, for the heap trimmer: participants (joined or only
        set up) and open HTTP connections (idle WebSockets and slow requests included)."""
        held = len(self.router.participants)
        guarded = self._runner.guarded if isinstance(self._runner, GuardedAppRunner) else None
        if guarded is not None:
            held += guarded.registry.total
        return held

    # -- admission -------------------------------------------------------------------------------
    def check_accepting_rooms(self) -> None:
        if self.revoked:
            raise ApiError("node_revoked", "this node was revoked and accepts no new work")
        if not self.self_check_ok:
            raise ApiError("room_check_failed", f"this node's self-check fails: {self.self_check_reason}")
        if self.draining:
            raise ApiError("service_unavailable", "this node is draining and accepts no new rooms")

    def existing_room(self, room_id: str, now_ms: int) -> Room:
        """The live room, or ``room_not_found``; but while this process is only starting to serve
        for its control plane (not registered yet, or just registered: the control plane is
        re-creating the rooms it lost with the previous run), an unknown room is
        ``service_unavailable`` with ``Retry-After``: a joiner sent here retries instead of giving up."""
        room = self.rooms.rooms.get(room_id)
        # (the HTTP site serves before the agent starts: the first self-check runs in between)
        starting = self.config.control_url and (self.agent is None or self.agent.settling())
        if room is None and starting:
            raise ApiError(
                "service_unavailable",
                f"room {room_id!r} is not here yet: this node has just started and its control plane is "
                "placing its rooms again",
                retry_after_s=1,
            )
        return self.rooms.get(room_id, now_ms)

    def default_policy(self) -> RoomPolicy:
        cfg = self.config
        return RoomPolicy(
            max_participants=cfg.default_max_participants,
            codecs=tuple(cfg.default_codecs),
            empty_timeout_s=cfg.default_empty_timeout_s,
        )

    def room_for_join(self, room_id: str, now_ms: int) -> Room:
        if self.revoked:
            raise ApiError("node_revoked", "this node was revoked and accepts no new work")
        room = self.rooms.rooms.get(room_id)
        if room is not None:
            return room
        if not self.config.auto_create_rooms:
            return self.existing_room(room_id, now_ms)  # room_not_found (closed rooms are not joinable)
        self.check_accepting_rooms()
        room, _ = self.rooms.create(room_id, self.default_policy(), now_ms)
        return room

    # -- control plane (sfu.agent) ---------------------------------------------------------------
    @property
    def media_port(self) -> int:
        return self.port.port

    @property
    def tcp_port(self) -> int | None:
        """The ICE-TCP port (None: ICE-TCP off)."""
        return self.port.tcp_port or None

    def room_ids(self) -> list[str]:
        return [r.id for r in self.rooms.public_rooms()]

    def room_settings(self) -> dict[str, dict[str, Any]]:
        return {
            r.id: {
                "max_participants": r.policy.max_participants,
                "codecs": list(r.policy.codecs),
                "empty_timeout_s": r.policy.empty_timeout_s,
                "recording": r.policy.recording,
            }
            for r in self.rooms.public_rooms()
        }

    def room_participants(self) -> dict[str, int]:
        """Participants per live room, for the control plane (``sfu.agent``)."""
        return {r.id: len(r.participants) for r in self.rooms.public_rooms()}

    def cpu_seconds(self) -> float:
        return time.process_time()

    def load_snapshot(self) -> LoadSnapshot:
        return LoadSnapshot(
            rooms=self.rooms.room_count,
            participants=self.rooms.participant_count,
            packets_out=sum(self.counters.rtp_out),
            healthy=self.self_check_ok and self.port.is_open,
            draining=self.draining,
        )

    # -- drain ----------------------------------------------------------------------------------
    def start_drain(self, deadline_s: float) -> None:
        """No new rooms from now on; live rooms go on until they empty or the deadline passes,
        then what is left is closed (reason ``drained``) and ``drained`` is set.  Reversible
        with ``cancel_drain`` until then.  A second call shortens or extends the deadline."""
        self.draining = True
        self.drained.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain_task = asyncio.create_task(self._drain(deadline_s))
        log.warning("draining: no new rooms; closing what is left in %.0f s", deadline_s)

    def cancel_drain(self) -> bool:
        """Take new rooms again (also after a completed drain); False when not draining."""
        if not self.draining:
            return False
        self.drained.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        self.draining = False
        log.warning("drain cancelled: taking new rooms again")
        return True

    async def _drain(self, deadline_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + deadline_s
        while self.rooms.participant_count > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(min(DRAIN_POLL_S, max(0.0, deadline - asyncio.get_running_loop().time())))
        closed = self.close_all_rooms(CloseReason.DRAINED)
        log.warning("drain complete: closed %d room(s)", closed)
        self.drained.set()

    def drain_state(self) -> dict[str, object]:
        return {
            "draining": self.draining,
            "drained": self.drained.is_set(),
            "rooms": self.rooms.room_count,
            "participants": self.rooms.participant_count,
        }

    def revoke(self) -> None:
        """Refuse new work from now on (``node_revoked``); live sessions stay until closed."""
        self.revoked = True

    def usage_report(self) -> dict[str, Any] | None:
        return self.usage.report()

    def usage_answered(self, body: Mapping[str, Any]) -> None:
        self.usage.answered(body)

    def close_all_rooms(self, reason: CloseReason) -> int:
        """Close every public room and its sessions; the number closed."""
        now = clock.now_ms()
        rooms = self.rooms.public_rooms()
        for room in rooms:
            self.router.close_room(room, reason, now)
        self.sessions.expire()
        return len(rooms)

    # -- health ----------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if self.revoked:
            return False, "revoked"
        if self.draining:
            return False, "draining"
        if not self.port.is_open:
            return False, "media port closed"
        if not self.self_check_ok:
            return False, f"self-check failing: {self.self_check_reason}"
        return True, "ok"

    def ice_servers(self, identity: str) -> list[IceServer]:
        """The TURN servers of the config, each with a credential minted now for ``identity``
        (what a WHIP/WHEP ``201`` and a WebSocket ``join`` hand out); counted."""
        servers = mint_all(self.config.turn_servers, identity, time.time())
        self.turn_credentials_issued += len(servers)
        return servers

    def _counter_values(self) -> dict[str, float]:
        failures = self.agent.heartbeat_failures if self.agent is not None else 0
        failovers = self.agent.failovers if self.agent is not None else 0
        tcp = self.tcp
        pool = self.handshakes
        return {
            "sfu_control_plane_heartbeat_failures": failures,
            "sfu_control_plane_failovers": failovers,
            "sfu_tcp_connections_refused": tcp.refused if tcp is not None else 0,
            "sfu_tcp_connections_timed_out": tcp.timed_out if tcp is not None else 0,
            "sfu_turn_credentials_issued": self.turn_credentials_issued,
            "sfu_gc_freezes": self.gc_freezer.freezes if self.gc_freezer is not None else 0,
            "sfu_dtls_handshakes_offloaded": pool.handshakes if pool is not None else 0,
            "sfu_dtls_handshake_jobs": pool.jobs if pool is not None else 0,
            "sfu_dtls_handshake_queue_overflow": pool.overflow if pool is not None else 0,
            "sfu_recordings_completed": self.recordings.outcomes["completed"],
            "sfu_recordings_failed": self.recordings.outcomes["failed"],
            "sfu_recording_packets_dropped": self.recordings.packets_dropped(),
        }

    def _qualities(self) -> dict[str, int]:
        participants = (p for r in self.rooms.public_rooms() for p in r.participants.values())
        return {q.value: n for q, n in by_quality(participants).items()}

    def _gauges(self) -> dict[str, Any]:
        rooms = self.rooms.public_rooms()
        tracks = sum(len(p.tracks) for r in rooms for p in r.participants.values())
        check = self.selfcheck
        last = check.last if check is not None else None
        return {
            "sfu_rooms": len(rooms),
            "sfu_participants": self.rooms.participant_count,
            "sfu_tracks": tracks,
            "sfu_self_check_ok": 1 if self.self_check_ok else 0,
            "sfu_self_check_duration_seconds": last.duration_s if last is not None else 0.0,
            "sfu_event_loop_lag_seconds": check.last_loop_lag_s if check is not None else 0.0,
            "sfu_tcp_connections": len(self.port.tcp_links),
            "sfu_tcp_queued_bytes": self.tcp.queued_bytes if self.tcp is not None else 0,
            "sfu_gc_frozen_objects": gc.get_freeze_count(),
            "sfu_recordings_active": len(self.recordings.active),
        }
