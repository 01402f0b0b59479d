"""DTLS handshake steps in a thread pool (sfu.transport.dtls_pool), on a real port against a raw
client: handshakes complete in the pool (counted there, not timed), a close while a step waits
for its thread, the per-endpoint queue bound.  A pool of one thread held busy by a job that waits
on an event makes "a step is in the pool" a state, not a race."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from sfu import clock
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.dtls_pool import MAX_QUEUED, HandshakePool, JobResult
from sfu.transport.peer import CloseReason, PeerTransport, TransportState
from sfu.transport.udp import MediaPort
from tests.sfu.routing import harness
from tests.sfu.routing.harness import (
    NODE_CERT,
    PROFILES,
    RawClient,
    RecordingSink,
    connect,
    new_peer,
    open_port,
)

WAIT_S = 5.0


@pytest.fixture
def pool() -> Iterator[HandshakePool]:
    made = HandshakePool(1)
    harness.handshake_pools.append(made)
    yield made
    harness.handshake_pools.pop()
    made.close()


@pytest.fixture
async def port() -> AsyncIterator[MediaPort]:
    p = open_port()
    yield p
    p.close()


@pytest.fixture
async def client() -> AsyncIterator[RawClient]:
    c = RawClient()
    yield c
    c.close()


def occupy(pool: HandshakePool) -> threading.Event:
    """Hold the pool's only thread until the returned event is set."""
    gate = threading.Event()

    def hold() -> JobResult:
        gate.wait(WAIT_S * 2)
        return JobResult([], [], 0, False)

    assert pool.submit(hold, asyncio.get_running_loop(), lambda result: None)
    return gate


async def until(condition: object, what: str) -> None:
    assert callable(condition)
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.002)


def start_client(client: RawClient, port: MediaPort) -> list[bytes]:
    """Start the client's DTLS endpoint (its ClientHello goes to the node); what it sent, so far."""
    to = ("127.0.0.1", port.port)
    sent: list[bytes] = []

    def send(datagram: bytes) -> None:
        sent.append(datagram)
        client.send(datagram, to)

    client.dtls = DtlsEndpoint(client.cert, DtlsRole.CLIENT, [("sha-256", NODE_CERT.fingerprint())], PROFILES, send)
    client.dtls.start(clock.now_ms())
    return sent


@pytest.mark.parametrize("node_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"node-{r.value}")
async def test_handshake_completes_in_the_pool(
    pool: HandshakePool, port: MediaPort, client: RawClient, node_role: DtlsRole
) -> None:
    peer = new_peer(port, client, node_role=node_role)
    peer.sink = RecordingSink()
    await connect(peer, client, port, node_role)
    assert peer.state is TransportState.CONNECTED
    assert pool.handshakes == 1
    # as server: the ClientHello flight and the client's second flight; as client: the server's flight
    assert pool.jobs >= (2 if node_role is DtlsRole.SERVER else 1)
    peer.close(CloseReason.LEFT)


async def test_close_while_a_step_waits_for_its_thread(pool: HandshakePool, port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client)
    sink = RecordingSink()
    peer.sink = sink
    await client.check(peer, port)
    gate = occupy(pool)
    start_client(client, port)
    await until(lambda: pool_busy(peer), "the ClientHello handed to the pool")
    peer.close(CloseReason.LEFT)
    assert peer.state is TransportState.CLOSED
    assert sink.closed == [CloseReason.LEFT]
    assert port.peer_count == 0
    gate.set()
    await until(lambda: peer.dtls.state is DtlsState.CLOSED and pool.jobs == 2, "the step came back")
    await until(lambda: not pool_busy(peer), "its result handled on the loop")
    # its result was dropped: no server flight ever reaches the client (at most an alert)
    try:
        while True:
            data = await client.recv(0.3)
            assert data[0] != 22, "a handshake record was sent for a closed transport"
    except TimeoutError:
        pass
    assert pool.handshakes == 0
    assert sink.closed == [CloseReason.LEFT]


async def test_datagrams_beyond_the_queue_bound_are_dropped(
    pool: HandshakePool, port: MediaPort, client: RawClient
) -> None:
    peer = new_peer(port, client)
    peer.sink = RecordingSink()
    await client.check(peer, port)
    gate = occupy(pool)
    hello = start_client(client, port)[0]
    await until(lambda: pool_busy(peer), "the ClientHello handed to the pool")
    # copies of the ClientHello while the first waits: MAX_QUEUED are queued, 3 more dropped
    for _ in range(MAX_QUEUED + 3):
        client.send(hello, ("127.0.0.1", port.port))
    await until(lambda: pool.overflow == 3, "three datagrams over the bound")
    gate.set()
    # the handshake still completes from what was queued (duplicates are ignored by OpenSSL)
    async with asyncio.timeout(WAIT_S):
        while client.dtls is not None and client.dtls.state is not DtlsState.CONNECTED:
            client.dtls.feed(await client.recv(), clock.now_ms())
    await until(lambda: peer.state is TransportState.CONNECTED, "the node connected")
    assert pool.handshakes == 1
    peer.close(CloseReason.LEFT)


def pool_busy(peer: PeerTransport) -> bool:
    offload = peer._offload  # noqa: SLF001 (which state the transport's handshake is in)
    return offload is not None and offload.busy


async def test_a_closed_pool_takes_no_jobs_and_drops_queued_ones(pool: HandshakePool) -> None:
    gate = occupy(pool)
    results: list[JobResult | None] = []
    assert pool.submit(lambda: JobResult([], [], 0, False), asyncio.get_running_loop(), results.append)
    pool.close()  # the queued job is cancelled: its ``done`` never comes
    gate.set()
    assert not pool.submit(lambda: JobResult([], [], 0, True), asyncio.get_running_loop(), results.append)
    await asyncio.sleep(0.05)
    assert results == []


@pytest.mark.parametrize("node_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"node-{r.value}")
async def test_concurrent_handshakes_all_complete_while_the_loop_is_busy(port: MediaPort, node_role: DtlsRole) -> None:
    """Sixteen sessions joining at once through two threads, the loop busy two thirds of the time
    (a callback spinning 2 ms every 1 ms): each completes, each in the pool, none dropped."""
    made = HandshakePool(2)
    harness.handshake_pools.append(made)
    loop = asyncio.get_running_loop()
    busy = True

    def hog() -> None:
        until = time.perf_counter() + 0.002
        while time.perf_counter() < until:
            pass
        if busy:
            loop.call_later(0.001, hog)

    clients = [RawClient() for _ in range(16)]
    try:
        peers = [new_peer(port, c, node_role=node_role) for c in clients]
        for peer in peers:
            peer.sink = RecordingSink()
        hog()
        await asyncio.gather(*(connect(p, c, port, node_role) for p, c in zip(peers, clients, strict=True)))
        busy = False
        assert all(p.state is TransportState.CONNECTED for p in peers)
        assert made.handshakes == 16 and made.overflow == 0
        for peer in peers:
            peer.close(CloseReason.LEFT)
    finally:
        busy = False
        harness.handshake_pools.pop()
        made.close()
        for c in clients:
            c.close()
