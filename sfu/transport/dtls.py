"""A sans-I/O DTLS-SRTP endpoint (RFC 5764, RFC 8827) on pyOpenSSL memory BIOs.

The caller owns the socket and the clock.  It feeds each DTLS datagram that arrives for this
session to ``feed(datagram, now_ms)``; datagrams to send come out through the ``send`` callback,
synchronously, never larger than ``mtu`` (whole records packed per datagram).  The caller
arms a timer for ``next_timeout_ms()`` (an absolute time on the caller's clock) and calls
``handle_timeout(now_ms)`` when it fires.

Clock: the overall handshake deadline is kept purely on ``now_ms``.  Flight retransmission is
OpenSSL's: its timer runs on the real clock (1 s, doubling), which the binding cannot replace, so
``next_timeout_ms()`` maps OpenSSL's remaining time onto the caller's clock and
``handle_timeout`` asks OpenSSL to retransmit when that moment has come.  With a caller clock
that advances at real speed (``time.monotonic()``) the two agree.

Robustness: a datagram that is not a sequence of whole DTLS 1.0/1.2 records is dropped before
OpenSSL sees it and counted in ``drops``, and so is anything but a ClientHello before the
handshake starts.  During the handshake, a well-formed but bogus plaintext record can still fail
it (OpenSSL answers with a fatal alert); the node only feeds datagrams from the ICE-validated
address, so that takes an on-path attacker, who could block the session anyway.  Well-formed records that fail decryption are
discarded silently by OpenSSL (RFC 6347 section 4.1.2.1), so garbage never ends an established
association; only a real fatal alert or close_notify from the peer does.  ``feed`` never raises.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Sequence

from OpenSSL import SSL

from sfu.transport.certificate import Certificate, fingerprint_matches
from sfu.transport.srtp import DTLS_SRTP_EXPORTER_LABEL, SrtpKeys, SrtpProfile

log = logging.getLogger(__name__)

#: Room for IPv6 + UDP headers and TURN framing under a 1280-byte path MTU.
DEFAULT_MTU = 1200
DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000
RECORD_HEADER_LEN = 13
#: RFC 6347: a ciphertext record is at most 2^14 + 2048 bytes.
MAX_RECORD_LEN = 16384 + 2048
_CONTENT_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, application_data
_VERSIONS = frozenset({0xFEFF, 0xFEFD})  # DTLS 1.0 (ClientHello records), DTLS 1.2
_READ_SIZE = 65536


class DtlsRole(enum.Enum):
    SERVER = "server"  # SDP a=setup:passive
    CLIENT = "client"  # SDP a=setup:active


class DtlsState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class DtlsFailure(enum.Enum):
    HANDSHAKE_ERROR = "handshake_error"  # OpenSSL refused the handshake (alert, bad message, no cipher)
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    NO_SRTP_PROFILE = "no_srtp_profile"  # the peer did not agree to use_srtp with one we offered
    PROTOCOL_ERROR = "protocol_error"  # fatal error after the handshake (e.g. a fatal alert)
    INTERNAL_ERROR = "internal_error"


class DtlsDrop(enum.Enum):
    """Why a fed datagram was not given to OpenSSL."""

    MALFORMED = "malformed"  # not a sequence of whole DTLS 1.0/1.2 records
    UNEXPECTED = "unexpected"  # before the handshake: anything but a ClientHello to a server
    NOT_OPEN = "not_open"  # arrived after FAILED or CLOSED


class DtlsEndpoint:
    def __init__(
        self,
        certificate: Certificate,
        role: DtlsRole,
        remote_fingerprints: Sequence[tuple[str, str]],
        srtp_profiles: Sequence[SrtpProfile],
        send: Callable[[bytes], None],
        *,
        mtu: int = DEFAULT_MTU,
        handshake_timeout_ms: int = DEFAULT_HANDSHAKE_TIMEOUT_MS,
    ) -> None:
        if not remote_fingerprints:
            raise ValueError("remote_fingerprints: at least one fingerprint is needed")
        if not srtp_profiles:
            raise ValueError("srtp_profiles: at least one profile is needed")
        if not 256 <= mtu <= 65507:
            raise ValueError(f"mtu: must be in [256, 65507], got {mtu}")
        self.role = role
        self.remote_fingerprints = list(remote_fingerprints)
        self.srtp_profiles = list(srtp_profiles)
        self.mtu = mtu
        self.handshake_timeout_ms = handshake_timeout_ms
        self.state = DtlsState.NEW
        self.failure_reason: DtlsFailure | None = None
        self.failure_detail = ""
        self.srtp_keys: SrtpKeys | None = None
        self.drops: dict[DtlsDrop, int] = dict.fromkeys(DtlsDrop, 0)
        self.datagrams_sent = 0
        self._send = send
        self._certificate = certificate
        #: the OpenSSL connection, made when the handshake starts (``start``): a session that never
        #: gets that far (no ICE, no ClientHello) holds none
        self._conn: SSL.Connection | None = None
        self._handshake_deadline_ms: int | None = None
        self._retransmit_at_ms: int | None = None

    # -- driving ---------------------------------------------------------------------------------
    def start(self, now_ms: int) -> None:
        """Begin the handshake: the client sends its ClientHello, the server starts waiting."""
        if self.state is not DtlsState.NEW:
            return
        conn = SSL.Connection(self._certificate.ssl_context(self.srtp_profiles), None)
        conn.set_ciphertext_mtu(self.mtu)
        if self.role is DtlsRole.CLIENT:
            conn.set_connect_state()
        else:
            conn.set_accept_state()
        self._conn = conn
        self.state = DtlsState.CONNECTING
        self._handshake_deadline_ms = now_ms + self.handshake_timeout_ms
        if self.role is DtlsRole.CLIENT:
            self._guarded(self._drive_handshake, now_ms)

    def feed(self, datagram: bytes, now_ms: int) -> list[bytes]:
        """Process one received DTLS datagram; returns application data it carried (possibly none)."""
        if self.state is DtlsState.FAILED or self.state is DtlsState.CLOSED:
            self.drops[DtlsDrop.NOT_OPEN] += 1
            return []
        if not is_dtls_datagram(datagram):
            self.drops[DtlsDrop.MALFORMED] += 1
            return []
        if self.state is DtlsState.NEW:
            # Only a ClientHello opens a server; a client speaks first, after start().
            if self.role is DtlsRole.CLIENT or not _starts_with_client_hello(datagram):
                self.drops[DtlsDrop.UNEXPECTED] += 1
                return []
            self.start(now_ms)
        if not self.is_open:
            return []
        received: list[bytes] = []
        self._guarded(self._process, datagram, received, now_ms)
        return received

    def feed_batch(self, datagrams: Sequence[bytes], now_ms: int) -> tuple[list[bytes], list[bytes], int]:
        """``feed`` each of ``datagrams`` in order, keeping what the endpoint sends instead of
        sending it (a handshake thread must not touch the socket: ``sfu.transport.dtls_pool``).
        Returns (datagrams to send, application data, datagrams refused)."""
        out: list[bytes] = []
        app: list[bytes] = []
        refused = sum(self.drops.values())
        send, self._send = self._send, out.append
        try:
            for datagram in datagrams:
                app.extend(self.feed(datagram, now_ms))
        finally:
            self._send = send
        return out, app, sum(self.drops.values()) - refused

    def handle_timeout(self, now_ms: int) -> None:
        """Fail a handshake past its deadline, or let OpenSSL retransmit its last flight."""
        if self.state is DtlsState.CONNECTING and self._handshake_deadline_ms is not None:
            if now_ms >= self._handshake_deadline_ms:
                self._fail(
                    DtlsFailure.HANDSHAKE_TIMEOUT, f"no handshake after {self.handshake_timeout_ms} ms"
                )
                return
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            return
        if self._retransmit_at_ms is not None and now_ms >= self._retransmit_at_ms:
            self._guarded(self._retransmit, now_ms)

    def next_timeout_ms(self) -> int | None:
        """When ``handle_timeout`` should next be called (caller's clock), or None."""
        if self.state is DtlsState.CONNECTING:
            candidates = [t for t in (self._retransmit_at_ms, self._handshake_deadline_ms) if t is not None]
            return min(candidates) if candidates else None
        if self.state is DtlsState.CONNECTED:
            return self._retransmit_at_ms
        return None

    def send_application(self, data: bytes) -> bool:
        """Encrypt and send one application datagram (e.g. an SCTP packet); False if not sent."""
        if self.state is not DtlsState.CONNECTED:
            return False
        if len(data) > self.max_application_size:
            raise ValueError(
                f"data: {len(data)} bytes exceed the {self.max_application_size}-byte DTLS payload"
            )
        try:
            self._ssl.send(data)
        except SSL.Error as exc:
            log.debug("DTLS send failed: %s", exc)
            self._flush()
            return False
        self._flush()
        return True

    @property
    def is_open(self) -> bool:
        """CONNECTING or CONNECTED."""
        return self.state is DtlsState.CONNECTING or self.state is DtlsState.CONNECTED

    @property
    def max_application_size(self) -> int:
        """Largest ``send_application`` payload that fits one record within the MTU."""
        return int(self._ssl.get_cleartext_mtu()) if self.state is DtlsState.CONNECTED else 0

    def close(self) -> None:
        """Send close_notify if a handshake was under way or done; the endpoint is then CLOSED."""
        if self.state is DtlsState.CLOSED or self.state is DtlsState.FAILED:
            return
        if self.state is not DtlsState.NEW:
            self._shutdown()
        self.state = DtlsState.CLOSED
        self._retransmit_at_ms = None

    def release(self) -> None:
        """The owner is done with this endpoint: it is CLOSED (no alert; ``close`` sends one) and
        lets go of the ``send`` callback, which usually refers back to the owner.  Without that
        reference cycle a closed session's transport, this endpoint and its OpenSSL connection are
        freed as soon as the session is dropped, not at the next full garbage collection."""
        if self.is_open or self.state is DtlsState.NEW:
            self.state = DtlsState.CLOSED
        self._retransmit_at_ms = None
        self._send = _discard
        self._conn = None  # its OpenSSL memory goes now, not with the endpoint's last reference

    # -- internals -------------------------------------------------------------------------------
    @property
    def _ssl(self) -> SSL.Connection:
        """The OpenSSL connection of a started endpoint (every caller runs after ``start``)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("the DTLS handshake has not started")
        return conn

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except Exception as exc:  # a bug here must fail the session, not the node's receive loop
            log.exception("DTLS endpoint error")
            self._fail(DtlsFailure.INTERNAL_ERROR, repr(exc))

    def _process(self, datagram: bytes, received: list[bytes], now_ms: int) -> None:
        self._ssl.bio_write(datagram)
        if self.state is DtlsState.CONNECTING:
            self._drive_handshake(now_ms)
        if self.state is DtlsState.CONNECTED:
            self._read_application(received)
        self._flush()
        self._update_timer(now_ms)

    def _drive_handshake(self, now_ms: int) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._update_timer(now_ms)
            return
        except SSL.Error as exc:
            self._flush()  # the alert OpenSSL queued, so the peer stops too
            self._fail(DtlsFailure.HANDSHAKE_ERROR, _describe(exc))
            return
        self._flush()
        self._complete_handshake()
        self._update_timer(now_ms)

    def _complete_handshake(self) -> None:
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None:
            self._fail(DtlsFailure.FINGERPRINT_MISMATCH, "peer sent no certificate")
            return
        if not fingerprint_matches(cert, self.remote_fingerprints):
            self._shutdown()
            self._fail(
                DtlsFailure.FINGERPRINT_MISMATCH, "peer certificate does not match the signaled fingerprint"
            )
            return
        name = self._ssl.get_selected_srtp_profile()
        try:
            profile = SrtpProfile.from_openssl_name(name)
        except ValueError:
            profile = None
        if profile is None or profile not in self.srtp_profiles:
            self._shutdown()
            self._fail(DtlsFailure.NO_SRTP_PROFILE, f"negotiated SRTP profile {name!r}")
            return
        material = self._ssl.export_keying_material(DTLS_SRTP_EXPORTER_LABEL, profile.keying_material_length)
        self.srtp_keys = SrtpKeys.from_keying_material(
            profile, material, is_client=self.role is DtlsRole.CLIENT
        )
        self.state = DtlsState.CONNECTED

    def _read_application(self, received: list[bytes]) -> None:
        while True:
            try:
                data = self._ssl.recv(_READ_SIZE)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:  # close_notify: answer it and stop
                self._shutdown()
                self.state = DtlsState.CLOSED
                self._retransmit_at_ms = None
                return
            except SSL.Error as exc:
                self._fail(DtlsFailure.PROTOCOL_ERROR, _describe(exc))
                return
            if data:
                received.append(data)

    def _retransmit(self, now_ms: int) -> None:
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._flush()
            self._fail(DtlsFailure.HANDSHAKE_ERROR, _describe(exc))
            return
        self._flush()
        self._update_timer(now_ms)

    def _update_timer(self, now_ms: int) -> None:
        if self.state is not DtlsState.CONNECTING and self.state is not DtlsState.CONNECTED:
            self._retransmit_at_ms = None
            return
        remaining_s = self._ssl.DTLSv1_get_timeout()
        if remaining_s is None:
            self._retransmit_at_ms = None
        else:
            self._retransmit_at_ms = now_ms + max(1, math.ceil(remaining_s * 1000))

    def _shutdown(self) -> None:
        try:
            self._ssl.shutdown()
        except SSL.Error as exc:
            log.debug("DTLS shutdown: %s", _describe(exc))
        self._flush()

    def _fail(self, reason: DtlsFailure, detail: str) -> None:
        if self.state is DtlsState.FAILED or self.state is DtlsState.CLOSED:
            return
        self.state = DtlsState.FAILED
        self.failure_reason = reason
        self.failure_detail = detail
        self._retransmit_at_ms = None
        log.debug("DTLS %s failed: %s (%s)", self.role.value, reason.value, detail)

    def _flush(self) -> None:
        """Send what OpenSSL wrote, repacking whole records into datagrams of at most ``mtu``."""
        pending = b""
        while True:
            try:
                chunk = self._ssl.bio_read(_READ_SIZE)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            pending += chunk
        if not pending:
            return
        for datagram in pack_records(pending, self.mtu):
            self.datagrams_sent += 1
            self._send(datagram)


def _discard(datagram: bytes) -> None:
    """The ``send`` of a released endpoint."""


def split_records(data: bytes) -> list[bytes] | None:
    """The DTLS 1.0/1.2 records ``data`` consists of, or None if it is not whole records."""
    records: list[bytes] = []
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < RECORD_HEADER_LEN:
            return None
        content_type = data[offset]
        version = (data[offset + 1] << 8) | data[offset + 2]
        length = (data[offset + 11] << 8) | data[offset + 12]
        if content_type not in _CONTENT_TYPES or version not in _VERSIONS or length > MAX_RECORD_LEN:
            return None
        stop = offset + RECORD_HEADER_LEN + length
        if stop > end:
            return None
        records.append(data[offset:stop])
        offset = stop
    return records if records else None


def is_dtls_datagram(data: bytes) -> bool:
    return split_records(data) is not None


def _starts_with_client_hello(datagram: bytes) -> bool:
    # record type handshake, epoch 0, first handshake message client_hello (1)
    return (
        len(datagram) > RECORD_HEADER_LEN
        and datagram[0] == 22
        and datagram[3] == 0
        and datagram[4] == 0
        and datagram[RECORD_HEADER_LEN] == 1
    )


def pack_records(data: bytes, mtu: int) -> list[bytes]:
    """Group whole records into datagrams of at most ``mtu`` bytes (a larger record goes alone)."""
    records = split_records(data)
    if records is None:
        return [data]
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


def _describe(exc: SSL.Error) -> str:
    """OpenSSL's reason strings from the error queue pyOpenSSL collected."""
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            parts.extend(str(item[-1]) if isinstance(item, tuple) and item else str(item) for item in arg)
        else:
            parts.append(str(arg))
    return "; ".join(p for p in parts if p) or type(exc).__name__
