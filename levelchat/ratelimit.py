"""Token-bucket rate limits per client IP and per API key, as an aiohttp middleware.

A refusal is ``rate_limited`` (429) with ``Retry-After`` (whole seconds until a token is back)
and ``X-RateLimit-Reset`` (epoch seconds when the bucket is full again).  Time is passed in to
the bucket logic; the middleware reads the clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from levelchat.errors import ApiError

MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


class TokenBuckets:
    """Independent buckets by key; full buckets are forgotten when the table grows large."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time s)

    def take(self, key: str, now_s: float) -> float:
        """Take a token: 0.0 when allowed, else seconds until one is available."""
        rate, burst = self.limit.rate_per_s, self.limit.burst
        tokens, last = self._buckets.get(key, (float(burst), now_s))
        tokens = min(float(burst), tokens + (now_s - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now_s)
            if len(self._buckets) > MAX_TRACKED:
                self._forget_full(now_s)
            return 0.0
        self._buckets[key] = (tokens, now_s)
        return (1.0 - tokens) / rate

    def full_in(self, key: str, now_s: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.limit.burst), now_s))
        tokens = min(float(self.limit.burst), tokens + (now_s - last) * self.limit.rate_per_s)
        return (self.limit.burst - tokens) / self.limit.rate_per_s

    def _forget_full(self, now_s: float) -> None:
        for key in [k for k in self._buckets if self.full_in(k, now_s) <= 0]:
            del self._buckets[key]


def api_key_of(request: web.Request) -> str | None:
    """The ``kid`` of the bearer token, unverified (verification happens in the handler)."""
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.query.get("access_token")
    if not token:
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def make_rate_limit_middleware(
    *,
    per_ip: Limit | None,
    per_key: Limit | None,
    paths: Iterable[str],
    clock: Callable[[], float] = time.time,
) -> Middleware:
    """Limit requests whose path starts with one of ``paths`` (e.g. ``/whip/``, ``/v1/rooms``)."""
    prefixes = tuple(paths)
    ip_buckets = TokenBuckets(per_ip) if per_ip is not None else None
    key_buckets = TokenBuckets(per_key) if per_key is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" and request.path.startswith(prefixes):
            now = clock()
            checks: list[tuple[TokenBuckets, str, str]] = []
            if ip_buckets is not None:
                checks.append((ip_buckets, request.remote or "unknown", "client address"))
            kid = api_key_of(request) if key_buckets is not None else None
            if key_buckets is not None and kid is not None:
                checks.append((key_buckets, kid, "API key"))
            for buckets, key, what in checks:
                wait = buckets.take(key, now)
                if wait > 0:
                    reset = math.ceil(now + buckets.full_in(key, now))
                    raise ApiError(
                        "rate_limited",
                        f"too many requests from this {what}; retry in {wait:.1f} s",
                        retry_after_s=max(1, math.ceil(wait)),
                        headers={"X-RateLimit-Reset": str(reset)},
                    )
        return await handler(request)

    return middleware
