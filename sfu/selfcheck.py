"""The node's periodic self-check: a real SRTP stream through the node's own media path.

A probe publisher and a probe subscriber (``sfu.client.lite``: ICE, DTLS, SRTP, no aiortc) join
an internal room over the node's UDP port.  Each check sends one packet carrying a fresh nonce
and waits for it to come back through demux, SRTP unprotect, routing, rewrite and re-protect.
The check also fails when the event loop lags or the media socket is closed.  After
``failures_to_fail`` consecutive failures the node is unhealthy; ``passes_to_recover``
consecutive passes make it healthy again.  Nothing here depends on the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfu import clock
from sfu.api.sessions import Owner
from sfu.client.lite import LiteEndpoint
from sfu.routing.rooms import Room, RoomPolicy
from sfu.transport.certificate import Certificate
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

PROBE_PUBLISHER = "selfcheck-probe-publisher"
PROBE_SUBSCRIBER = "selfcheck-probe-subscriber"
PROBE_SSRC = 0x5E1FC4EC
#: VP8 keyframe start: S bit, partition 0, then a frame tag with P=0
_KEYFRAME_HEAD = b"\x10\x00\x9d\x01\x2a"


def probe_host(media_host: str) -> str:
    """Where the probes reach the media port from: its own address, or IPv4 loopback for a
    wildcard (on a dual-stack ``::`` port that is the v4-mapped path most clients take, and it
    works where the host has no IPv6 loopback, as in a container without IPv6)."""
    return "127.0.0.1" if media_host in ("0.0.0.0", "::") else media_host


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str
    duration_s: float


class SelfCheck:
    def __init__(
        self,
        node: Node,
        *,
        interval_s: float,
        deadline_ms: int,
        failures_to_fail: int,
        passes_to_recover: int,
        max_loop_lag_ms: int,
    ) -> None:
        self.node = node
        self.interval_s = interval_s
        self.deadline_ms = deadline_ms
        self.failures_to_fail = failures_to_fail
        self.passes_to_recover = passes_to_recover
        self.max_loop_lag_ms = max_loop_lag_ms
        self.room_id = f"selfcheck-{node.instance}"
        self.consecutive_failures = 0
        self.consecutive_passes = 0
        self.last: CheckResult | None = None
        self.last_loop_lag_s = 0.0
        self.runs = 0
        self._cert = Certificate.generate()
        self._pub: LiteEndpoint | None = None
        self._sub: LiteEndpoint | None = None
        self._seq = 0
        self._waiting: bytes | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Run the first check now (so readiness is known when the node starts), then periodically.

        A node whose very first check fails starts unhealthy at once: it must not take rooms (and
        be placed on by the control plane) during the failures it would otherwise take to notice."""
        first = await self.run_once()
        self._record(first)
        if not first.ok:
            self.node.self_check_ok = False
            self.node.self_check_reason = first.reason
        self._task = asyncio.create_task(self._loop())
        self._lag_task = asyncio.create_task(self._watch_lag())

    async def stop(self) -> None:
        for task in (self._task, self._lag_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._teardown()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._record(await self.run_once())

    async def _watch_lag(self) -> None:
        """Event-loop lag: how late a short sleep wakes up."""
        period = 0.1
        while True:
            start = time.monotonic()
            await asyncio.sleep(period)
            lag = max(0.0, time.monotonic() - start - period)
            # keep the worst lag seen since the last check
            self.last_loop_lag_s = max(self.last_loop_lag_s, lag)

    # -- one check -------------------------------------------------------------------------------
    async def run_once(self) -> CheckResult:
        started = time.perf_counter()
        self.runs += 1
        lag_s, self.last_loop_lag_s = self.last_loop_lag_s, 0.0
        if not self.node.port.is_open:
            return CheckResult(False, "media socket is closed", time.perf_counter() - started)
        if lag_s * 1000 > self.max_loop_lag_ms:
            return CheckResult(False, f"event loop lagged {lag_s * 1000:.0f} ms", time.perf_counter() - started)
        try:
            if self._pub is None or self._sub is None:
                await self._setup()
            ok = await self._probe()
        except (TimeoutError, ConnectionError, OSError) as exc:
            self._teardown()
            return CheckResult(False, f"probe session failed: {exc}", time.perf_counter() - started)
        except Exception as exc:  # an unexpected failure is a failed check, never a dead checker
            log.exception("self-check crashed")
            self._teardown()
            return CheckResult(False, f"self-check error: {exc}", time.perf_counter() - started)
        if not ok:
            self._teardown()  # the next check starts from fresh sessions
            return CheckResult(
                False, f"probe packet did not return within {self.deadline_ms} ms", time.perf_counter() - started
            )
        return CheckResult(True, "ok", time.perf_counter() - started)

    def _record(self, result: CheckResult) -> None:
        self.last = result
        node = self.node
        if result.ok:
            self.consecutive_failures = 0
            self.consecutive_passes += 1
            if not node.self_check_ok and self.consecutive_passes >= self.passes_to_recover:
                log.warning("self-check recovered after %d passes", self.consecutive_passes)
                node.self_check_ok = True
            if node.self_check_ok:
                node.self_check_reason = "ok"
        else:
            self.consecutive_passes = 0
            self.consecutive_failures += 1
            log.warning("self-check failed (%d in a row): %s", self.consecutive_failures, result.reason)
            if self.consecutive_failures >= self.failures_to_fail:
                node.self_check_ok = False
                node.self_check_reason = result.reason

    def _room(self, now_ms: int) -> Room:
        room = self.node.rooms.rooms.get(self.room_id)
        if room is None:
            policy = RoomPolicy(max_participants=2, codecs=("VP8",), empty_timeout_s=86400)
            room, _ = self.node.rooms.create(self.room_id, policy, now_ms, internal=True)
        return room

    async def _setup(self) -> None:
        self._teardown()
        node = self.node
        host = probe_host(node.config.media_host)
        address = (host, node.port.port)
        now = clock.now_ms()
        room = self._room(now)
        pub = LiteEndpoint(self._cert, host=host)
        sub = LiteEndpoint(self._cert, host=host, on_rtp=self._on_rtp)
        self._pub, self._sub = pub, sub
        _, answer = node.sessions.publish(room, Owner.node(PROBE_PUBLISHER), None, pub.offer(send=True, video_ssrc=PROBE_SSRC), now)
        await pub.connect(answer, timeout_s=self.deadline_ms / 1000, address=address)
        _, answer = node.sessions.subscribe(room, Owner.node(PROBE_SUBSCRIBER), PROBE_PUBLISHER, sub.offer(send=False), now)
        await sub.connect(answer, timeout_s=self.deadline_ms / 1000, address=address)

    async def _probe(self) -> bool:
        pub, sub = self._pub, self._sub
        assert pub is not None and sub is not None
        pub.send_check()  # consent freshness for both probe sessions
        sub.send_check()
        nonce = secrets.token_bytes(8)
        self._waiting = nonce
        self._arrived = asyncio.Event()
        self._seq = (self._seq + 1) & 0xFFFF
        header = struct.pack("!BBHII", 0x80, 0x80 | 96, self._seq, self._seq * 3000, PROBE_SSRC)
        pub.send_rtp(header + _KEYFRAME_HEAD + nonce)
        try:
            await asyncio.wait_for(self._arrived.wait(), self.deadline_ms / 1000)
        except TimeoutError:
            return False
        finally:
            self._waiting = None
        return True

    def _on_rtp(self, view: memoryview, length: int) -> None:
        nonce = self._waiting
        if nonce is not None and self._arrived is not None and bytes(view[length - len(nonce) : length]) == nonce:
            self._arrived.set()

    def _teardown(self) -> None:
        for ep in (self._pub, self._sub):
            if ep is not None:
                ep.close()
        self._pub = self._sub = None
        room = self.node.rooms.rooms.get(self.room_id)
        if room is not None:
            now = clock.now_ms()
            for participant in list(room.participants.values()):
                self.node.router.leave(participant, CloseReason.LEFT, now)
                self.node.sessions.forget(participant)
