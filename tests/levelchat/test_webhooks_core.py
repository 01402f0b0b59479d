"""levelchat.webhooks: the signer (a known vector), the backoff schedule, the queue's bound and
durability, retries on an injected clock against a real HTTP receiver, and the typed config."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from levelchat.config import ConfigError
from levelchat.webhooks.backoff import retry_delay_s
from levelchat.webhooks.dispatcher import WebhookDispatcher
from levelchat.webhooks.model import WebhookEndpoint, WebhookSettings, make_event
from levelchat.webhooks.queue import NewRow, WebhookQueue
from levelchat.webhooks.signing import sign, verify
from sfu import config as node_config

# printf '1700000000.{"id":"EV_1"}' | openssl dgst -sha256 -hmac secret
VECTOR = "3898a32cbce2f2ece9411f23308a9553c02f1d0872aa4fc8aa80b2eb92feebc6"


def test_signature_known_vector() -> None:
    assert sign("secret", 1700000000, b'{"id":"EV_1"}') == f"t=1700000000,v1={VECTOR}"


def test_verify_accepts_the_signature_and_refuses_any_change() -> None:
    body = b'{"id":"EV_1"}'
    header = sign("secret", 1700000000, body)
    assert verify("secret", header, body, now_s=1700000010)
    assert not verify("secret", header, body + b" ", now_s=1700000010)  # body changed
    assert not verify("other", header, body, now_s=1700000010)  # wrong secret
    assert not verify("secret", header, body, now_s=1700000000 + 301)  # too old (replay)
    assert not verify("secret", header.replace("t=1700000000", "t=1700000001"), body, now_s=1700000010)
    for bad in ("", "garbage", "t=,v1=", "v1=" + VECTOR, "t=abc,v1=" + VECTOR, "t=9" * 20 + ",v1=00"):
        assert not verify("secret", bad, body, now_s=1700000010)


def test_backoff_doubles_with_jitter_and_caps() -> None:
    lows = [retry_delay_s(n, 1.0, 60.0, rand=lambda: 0.0) for n in range(1, 10)]
    highs = [retry_delay_s(n, 1.0, 60.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert highs == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert lows == [h / 2 for h in highs]  # jitter spans [ceiling/2, ceiling]
    assert retry_delay_s(10_000, 1.0, 60.0, rand=lambda: 1.0) == 60.0  # no overflow


def test_make_event_ids_are_unique_and_unknown_events_refused() -> None:
    ids = {make_event("room_started", room={"name": "r"})["id"] for _ in range(1000)}
    assert len(ids) == 1000
    with pytest.raises(ValueError):
        make_event("room_exploded")


async def test_queue_drops_oldest_beyond_its_bound_and_survives_reopen(tmp_path: Path) -> None:
    dropped: list[tuple[str, int]] = []
    path = str(tmp_path / "q.db")
    q = WebhookQueue(path, queue_max=5, on_dropped=lambda r, n: dropped.append((r, n)))
    await q.open()
    q.enqueue([NewRow("ep", f"EV_{i}", b"{}", float(i)) for i in range(8)])
    await q.flush()
    assert q.depth == 5 and dropped == [("queue_full", 3)]
    head = await q.head("ep")
    assert head is not None and head.event_id == "EV_3"  # the three oldest went
    await q.close()
    q2 = WebhookQueue(path, queue_max=5, on_dropped=lambda r, n: None)
    await q2.open()
    assert q2.depth == 5
    head = await q2.head("ep")
    assert head is not None and head.event_id == "EV_3"
    await q2.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class Receiver:
    def __init__(self) -> None:
        self.status = 500
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)


async def _serve(rx: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


async def _until(pred: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_retries_follow_the_schedule_on_an_injected_clock_then_give_up(tmp_path: Path) -> None:
    rx = Receiver()
    runner, url = await _serve(rx)
    now = [1000.0]
    d = WebhookDispatcher(
        db_path=str(tmp_path / "d.db"),
        configured=(WebhookEndpoint(url=url),),
        api_keys={"k1": "s1"},
        settings=WebhookSettings(retry_base_s=10.0, retry_max_s=40.0, max_age_s=100.0),
        clock=lambda: now[0],
    )
    await d.start()
    try:
        d.emit(make_event("room_started", room={"name": "r"}))
        eid = next(iter(d.endpoints))
        delays = []
        for attempt in range(1, 5):
            await _until(lambda a=attempt: d.stats.retried == a)  # type: ignore[misc]
            row = await d.queue.head(eid)
            assert row is not None and row.attempts == attempt
            delays.append(row.next_at - now[0])
            await asyncio.sleep(0.3)
            assert len(rx.got) == attempt  # nothing is sent before the clock reaches next_at
            now[0] = row.next_at
            d.poke()
        ceilings = [10.0, 20.0, 40.0, 40.0]
        for delay, ceiling in zip(delays, ceilings, strict=True):
            assert ceiling / 2 <= delay <= ceiling
        now[0] += 101.0  # past max_age: given up, counted
        d.poke()
        await _until(lambda: d.stats.dropped.get("expired") == 1)
        assert d.queue_depth() == 0 and d.stats.delivered == 0
    finally:
        await d.stop()
        await runner.cleanup()


async def test_delivery_in_order_with_valid_signatures(tmp_path: Path) -> None:
    rx = Receiver()
    rx.status = 204
    runner, url = await _serve(rx)
    d = WebhookDispatcher(
        db_path=str(tmp_path / "d.db"),
        configured=(WebhookEndpoint(url=url, key="k2"),),
        api_keys={"k1": "s1", "k2": "s2"},
        settings=WebhookSettings(),
    )
    await d.start()
    try:
        sent = [make_event("participant_joined", participant={"identity": f"p{i}"}) for i in range(20)]
        for ev in sent:
            d.emit(ev)
        await _until(lambda: d.stats.delivered == 20)
        got_ids = [json.loads(body)["id"] for _, body in rx.got]
        assert got_ids == [ev["id"] for ev in sent]
        for headers, body in rx.got:
            assert verify("s2", headers["LevelChat-Signature"], body, now_s=time.time())
            assert not verify("s1", headers["LevelChat-Signature"], body, now_s=time.time())
            assert headers["LevelChat-Event-Id"] == json.loads(body)["id"]
        assert d.queue_depth() == 0
    finally:
        await d.stop()
        await runner.cleanup()


def test_node_config_webhooks_are_typed() -> None:
    cfg = node_config.load(
        flags={"webhooks": [{"url": "https://hooks.example/x", "events": ["room_started"]}]}, dev=True, environ={}
    )
    assert cfg.webhooks == (WebhookEndpoint(url="https://hooks.example/x", events=("room_started",)),)
    env = {"LEVELCHAT_SFU_WEBHOOKS": json.dumps([{"url": "http://127.0.0.1:9/h", "key": "devkey"}])}
    assert node_config.load(dev=True, environ=env).webhooks[0].key == "devkey"
    for bad, why in (
        ({"url": "https://h.example", "colour": "red"}, "unknown setting 'colour'"),
        ({"url": "ftp://h.example"}, "http(s)"),
        ({"url": "https://h.example", "events": ["nope"]}, "unknown event"),
        ({"url": "https://h.example", "key": "nokey"}, "not one of the API keys"),
        ({"events": []}, "url"),
    ):
        with pytest.raises(ConfigError, match=None) as info:
            node_config.load(flags={"webhooks": [bad]}, dev=True, environ={})
        assert why in str(info.value), (bad, str(info.value))
    with pytest.raises(ConfigError):
        node_config.load(flags={"webhooks_queue_max": 0}, dev=True, environ={})


def test_control_config_webhooks_are_typed(tmp_path: Path) -> None:
    from control.config import load_config

    hooks = [{"url": "https://hooks.example/cp", "events": ["node_revoked"]}]
    cfg = load_config(flags={"dev": True}, environ={"LEVELCHAT_CONTROL_WEBHOOKS": json.dumps(hooks)})
    assert cfg.webhooks == (WebhookEndpoint(url="https://hooks.example/cp", events=("node_revoked",)),)
    assert cfg.webhooks_db_path(7700) == ":memory:"  # the dev store is in memory
    store = tmp_path / "c.db"
    cfg = load_config(flags={"dev": True, "store": f"sqlite:///{store}"}, environ={})
    assert cfg.webhooks_db_path(7700) == str(store)  # a table in the store's own file
    cfg = load_config(flags={"dev": True, "store": "redis://127.0.0.1:6379/0"}, environ={})
    assert cfg.webhooks_db_path(7700) == "levelchat-control-webhooks-7700.db"  # per replica
    for bad in ([{"url": "https://h.example", "extra": 1}], [{"url": "gopher://h"}], "not json", [{"url": "https://h.example",
                 "events": ["room_exploded"]}], [{"url": "https://h.example", "key": "nokey"}]):
        env = {"LEVELCHAT_CONTROL_WEBHOOKS": bad if isinstance(bad, str) else json.dumps(bad)}
        with pytest.raises(ValueError):
            load_config(flags={"dev": True}, environ=env)
