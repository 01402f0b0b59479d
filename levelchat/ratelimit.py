"""Token-bucket rate limits per client IP and per API key, as an aiohttp middleware.

A refusal is ``rate_limited`` (429) with ``Retry-After`` (whole seconds until a token is back)
and ``X-RateLimit-Reset`` (epoch seconds when the bucket is full again).  Time is passed in to
the bucket logic; the middleware reads the clock.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from levelchat.errors import ApiError

#: keys a ``TokenBuckets`` table remembers at most (each ~0.2 KB)
MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


class TokenBuckets:
    """Independent buckets by key, in a table of at most ``max_tracked`` entries.

    A full bucket is the same as none, so the table only needs the keys seen within the last
    ``burst / rate`` seconds.  It is kept least recently used first: each ``take`` forgets the
    oldest entry if its bucket has refilled, and beyond ``max_tracked`` keys (many client
    addresses at once) the least recently used one goes regardless (that client starts again
    with a full bucket).  Memory is bounded and every call is O(1)."""

    def __init__(self, limit: Limit, max_tracked: int = MAX_TRACKED) -> None:
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.limit = limit
        self.max_tracked = max_tracked
        #: key -> (tokens, last time s), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now_s: float) -> float:
        """Take a token: 0.0 when allowed, else seconds until one is available."""
        rate, burst = self.limit.rate_per_s, self.limit.burst
        buckets = self._buckets
        tokens, last = buckets.get(key, (float(burst), now_s))
        tokens = min(float(burst), tokens + (now_s - last) * rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        buckets[key] = (tokens, now_s)
        buckets.move_to_end(key)
        self._trim(now_s)
        return wait

    def full_in(self, key: str, now_s: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.limit.burst), now_s))
        tokens = min(float(self.limit.burst), tokens + (now_s - last) * self.limit.rate_per_s)
        return (self.limit.burst - tokens) / self.limit.rate_per_s

    def _trim(self, now_s: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_tracked:
            buckets.popitem(last=False)
        oldest = next(iter(buckets))
        if len(buckets) > 1 and self.full_in(oldest, now_s) <= 0:
            del buckets[oldest]


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
    known_keys: Collection[str] | None = None,
) -> Middleware:
    """Limit requests whose path starts with one of ``paths`` (e.g. ``/whip/``, ``/v1/rooms``).

    ``known_keys``: the API key ids that get a per-key bucket (the ``kid`` is read before the
    token is verified, so without it any made-up ``kid`` would take a table entry)."""
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
            if key_buckets is not None and kid is not None and (known_keys is None or kid in known_keys):
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
