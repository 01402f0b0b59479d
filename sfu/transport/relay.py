"""A relay's transport: SRTP over UDP between two media ports, keyed from a secret both ends hold.

A relay joins two workers of one node (later two nodes) that forward one room together.  Each end
is a ``RelayTransport`` on its own media port, bound to the other end's media address: the port
hands it every SRTP/SRTCP datagram from there (the address is its demux entry; the relay's sink
then routes by SSRC), and it sends with the port's batched send path like any participant's.

No ICE and no DTLS: the two ends are told the relay's id, a 32-byte secret and each other's
address by a party both trust (the multi-worker front over its private unix sockets), and derive
the SRTP master keys from the secret (``relay_keys``: HKDF-SHA256, one key per direction, the
direction named by the ends' labels).  A new secret is handed out each time a relay is set up, so
a re-established relay never reuses a key stream.

Liveness: an end that hears nothing authenticated from the other for ``RELAY_SILENCE_MS`` closes
(``CloseReason.CONSENT_EXPIRED``); the routing side sends a report each second, so an idle relay
stays up and a dead end is noticed.  The front tells the survivors at once when a worker dies.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from sfu.counters import DropReason, MediaCounters
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsRole
from sfu.transport.ice import BindingCheck
from sfu.transport.peer import CloseReason, PeerTransport, TransportState
from sfu.transport.ports import Address
from sfu.transport.srtp import SrtpContext, SrtpKeys, SrtpProfile
from sfu.transport.udp import MediaPort

#: the secret a relay's keys are derived from (bytes)
RELAY_SECRET_BYTES = 32
#: an end that has heard nothing authenticated from the other this long closes the relay
RELAY_SILENCE_MS = 10_000
_LABEL_MAX = 64
_INFO = b"levelchat relay srtp v1 "


def _hkdf_sha256(secret: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand to ``length`` bytes)."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def relay_keys(profile: SrtpProfile, secret: bytes, relay_id: str, local: str, remote: str) -> SrtpKeys:
    """The SRTP keys of the relay ``relay_id`` seen from the end labelled ``local``.

    Each direction has its own master key and salt, derived from ``secret`` with the relay id as
    the salt and ``"<sender>><receiver>"`` in the info: the two ends get mirror images of each
    other.  Raises ValueError for a secret of the wrong size or bad labels (empty, equal, too long,
    or holding ``>``)."""
    if len(secret) != RELAY_SECRET_BYTES:
        raise ValueError(f"relay secret: {RELAY_SECRET_BYTES} bytes needed, got {len(secret)}")
    if not relay_id or len(relay_id) > _LABEL_MAX:
        raise ValueError(f"relay id: 1 to {_LABEL_MAX} characters, got {len(relay_id)}")
    for name, label in (("local", local), ("remote", remote)):
        if not label or len(label) > _LABEL_MAX or ">" in label:
            raise ValueError(f"{name} label {label!r}: 1 to {_LABEL_MAX} characters, no '>'")
    if local == remote:
        raise ValueError(f"the two ends of a relay need different labels, both are {local!r}")
    size = profile.key_length + profile.salt_length
    salt = relay_id.encode()

    def direction(sender: str, receiver: str) -> bytes:
        return _hkdf_sha256(secret, salt, _INFO + f"{sender}>{receiver}".encode(), size)

    out = direction(local, remote)
    back = direction(remote, local)
    k = profile.key_length
    return SrtpKeys(profile, out[:k], out[k:], back[:k], back[k:])


class RelayTransport(PeerTransport):
    """One end of a relay: a ``PeerTransport`` whose address and keys are given, not negotiated.

    ``start`` binds it to the far end's address and installs the keys; from then on it is
    connected, and media, RTCP and the send path work as for any participant's transport."""

    def __init__(
        self,
        *,
        port: MediaPort,
        certificate: Certificate,
        counters: MediaCounters,
        now_ms: int,
        loop: asyncio.AbstractEventLoop,
        silence_ms: int = RELAY_SILENCE_MS,
    ) -> None:
        # the DTLS endpoint is never used: no datagram reaches it before ``start`` binds the
        # address, and a connected relay's DTLS records are dropped (``on_dtls``)
        super().__init__(
            port=port,
            certificate=certificate,
            dtls_role=DtlsRole.SERVER,
            remote_ufrag="relay",
            remote_fingerprints=[("sha-256", "00")],
            srtp_profiles=[SrtpProfile.AEAD_AES_128_GCM],
            counters=counters,
            now_ms=now_ms,
            loop=loop,
        )
        self.silence_ms = silence_ms

    def start(self, remote: Address, keys: SrtpKeys, now_ms: int) -> None:
        """Bind to the far end's media address with these keys: connected."""
        if self.state is not TransportState.NEW:
            raise ValueError(f"a relay transport starts once (it is {self.state.value})")
        port = self._port
        self.addr = remote
        port.bind_address(remote, self)
        self._addr_key = port.send_key(remote)
        self.profile = keys.profile
        self.rx = SrtpContext.inbound(keys)
        self.tx = SrtpContext.outbound(keys)
        self._tx_srtp = self.tx.srtp
        self._rtp_trailer = keys.profile.rtp_trailer_length
        self._send_key = self._addr_key
        self._ring.generation += 1
        self.state = TransportState.CONNECTED
        self.last_consent_ms = now_ms
        if self.sink is not None:
            self.sink.on_connected(now_ms)

    def on_ice_check(self, addr: Address, check: BindingCheck, now_ms: int) -> None:
        """A relay has no ICE: its address was given (a check could only come from a guess)."""

    def on_dtls(self, data: bytes, now_ms: int) -> None:
        """A relay has no DTLS: nothing from its address is a handshake."""
        self._counters.drops[DropReason.DTLS_REJECTED] += 1

    def tick(self, now_ms: int) -> None:
        if self.state is TransportState.CONNECTED and now_ms - self.last_consent_ms > self.silence_ms:
            self.close(CloseReason.CONSENT_EXPIRED, send_alert=False)

    def close(self, reason: CloseReason, send_alert: bool = False) -> None:
        super().close(reason, send_alert=False)

