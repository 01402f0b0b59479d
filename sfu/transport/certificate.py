"""The node's DTLS identity: an ECDSA P-256 key and a short-lived self-signed certificate.

WebRTC authenticates DTLS peers by the certificate fingerprint carried in SDP (RFC 8122), not by
a CA, so the OpenSSL context accepts any peer certificate during the handshake and the DTLS
endpoint compares fingerprints once it completes (``fingerprint_matches``).  One certificate is
generated per node start; its OpenSSL context is built once per offered profile list and shared
by every connection.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from sfu.transport.srtp import SrtpProfile

#: SDP ``a=fingerprint`` hash names (RFC 8122) this node can compute.
FINGERPRINT_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "sha-1": hashes.SHA1(),
    "sha-224": hashes.SHA224(),
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}
DEFAULT_VALIDITY = datetime.timedelta(days=30)
#: ECDHE with AEAD first; CBC suites kept for older stacks.  RSA suites let us be the client of a
#: peer whose certificate is RSA; as a server only the ECDSA ones can be picked.
CIPHER_LIST = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)
_DTLS1_2_VERSION = 0xFEFD


def fingerprint_of(cert: x509.Certificate, algorithm: str = "sha-256") -> str:
    """``AB:CD:...`` digest of the DER certificate; ValueError for an unknown algorithm."""
    try:
        hash_algorithm = FINGERPRINT_ALGORITHMS[algorithm.lower()]
    except KeyError:
        raise ValueError(f"fingerprint algorithm: unsupported {algorithm!r}") from None
    return cert.fingerprint(hash_algorithm).hex(":").upper()


def fingerprint_matches(cert: x509.Certificate, expected: Sequence[tuple[str, str]]) -> bool:
    """True when at least one expected fingerprint uses a known algorithm and all such ones match.

    Fingerprints with algorithms we cannot compute are ignored (RFC 8122 lets a peer offer several);
    an empty or all-unknown list never matches.
    """
    checked = 0
    for algorithm, value in expected:
        if algorithm.lower() not in FINGERPRINT_ALGORITHMS:
            continue
        checked += 1
        if fingerprint_of(cert, algorithm) != value.strip().upper():
            return False
    return checked > 0


class Certificate:
    """An ECDSA P-256 key with its self-signed X.509 certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        if cert.public_key() != key.public_key():
            raise ValueError("certificate: public key does not match the private key")
        self.key = key
        self.x509 = cert
        self._contexts: dict[tuple[SrtpProfile, ...], SSL.Context] = {}
        #: fingerprints by algorithm: every answer names one (the certificate never changes)
        self._fingerprints: dict[str, str] = {}

    @classmethod
    def generate(
        cls, now: datetime.datetime | None = None, validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> Certificate:
        """A fresh key and certificate valid from a day before ``now`` (clock skew) for ``validity``."""
        if now is None:
            now = datetime.datetime.now(tz=datetime.UTC)
        if validity <= datetime.timedelta(0):
            raise ValueError(f"validity: must be positive, got {validity}")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, secrets.token_hex(16))])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def expires(self) -> datetime.datetime:
        return self.x509.not_valid_after_utc

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        value = self._fingerprints.get(algorithm)
        if value is None:
            value = self._fingerprints[algorithm] = fingerprint_of(self.x509, algorithm)
        return value

    def fingerprints(self) -> list[tuple[str, str]]:
        """``(algorithm, value)`` for the SDP algorithms browsers use."""
        return [(a, self.fingerprint(a)) for a in ("sha-256", "sha-384", "sha-512")]

    def ssl_context(self, srtp_profiles: Sequence[SrtpProfile]) -> SSL.Context:
        """The DTLS context offering ``srtp_profiles`` in that order of preference; cached.

        It sets ``OP_NO_QUERY_MTU``: each connection must call ``set_ciphertext_mtu`` (a memory BIO
        has no path MTU to query, and OpenSSL cannot write a flight with an MTU of 0).
        """
        if not srtp_profiles:
            raise ValueError("srtp_profiles: at least one profile is needed")
        cache_key = tuple(srtp_profiles)
        ctx = self._contexts.get(cache_key)
        if ctx is None:
            ctx = self._build_context(cache_key)
            self._contexts[cache_key] = ctx
        return ctx

    def _build_context(self, srtp_profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
        # No tickets (no resumption in WebRTC); the MTU is ours to set, not the BIO's to query.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        # Ask for the peer's certificate and accept whatever chain it is: the fingerprint from
        # the signaling channel is what authenticates it, checked after the handshake.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
        ctx.use_certificate(self.x509)
        ctx.use_privatekey(self.key)
        ctx.check_privatekey()
        ctx.set_cipher_list(CIPHER_LIST)
        # ECDHE groups: OpenSSL's defaults (X25519, P-256, P-384, ...), negotiated automatically.
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in srtp_profiles))
        return ctx


def _accept_any_certificate(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
    return True
