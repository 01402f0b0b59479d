"""Ended sessions leave nothing behind in the node.

Real WHIP/WHEP sessions (``sfu.client.lite`` through ``bench.leakclient``: ICE, DTLS, SRTP, media,
PLI and NACK) are created and DELETEd in cycles against a real node; signaling sessions (aiortc,
``/v1/rtc``, media both ways and data channels) leave or drop their socket.  The garbage collector is
off for the whole test: every transport, DTLS endpoint, OpenSSL connection, SRTP context,
participant, track and downtrack of a deleted session must be freed by reference counting at once
(a reference cycle would keep it, with its C memory, until some later full collection), the
router's and the media port's tables must be back to the self-check's entries and the count of
libsrtp sessions back where it was.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from bench.leakclient import SessionCycle
from sfu.api.rtc import RTC_SERVICE_KEY
from sfu.node import Node
from sfu.routing.participant import Participant
from sfu.transport.srtp import live_sessions
from tests.e2e.clients import wait_for
from tests.e2e.conftest import PROBE_PEERS, public_participants
from tests.e2e.test_rtc_data import DataClient
from tests.e2e.test_rtc_signaling import receives_from

CYCLES = 3
ROOMS = 2
PUBLISHERS = 2
VIEWERS = 2
SESSIONS = ROOMS * PUBLISHERS * (1 + VIEWERS)


def _objects_of(p: Participant) -> Iterator[tuple[str, object]]:
    yield "participant", p
    for transport in (p.publisher, p.subscriber):
        if transport is None:
            continue
        yield "transport", transport
        yield "dtls", transport.dtls
        yield "ssl_connection", transport.dtls._conn
        if transport.sink is not None:
            yield "sink", transport.sink
        for ctx in (transport.rx, transport.tx):
            if ctx is not None:
                yield "srtp_context", ctx
    for track in p.tracks.values():
        yield "track", track
    for dt in p.downtracks:
        yield "downtrack", dt


def _watch(node: Node) -> list[tuple[str, weakref.ref[Any]]]:
    return [(kind, weakref.ref(obj)) for p in public_participants(node) for kind, obj in _objects_of(p)]


def _port_tables(node: Node) -> tuple[int, int, int]:
    port = node.port
    return len(port._by_ufrag), len(port._by_addr), len(port._by_key)


async def test_deleted_sessions_are_freed_at_once(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(default_empty_timeout_s=0, rate_limit_ip_per_s=0)
    try:
        await wait_for(lambda: _port_tables(node) == (PROBE_PEERS,) * 3, 10, "the self-check's probe sessions")
        gc.collect()  # what earlier tests left to the collector goes now, not during the check
        gc.disable()
        srtp_before = live_sessions()
        tables_before = (len(node.sessions.sessions), len(node.sessions.published))  # the probe's
        try:
            for cycle in range(CYCLES):
                sessions = SessionCycle(node.url, [f"mem-{cycle}-{r}" for r in range(ROOMS)], PUBLISHERS, VIEWERS)
                try:
                    await sessions.open()
                    assert (sessions.result.opened, sessions.result.failed) == (SESSIONS, 0)
                    await sessions.media(0.6)
                    watched = _watch(node)
                finally:
                    result = await sessions.close()
                assert result.deleted == SESSIONS
                assert result.received > 0, "media did not flow: the cycle tested nothing"
                kinds = {kind for kind, _ in watched}
                assert {"transport", "dtls", "ssl_connection", "srtp_context", "track", "downtrack"} <= kinds
                assert len([k for k, _ in watched if k == "participant"]) == SESSIONS

                alive = sorted({kind for kind, ref in watched if ref() is not None})
                assert alive == [], f"cycle {cycle}: still alive after DELETE, without a collection: {alive}"
                assert public_participants(node) == []
                assert _port_tables(node) == (PROBE_PEERS,) * 3
                assert (len(node.sessions.sessions), len(node.sessions.published)) == tables_before
                assert live_sessions() == srtp_before, "libsrtp sessions were not deallocated"
        finally:
            gc.enable()

        # empty rooms close at the next housekeeping tick; a closed room's record keeps no one
        await wait_for(lambda: node.rooms.room_count == 0, 5, "the empty rooms to close")
        assert len(node.rooms.closed) == CYCLES * ROOMS
        assert all(not r.participants for r in node.rooms.closed.values())
    finally:
        await node.stop()


async def test_ended_signaling_sessions_are_freed_at_once(node: Node) -> None:
    service = node._runner.app[RTC_SERVICE_KEY] if node._runner is not None else None
    assert service is not None
    gc.collect()
    srtp_before = live_sessions()
    for cycle in range(2):
        room = f"rtc-mem-{cycle}"
        a, b = DataClient(node, room, "a"), DataClient(node, room, "b")
        try:
            for c in (a, b):
                await c.join()
                await c.publish()
                await c.open_data()
            await wait_for(receives_from(b, ["a"], 5), 15, "b receives a")
            await wait_for(receives_from(a, ["b"], 5), 15, "a receives b")
            a.send_text("hello")
            await wait_for(lambda b=b: len(b.from_("a")) == 1, 10, "b gets a's message")
            watched = _watch(node)
            watched += [("rtc_session", weakref.ref(s)) for s in service.by_sid.values()]
            watched += [("data_session", weakref.ref(s)) for s in service.data.sessions.values()]
            assert {"rtc_session", "data_session", "track", "downtrack"} <= {kind for kind, _ in watched}
            gc.disable()
            await a.call("leave")
            assert b.ws is not None
            await b.ws.close()  # no leave: the socket just goes away
            await wait_for(lambda: public_participants(node) == [], 5, "both gone")
        finally:
            await a.close()
            await b.close()
        try:
            await wait_for(lambda w=watched: all(ref() is None for _, ref in w), 2, "the sessions' objects freed")
        except AssertionError:
            alive = sorted({kind for kind, ref in watched if ref() is not None})
            raise AssertionError(f"cycle {cycle}: alive without a collection: {alive}") from None
        finally:
            gc.enable()
        assert (service.by_sid, service.published, service.publisher_roles, service.data.sessions) == ({}, {}, {}, {})
        assert service.data.relay.rooms == {}
        assert _port_tables(node) == (PROBE_PEERS,) * 3
        assert live_sessions() == srtp_before
