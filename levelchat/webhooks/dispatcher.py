"""Fan events out to endpoints through the durable queue and deliver them, one delivery loop per
endpoint (one request at a time: an endpoint sees its events in order), at least once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from levelchat.errors import ApiError
from levelchat.tasks import cancel_and_wait
from levelchat.webhooks.backoff import retry_delay_s
from levelchat.webhooks.model import EVENTS, WebhookEndpoint, WebhookSettings, validate_events, validate_url
from levelchat.webhooks.queue import NewRow, QueuedEvent, WebhookQueue
from levelchat.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger("levelchat.webhooks")
IDLE_POLL_S = 5.0


@dataclass
class WebhookStats:
    delivered: int = 0
    retried: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # by reason

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def config_endpoint_id(ep: WebhookEndpoint) -> str:
    """A configured endpoint's id: stable across restarts while its settings stay the same."""
    digest = hashlib.sha256(json.dumps([ep.url, list(ep.events), ep.key]).encode()).hexdigest()
    return "cfg_" + digest[:16]


class WebhookDispatcher:
    def __init__(
        self,
        *,
        db_path: str,
        configured: tuple[WebhookEndpoint, ...],
        api_keys: Mapping[str, str],
        settings: WebhookSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.stats = WebhookStats()
        self.queue = WebhookQueue(db_path, settings.queue_max, self.stats.drop)
        self.queue.on_written = self._wake_all
        self._keys = dict(api_keys)
        self._default_key = next(iter(self._keys))
        self._clock = clock
        self._configured = {config_endpoint_id(ep): ep for ep in configured}
        self.endpoints: dict[str, tuple[WebhookEndpoint, str]] = {}  # id -> (endpoint, source)
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.queue.open()
        self._session = aiohttp.ClientSession()
        for eid, ep in self._configured.items():
            self.endpoints[eid] = (ep, "config")
        for eid, ep in (await self.queue.load_endpoints()).items():
            self.endpoints[eid] = (ep, "api")
        orphans = await self.queue.drop_all_but(frozenset(self.endpoints))
        if orphans:
            log.warning("webhooks: dropped %d queued event(s) of endpoints no longer configured", orphans)
            self.stats.drop("endpoint_removed", orphans)
        for eid in self.endpoints:
            self._start_loop(eid)
        self.started = True

    async def stop(self) -> None:
        """Commit what is queued (it is delivered after the next start) and stop delivering."""
        for task in list(self._loops.values()):
            await cancel_and_wait(task)
        self._loops.clear()
        if self.started:
            await self.queue.close()
        if self._session is not None:
            await self._session.close()
        self.started = False

    # -- events ------------------------------------------------------------------------------------
    def takers(self, event: str) -> list[str]:
        return [eid for eid, (ep, _) in self.endpoints.items() if ep.takes(event)]

    def emit(self, body: dict[str, Any]) -> list[str]:
        """Queue ``body`` (``model.make_event``) for every endpoint that takes its event; never
        blocks (the rows are committed off the event loop).  The endpoint ids it went to."""
        takers = self.takers(body["event"])
        if not takers or not self.started:
            return []
        raw = json.dumps(body, separators=(",", ":")).encode()
        now = self._clock()
        self.queue.enqueue([NewRow(eid, body["id"], raw, now) for eid in takers])
        return takers

    # -- endpoints ---------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        return [self._view(eid) for eid in self.endpoints]

    def _view(self, eid: str) -> dict[str, Any]:
        ep, source = self.endpoints[eid]
        return {"id": eid, "url": ep.url, "events": list(ep.events), "key": ep.key or None, "source": source}

    def parse_endpoint(self, body: Mapping[str, Any]) -> WebhookEndpoint:
        unknown = sorted(set(body) - {"url", "events", "key"})
        if unknown:
            raise ApiError("bad_request", f"unknown field(s): {', '.join(unknown)}; known: url, events, key")
        try:
            url = validate_url(body.get("url"))
            events = validate_events(body.get("events", []))
        except ValueError as exc:
            raise ApiError("bad_request", str(exc)) from None
        key = body.get("key") or ""
        if not isinstance(key, str) or (key and key not in self._keys):
            raise ApiError("bad_request", "key must name one of the API keys (or be left out: the first one)")
        return WebhookEndpoint(url=url, events=events, key=key)

    async def add(self, ep: WebhookEndpoint, eid: str = "") -> dict[str, Any]:
        """Add ``ep`` under a new id, or under ``eid`` (a multi-worker node's front gives every
        worker the id the first one chose; an id already present is replaced)."""
        if eid in self.endpoints and self.endpoints[eid][1] == "api":
            await self.remove(eid)
        if len(self.endpoints) >= self.settings.max_endpoints:
            raise ApiError("conflict", f"at most {self.settings.max_endpoints} webhook endpoints; delete one first")
        eid = eid or "wh_" + secrets.token_hex(8)
        await self.queue.save_endpoint(eid, ep)
        self.endpoints[eid] = (ep, "api")
        self._start_loop(eid)
        return self._view(eid)

    async def remove(self, eid: str) -> None:
        entry = self.endpoints.get(eid)
        if entry is None:
            raise ApiError("not_found", f"no webhook endpoint {eid[:64]!r}")
        if entry[1] == "config":
            raise ApiError("conflict", f"webhook endpoint {eid} comes from the configuration; remove it there")
        del self.endpoints[eid]
        task = self._loops.pop(eid, None)
        if task is not None:
            await cancel_and_wait(task)
        self._wake.pop(eid, None)
        await self.queue.delete_endpoint(eid)
        await self.queue.flush()
        n = await self.queue.drop_endpoint(eid)
        if n:
            self.stats.drop("endpoint_removed", n)

    # -- delivery ----------------------------------------------------------------------------------
    def _start_loop(self, eid: str) -> None:
        self._wake[eid] = asyncio.Event()
        self._loops[eid] = asyncio.create_task(self._deliver_forever(eid), name=f"webhook-{eid}")

    def poke(self) -> None:
        """Look at every endpoint's queue again now (after the clock was moved, in tests)."""
        self._wake_all()

    def _wake_all(self) -> None:
        for event in self._wake.values():
            event.set()

    async def _deliver_forever(self, eid: str) -> None:
        wake = self._wake[eid]
        while True:
            try:
                wake.clear()
                row = await self.queue.head(eid)
                wait_s = IDLE_POLL_S if row is None else row.next_at - self._clock()
                if wait_s > 0:  # a new event or ``poke`` looks again sooner
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(wait_s, IDLE_POLL_S)):
                            await wake.wait()
                    continue
                assert row is not None
                await self._attempt(eid, row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery loop of %s failed; going on", eid)
                await asyncio.sleep(1.0)

    async def _attempt(self, eid: str, row: QueuedEvent) -> None:
        ep, _ = self.endpoints[eid]
        now = self._clock()
        if now - row.first_at > self.settings.max_age_s:
            log.warning("webhook %s to %s given up after %d attempts", row.event_id, ep.url, row.attempts)
            await self.queue.delete(row.seq)
            self.stats.drop("expired")
            return
        ok, why = await self._post(ep, row)
        if ok:
            await self.queue.delete(row.seq)
            self.stats.delivered += 1
            return
        attempts = row.attempts + 1
        delay = retry_delay_s(attempts, self.settings.retry_base_s, self.settings.retry_max_s)
        log.info("webhook %s to %s failed (%s); attempt %d again in %.1f s", row.event_id, ep.url, why, attempts + 1, delay)
        await self.queue.reschedule(row.seq, attempts, self._clock() + delay)
        self.stats.retried += 1

    async def _post(self, ep: WebhookEndpoint, row: QueuedEvent) -> tuple[bool, str]:
        assert self._session is not None
        secret = self._keys.get(ep.key or self._default_key, self._keys[self._default_key])
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, int(time.time()), row.body),
            EVENT_ID_HEADER: row.event_id,
        }
        try:
            async with self._session.post(
                ep.url,
                data=row.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                allow_redirects=False,
            ) as resp:
                return 200 <= resp.status < 300, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return False, type(exc).__name__

    def queue_depth(self) -> int:
        return self.queue.depth


__all__ = ["EVENTS", "WebhookDispatcher", "WebhookStats", "config_endpoint_id"]
