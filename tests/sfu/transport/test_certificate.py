"""Certificate generation, fingerprints and the DTLS context (exercised by a real handshake)."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from sfu.transport.certificate import Certificate, fingerprint_matches, fingerprint_of
from sfu.transport.srtp import SrtpProfile

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def test_generate_is_p256_self_signed_with_validity() -> None:
    cert = Certificate.generate(now=NOW)
    assert isinstance(cert.key.curve, ec.SECP256R1)
    assert cert.x509.issuer == cert.x509.subject
    assert cert.expires == NOW + datetime.timedelta(days=30)
    assert cert.x509.not_valid_before_utc == NOW - datetime.timedelta(days=1)
    other = Certificate.generate(now=NOW)
    assert other.fingerprint() != cert.fingerprint()  # a new key every start


def test_generate_rejects_non_positive_validity() -> None:
    with pytest.raises(ValueError, match="validity"):
        Certificate.generate(now=NOW, validity=datetime.timedelta(0))


def test_mismatched_key_rejected() -> None:
    a, b = Certificate.generate(now=NOW), Certificate.generate(now=NOW)
    with pytest.raises(ValueError, match="does not match"):
        Certificate(a.key, b.x509)


@pytest.mark.parametrize(
    "algorithm, hashname",
    [("sha-1", "sha1"), ("sha-256", "sha256"), ("SHA-384", "sha384"), ("sha-512", "sha512")],
)
def test_fingerprint_is_colon_hex_of_der(algorithm: str, hashname: str) -> None:
    cert = Certificate.generate(now=NOW)
    digest = hashlib.new(hashname, cert.x509.public_bytes(Encoding.DER)).hexdigest().upper()
    expected = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    assert cert.fingerprint(algorithm) == expected


def test_fingerprint_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unsupported 'md5'"):
        fingerprint_of(Certificate.generate(now=NOW).x509, "md5")


def test_fingerprint_matching_rules() -> None:
    cert = Certificate.generate(now=NOW)
    other = Certificate.generate(now=NOW)
    good = cert.fingerprint("sha-256")
    cases: list[tuple[list[tuple[str, str]], bool]] = [
        ([("sha-256", good)], True),
        ([("SHA-256", good.lower())], True),
        ([("sha-256", other.fingerprint())], False),
        ([("md5", "00:11"), ("sha-256", good)], True),  # unknown algorithms are skipped
        ([("md5", "00:11")], False),  # but one known is required
        ([], False),
        ([("sha-256", good), ("sha-512", other.fingerprint("sha-512"))], False),  # all known must match
        (cert.fingerprints(), True),
    ]
    for fingerprints, expected in cases:
        assert fingerprint_matches(cert.x509, fingerprints) is expected, fingerprints


def test_context_cached_per_profile_list() -> None:
    cert = Certificate.generate(now=NOW)
    a = cert.ssl_context([SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80])
    assert a is cert.ssl_context((SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80))
    assert a is not cert.ssl_context([SrtpProfile.AES_CM_128_HMAC_SHA1_80])
    with pytest.raises(ValueError, match="at least one"):
        cert.ssl_context([])


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    def step(conn: SSL.Connection) -> bool:
        try:
            conn.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def move(src: SSL.Connection, dst: SSL.Connection) -> None:
        while True:
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                return

    done = step(client)
    for _ in range(10):
        move(client, server)
        server_done = step(server)
        move(server, client)
        done = step(client)
        if done and server_done:
            return
    raise AssertionError("handshake did not complete")


def test_contexts_handshake_dtls12_ecdhe_with_srtp() -> None:
    """Two contexts complete DTLS 1.2 with ECDHE-ECDSA, exchange certificates, agree on SRTP."""
    a, b = Certificate.generate(), Certificate.generate()
    client = SSL.Connection(a.ssl_context([SrtpProfile.AES_CM_128_HMAC_SHA1_80]), None)
    server = SSL.Connection(
        b.ssl_context([SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80]), None
    )
    for conn in (client, server):
        conn.set_ciphertext_mtu(1200)  # OP_NO_QUERY_MTU: the MTU is the user's to set
    client.set_connect_state()
    server.set_accept_state()
    _pump(client, server)
    assert client.get_protocol_version_name() == "DTLSv1.2"
    assert (client.get_cipher_name() or "").startswith("ECDHE-ECDSA-")
    assert server.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    peer = server.get_peer_certificate(as_cryptography=True)  # the client had to send one
    assert peer is not None and fingerprint_of(peer) == a.fingerprint()
    client_peer = client.get_peer_certificate(as_cryptography=True)
    assert client_peer is not None and fingerprint_of(client_peer) == b.fingerprint()
