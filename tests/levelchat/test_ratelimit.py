from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from levelchat.ratelimit import Limit, TokenBuckets, make_rate_limit_middleware
from levelchat.tokens import ApiKey, mint
from levelchat.web import make_error_middleware


@pytest.mark.parametrize(
    ("rate", "burst", "times", "allowed"),
    [
        (1.0, 3, [0, 0, 0, 0], [True, True, True, False]),  # burst then refuse
        (1.0, 3, [0, 0, 0, 0, 1.0], [True, True, True, False, True]),  # one token back after 1 s
        (2.0, 1, [0, 0.25, 0.5, 0.5], [True, False, True, False]),  # 2/s: a token every 0.5 s
        (10.0, 2, [0, 0, 100, 100, 100], [True, True, True, True, False]),  # refills only to burst
    ],
)
def test_bucket_decisions(rate: float, burst: int, times: list[float], allowed: list[bool]) -> None:
    buckets = TokenBuckets(Limit(rate, burst))
    got = [buckets.take("k", t) == 0.0 for t in times]
    assert got == allowed


def test_wait_and_reset_times() -> None:
    buckets = TokenBuckets(Limit(rate_per_s=2.0, burst=4))
    for _ in range(4):
        assert buckets.take("a", 10.0) == 0.0
    assert buckets.take("a", 10.0) == pytest.approx(0.5)
    assert buckets.full_in("a", 10.0) == pytest.approx(2.0)
    assert buckets.take("b", 10.0) == 0.0  # keys are independent


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_bad_limits_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit(rate, burst)


def test_the_table_is_bounded_under_many_keys() -> None:
    buckets = TokenBuckets(Limit(rate_per_s=1.0, burst=5), max_tracked=100)
    for i in range(10_000):  # a flood of distinct client addresses, all within one second
        buckets.take(f"10.0.{i // 256}.{i % 256}", 0.5)
    assert len(buckets) == 100
    # the most recent keys are the ones remembered: their spent token still counts
    assert buckets.full_in("10.0.39.15", 0.5) == pytest.approx(1.0)


def test_refilled_buckets_are_forgotten_as_keys_come_and_go() -> None:
    buckets = TokenBuckets(Limit(rate_per_s=10.0, burst=2))
    for i in range(1_000):  # one request per key, a key every 100 ms: each refills before the next
        buckets.take(f"client-{i}", i * 0.1)
    assert len(buckets) <= 2


def test_a_limited_key_stays_limited_while_others_come_and_go() -> None:
    buckets = TokenBuckets(Limit(rate_per_s=1.0, burst=2), max_tracked=10)
    assert buckets.take("busy", 0.0) == 0.0 and buckets.take("busy", 0.0) == 0.0
    for i in range(5):
        buckets.take(f"other-{i}", 0.1)
    assert buckets.take("busy", 0.2) == pytest.approx(0.8)


def test_max_tracked_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(Limit(1.0, 1), max_tracked=0)


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def test_only_known_api_keys_get_a_per_key_bucket() -> None:
    """The kid is read before verification: a made-up one must not take (or share) a bucket."""
    limiter = make_rate_limit_middleware(per_ip=None, per_key=Limit(0.001, 1), paths=("/x",),
                                         known_keys=frozenset({"devkey"}))
    app = web.Application(middlewares=[make_error_middleware(), limiter])
    app.router.add_get("/x", _ok)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()

    def auth(kid: str) -> dict[str, str]:
        token = mint(ApiKey(kid, "secret"), project="p", now_s=time.time(), ttl_s=60)
        return {"Authorization": f"Bearer {token}"}

    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for kid in ("devkey", "devkey", "made-up", "made-up", "other"):
                async with http.get(server.make_url("/x"), headers=auth(kid)) as resp:
                    statuses.append(resp.status)
        assert statuses == [200, 429, 200, 200, 200]
    finally:
        await server.close()
