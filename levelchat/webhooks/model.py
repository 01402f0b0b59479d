"""Webhook events, endpoints and delivery settings."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from levelchat.config import ConfigError

NODE_EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "recording_started",
    "recording.completed",
    "recording.failed",
)
CONTROL_EVENTS = ("node_registered", "node_unhealthy", "node_revoked")
EVENTS = frozenset(NODE_EVENTS + CONTROL_EVENTS)
MAX_URL_LENGTH = 2048


def validate_url(url: object) -> str:
    """An absolute http(s) URL with a host, or ``ValueError`` saying why not."""
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"url {url[:80]!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url[:80]!r} must be an absolute http(s) URL")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("url must not contain whitespace or control characters")
    return url


def validate_events(events: object) -> tuple[str, ...]:
    if not isinstance(events, (list, tuple)) or not all(isinstance(e, str) for e in events):
        raise ValueError("events must be a list of event names")
    unknown = sorted(set(events) - EVENTS)
    if unknown:
        raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENTS))}")
    return tuple(dict.fromkeys(events))


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where events go: ``url``; ``events`` it takes (empty: all); ``key``: the API key id whose
    secret signs them (empty: the first API key)."""

    url: str = ""
    events: tuple[str, ...] = ()
    key: str = ""

    def validate(self) -> None:
        try:
            validate_url(self.url)
            validate_events(self.events)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def takes(self, event: str) -> bool:
        return not self.events or event in self.events


@dataclass(frozen=True)
class WebhookSettings:
    """Delivery tuning (config keys ``webhooks_*``; ``docs/operations.md``)."""

    timeout_s: float = 5.0
    retry_base_s: float = 1.0
    retry_max_s: float = 600.0
    max_age_s: float = 86400.0
    queue_max: int = 10_000
    max_endpoints: int = 32

    def problems(self) -> list[str]:
        out = []
        if not 0 < self.timeout_s <= 60:
            out.append(f"webhooks_timeout_s: {self.timeout_s} must be > 0 and at most 60")
        if not 0 < self.retry_base_s <= self.retry_max_s:
            out.append("webhooks_retry_base_s must be > 0 and at most webhooks_retry_max_s")
        if not 0 < self.max_age_s <= 7 * 86400:
            out.append(f"webhooks_max_age_s: {self.max_age_s} must be > 0 and at most 7 days")
        if not 1 <= self.queue_max <= 10_000_000:
            out.append(f"webhooks_queue_max: {self.queue_max} must be from 1 to 10,000,000")
        if not 1 <= self.max_endpoints <= 1000:
            out.append(f"webhooks_max_endpoints: {self.max_endpoints} must be from 1 to 1000")
        return out


@dataclass(frozen=True)
class WebhookConfig:
    """The ``webhooks*`` keys a server's config (the node's, the control plane's) inherits:
    endpoints ``[{url, events?, key?}]``, the queue's SQLite file (each program says what an empty
    one means), and delivery: request timeout, backoff base and cap, give-up age, queue bound
    (oldest dropped beyond it), endpoints at most."""

    webhooks: tuple[WebhookEndpoint, ...] = ()
    webhooks_db: str = ""
    webhooks_timeout_s: float = 5.0
    webhooks_retry_base_s: float = 1.0
    webhooks_retry_max_s: float = 600.0
    webhooks_max_age_s: float = 86400.0
    webhooks_queue_max: int = 10_000
    webhooks_max_endpoints: int = 32

    @property
    def webhook_settings(self) -> WebhookSettings:
        return WebhookSettings(
            timeout_s=self.webhooks_timeout_s,
            retry_base_s=self.webhooks_retry_base_s,
            retry_max_s=self.webhooks_retry_max_s,
            max_age_s=self.webhooks_max_age_s,
            queue_max=self.webhooks_queue_max,
            max_endpoints=self.webhooks_max_endpoints,
        )


def make_event(event: str, **objects: dict[str, Any] | None) -> dict[str, Any]:
    """An event body: a unique ``id``, ``event``, ``created_at`` (unix seconds) and the given
    objects (``room``, ``participant``, ``track``, ``recording``, ``node``) that are not None."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    body: dict[str, Any] = {"id": "EV_" + secrets.token_hex(12), "event": event, "created_at": int(time.time())}
    body.update({k: v for k, v in objects.items() if v is not None})
    return body
