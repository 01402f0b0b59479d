"""DTLS handshakes off the forwarding loop: a small bounded thread pool runs the expensive steps.

A handshake flight costs the node ~0.5 ms of OpenSSL (ECDHE key generation and derivation,
ECDSA signing and verifying the peer's CertificateVerify); hundreds of sessions joining at once
made that a forwarding stall.  OpenSSL releases the GIL in those parts (pyOpenSSL calls it
through cffi), so ``HandshakePool``'s threads run them beside the loop.

``OffloadedHandshake`` drives one ``DtlsEndpoint`` while it is not yet connected:

* Order: datagrams for one endpoint are queued (at most ``MAX_QUEUED``; more are dropped and
  counted: DTLS retransmits) and given to one job at a time, in arrival order; a job feeds its
  whole batch.  The loop never touches the endpoint while a job runs (``busy``).
* Results come back as data: the datagrams OpenSSL wanted sent (sent on the loop, in order), the
  application data, how many datagrams the endpoint refused; the owner's ``on_result`` then
  acts on the endpoint's new state, on the loop.
* Timers: a retransmission or handshake-deadline timeout that fires while a job runs is deferred
  (the owner re-arms its timer from ``on_result``); otherwise ``handle_timeout`` runs on the loop
  (a retransmission resends a stored flight: no crypto).
* Close: ``close(send_alert)`` during a job only marks it; the job's result is discarded when it
  comes back, and the endpoint is closed (alert or not) and released then, on the loop.

A pool of 0 threads is no pool: the owner feeds the endpoint on the loop as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sfu import clock
from sfu.transport.dtls import DtlsEndpoint, DtlsState

log = logging.getLogger(__name__)

#: handshake threads by default: OpenSSL work of a few hundred joins a second on a small node
DEFAULT_THREADS = 2
MAX_THREADS = 16
#: datagrams waiting for one endpoint's running job; more are dropped (the peer retransmits)
MAX_QUEUED = 32


class HandshakePool:
    """A bounded pool of handshake threads and what went through it."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads: must be from 1 to {MAX_THREADS}, got {threads}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dtls-handshake")
        self._lock = threading.Lock()
        #: jobs run in the pool (a job feeds one endpoint a batch of datagrams)
        self.jobs = 0
        #: handshakes that completed (endpoint CONNECTED) inside a pool job
        self.handshakes = 0
        #: datagrams dropped because an endpoint already had ``MAX_QUEUED`` waiting
        self.overflow = 0
        self._closed = False

    def submit(self, job: Callable[[], JobResult], loop: asyncio.AbstractEventLoop,
               done: Callable[[JobResult | None], None]) -> bool:
        """Run ``job`` in a thread; ``done`` gets its result on ``loop`` (None if it raised)."""
        if self._closed:
            return False

        def finished(future: Future[JobResult]) -> None:
            if future.cancelled():  # the pool closed before it ran: the node is stopping
                return
            exc = future.exception()
            if exc is not None:
                log.error("DTLS handshake job failed", exc_info=exc)
            result = None if exc is not None else future.result()
            try:
                loop.call_soon_threadsafe(done, result)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting
                pass

        self._executor.submit(self._run, job).add_done_callback(finished)
        return True

    def _run(self, job: Callable[[], JobResult]) -> JobResult:
        result = job()
        with self._lock:
            self.jobs += 1
            self.handshakes += result.connected
        return result

    def close(self) -> None:
        """No new jobs; running ones finish in their threads (their results are discarded)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class JobResult:
    out: list[bytes]  # datagrams to send, in order
    app: list[bytes]  # application data the batch carried
    refused: int  # datagrams the endpoint dropped
    connected: bool  # the handshake completed in this job


class OffloadedHandshake:
    """One endpoint's handshake steps in ``pool``; see the module docstring."""

    def __init__(
        self,
        endpoint: DtlsEndpoint,
        pool: HandshakePool,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[bytes], None],
        on_result: Callable[[list[bytes], int, int], None],
    ) -> None:
        self.endpoint = endpoint
        self._pool = pool
        self._loop = loop
        self._send = send
        #: (application data, datagrams refused, now_ms) after each job, on the loop, after the
        #: job's datagrams were sent
        self._on_result = on_result
        self._queue: list[bytes] = []
        self._queued_ms = 0
        self.busy = False
        self._close_alert: bool | None = None  # close asked during a job: with an alert or not
        self.closed = False

    def feed(self, datagram: bytes, now_ms: int) -> None:
        if self.closed:
            return
        if len(self._queue) >= MAX_QUEUED:
            self._pool.overflow += 1
            return
        self._queue.append(datagram)
        self._queued_ms = now_ms
        if not self.busy:
            self._start()

    def handle_timeout(self, now_ms: int) -> bool:
        """Run the endpoint's timeout on the loop; False (nothing done) while a job runs."""
        if self.busy or self.closed:
            return False
        self.endpoint.handle_timeout(now_ms)
        return True

    def close(self, send_alert: bool) -> None:
        """Close and release the endpoint now, or when the running job comes back."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        # both refer back to the owner: no cycle outlives it (the endpoint's own goes in ``release``)
        self._send = _discard
        self._on_result = _ignore
        if self.busy:
            self._close_alert = send_alert
            return
        self._finish_close(send_alert)

    def _finish_close(self, send_alert: bool) -> None:
        if send_alert:
            try:
                self.endpoint.close()
            except Exception:  # never let a teardown path raise
                log.debug("DTLS close failed", exc_info=True)
        self.endpoint.release()

    def _start(self) -> None:
        batch, self._queue = self._queue, []
        now_ms = self._queued_ms
        endpoint = self.endpoint
        self.busy = True

        def job() -> JobResult:
            was_connected = endpoint.state is DtlsState.CONNECTED
            out, app, refused = endpoint.feed_batch(batch, now_ms)
            return JobResult(out, app, refused, not was_connected and endpoint.state is DtlsState.CONNECTED)

        if not self._pool.submit(job, self._loop, self._done):
            self.busy = False
            self._queue = batch

    def _done(self, result: JobResult | None) -> None:
        self.busy = False
        if self.closed:
            if self._close_alert is not None:
                self._finish_close(self._close_alert)
                self._close_alert = None
            return
        if result is None:  # the job raised (feed never does): nothing to act on
            result = JobResult([], [], 0, False)
        self._deliver(result.out, result.app, result.refused)
        if not self._queue or self.closed:
            return
        if self.endpoint.state is DtlsState.CONNECTING:
            self._start()
            return
        # connected (or ended): what came meanwhile is records of an established association,
        # cheap to process, and the owner may now use the endpoint on the loop itself
        batch, self._queue = self._queue, []
        self._deliver(*self.endpoint.feed_batch(batch, clock.now_ms()))

    def _deliver(self, out: list[bytes], app: list[bytes], refused: int) -> None:
        for datagram in out:
            self._send(datagram)
        self._on_result(app, refused, clock.now_ms())


def _discard(datagram: bytes) -> None:
    """The ``send`` of a closed handshake."""


def _ignore(app: list[bytes], refused: int, now_ms: int) -> None:
    """The ``on_result`` of a closed handshake."""
