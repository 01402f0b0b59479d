"""SRTP contexts against libsrtp through pylibsrtp's own Session API (independent reference)."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest
from pylibsrtp._binding import ffi, lib

from sfu.transport.srtp import (
    BUFFER_TOO_SMALL,
    CONTEXT_CLOSED,
    SrtpContext,
    SrtpDirection,
    SrtpError,
    SrtpKeys,
    SrtpProfile,
    SrtpStatus,
)

PROFILES = list(SrtpProfile)


def rtp_packet(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xab" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, seq * 960, ssrc) + payload


def rtcp_sr(ssrc: int = 0x11223344) -> bytes:
    body = struct.pack("!IIIIII", ssrc, 1, 2, 3, 4, 5)
    return struct.pack("!BBH", 0x80, 200, len(body) // 4) + body


def last_error(ctx: SrtpContext) -> SrtpError | None:
    return ctx.last_error


def key_pair(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    material = os.urandom(profile.keying_material_length)
    return (
        SrtpKeys.from_keying_material(profile, material, is_client=True),
        SrtpKeys.from_keying_material(profile, material, is_client=False),
    )


def reference_session(profile: SrtpProfile, master: bytes, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=master, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def test_keys_split_rfc5764_layout() -> None:
    profile = SrtpProfile.AES_CM_128_HMAC_SHA1_80
    material = bytes(range(60))  # client key 0..15, server key 16..31, client salt 32..45, server salt 46..59
    client = SrtpKeys.from_keying_material(profile, material, is_client=True)
    server = SrtpKeys.from_keying_material(profile, material, is_client=False)
    assert client.local_key == bytes(range(16)) and client.remote_key == bytes(range(16, 32))
    assert client.local_salt == bytes(range(32, 46)) and client.remote_salt == bytes(range(46, 60))
    assert server.local_master == client.remote_master and server.remote_master == client.local_master
    assert "local_key" not in repr(client) and "remote_salt" not in repr(client)  # keys stay out of logs


@pytest.mark.parametrize(
    "profile, length",
    [
        (SrtpProfile.AES_CM_128_HMAC_SHA1_80, 59),
        (SrtpProfile.AEAD_AES_128_GCM, 57),
        (SrtpProfile.AEAD_AES_256_GCM, 0),
    ],
)
def test_keys_reject_wrong_material_length(profile: SrtpProfile, length: int) -> None:
    with pytest.raises(ValueError, match="keying material"):
        SrtpKeys.from_keying_material(profile, b"\0" * length, is_client=True)


@pytest.mark.parametrize(
    "profile, material_len, rtp_tag, rtcp_trailer",
    [
        (SrtpProfile.AES_CM_128_HMAC_SHA1_80, 60, 10, 14),
        (SrtpProfile.AEAD_AES_128_GCM, 56, 16, 20),
        (SrtpProfile.AEAD_AES_256_GCM, 88, 16, 20),
    ],
)
def test_profile_table(profile: SrtpProfile, material_len: int, rtp_tag: int, rtcp_trailer: int) -> None:
    assert profile.keying_material_length == material_len
    assert lib.srtp_profile_get_master_key_length(profile.libsrtp_profile) == profile.key_length
    assert lib.srtp_profile_get_master_salt_length(profile.libsrtp_profile) == profile.salt_length
    assert SrtpProfile.from_openssl_name(profile.openssl_name) is profile
    assert SrtpProfile.from_name(profile.name) is profile
    tx_keys, _ = key_pair(profile)
    tx = SrtpContext.outbound(tx_keys)
    assert len(tx.protect_rtp_bytes(rtp_packet(1)) or b"") == len(rtp_packet(1)) + rtp_tag
    assert len(tx.protect_rtcp_bytes(rtcp_sr()) or b"") == len(rtcp_sr()) + rtcp_trailer


def test_unknown_profile_name() -> None:
    with pytest.raises(ValueError, match="unknown SRTP profile"):
        SrtpProfile.from_name("SRTP_NULL_NULL")


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_in_place_matches_pylibsrtp_session(profile: SrtpProfile) -> None:
    client, server = key_pair(profile)
    ours_tx = SrtpContext.outbound(client)
    ref_tx = reference_session(profile, client.local_master, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    ours_rx = SrtpContext.inbound(server)
    ref_rx = reference_session(profile, server.remote_master, pylibsrtp.Policy.SSRC_ANY_INBOUND)
    buf = ffi.new("unsigned char[]", 1500)
    view = memoryview(ffi.buffer(buf))
    for seq in range(1, 20):
        plain = rtp_packet(seq, payload=os.urandom(100 + seq))
        view[: len(plain)] = plain
        n = ours_tx.protect_rtp(buf, len(plain))
        assert n > len(plain)
        protected = bytes(view[:n])
        assert protected == ref_tx.protect(plain)  # same key, same index: identical ciphertext
        # the reference receiver accepts ours, and ours (in place) gives back the plaintext
        assert ref_rx.unprotect(protected) == plain
        m = ours_rx.unprotect_rtp(buf, n)
        assert m == len(plain) and bytes(view[:m]) == plain
    for _ in range(3):
        plain = rtcp_sr()
        view[: len(plain)] = plain
        n = ours_tx.protect_rtcp(buf, len(plain))
        assert bytes(view[:n]) == ref_tx.protect_rtcp(plain)
        assert ref_rx.unprotect_rtcp(bytes(view[:n])) == plain
        assert ours_rx.unprotect_rtcp(buf, n) == len(plain) and bytes(view[: len(plain)]) == plain


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_raw_srtp_t_usable_by_hot_loop(profile: SrtpProfile) -> None:
    client, server = key_pair(profile)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    buf = ffi.new("char[]", 1500)
    plain = rtp_packet(7)
    ffi.memmove(buf, plain, len(plain))
    tx.len_p[0] = len(plain)
    assert lib.srtp_protect(tx.srtp, buf, tx.len_p) == 0
    n = tx.len_p[0]
    assert rx.unprotect_rtp_bytes(ffi.buffer(buf, n)[:]) == plain


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("kind", ["rtp", "rtcp"])
def test_tampered_packet_is_auth_fail(profile: SrtpProfile, kind: str) -> None:
    client, server = key_pair(profile)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    if kind == "rtp":
        protected = bytearray(tx.protect_rtp_bytes(rtp_packet(1)) or b"")
        protected[20] ^= 0x01
        buf = ffi.new("unsigned char[]", bytes(protected))
        rc = rx.unprotect_rtp(buf, len(protected))
    else:
        protected = bytearray(tx.protect_rtcp_bytes(rtcp_sr()) or b"")
        protected[10] ^= 0x01
        buf = ffi.new("unsigned char[]", bytes(protected))
        rc = rx.unprotect_rtcp(buf, len(protected))
    assert rc == -SrtpStatus.AUTH_FAIL
    assert SrtpError.from_code(-rc) is SrtpError.AUTH_FAIL


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_replay_and_too_old(profile: SrtpProfile) -> None:
    client, server = key_pair(profile)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    first = tx.protect_rtp_bytes(rtp_packet(1)) or b""
    old = tx.protect_rtp_bytes(rtp_packet(2)) or b""
    assert rx.unprotect_rtp_bytes(first) == rtp_packet(1)
    assert rx.unprotect_rtp_bytes(first) is None
    assert rx.last_error is SrtpError.REPLAY_FAIL
    for seq in range(3, 1200):  # move the window 1024+ ahead of seq 2
        assert rx.unprotect_rtp_bytes(tx.protect_rtp_bytes(rtp_packet(seq)) or b"") is not None
    assert rx.unprotect_rtp_bytes(old) is None
    assert last_error(rx) is SrtpError.REPLAY_OLD
    # within the window, out of order, is fine
    late = tx.protect_rtp_bytes(rtp_packet(1300)) or b""
    assert rx.unprotect_rtp_bytes(tx.protect_rtp_bytes(rtp_packet(1301)) or b"") is not None
    assert rx.unprotect_rtp_bytes(late) == rtp_packet(1300)


def test_rtcp_replay() -> None:
    client, server = key_pair(SrtpProfile.AEAD_AES_128_GCM)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    p = tx.protect_rtcp_bytes(rtcp_sr()) or b""
    assert rx.unprotect_rtcp_bytes(p) == rtcp_sr()
    buf = ffi.new("char[]", p)
    assert SrtpError.from_code(-rx.unprotect_rtcp(buf, len(p))) is SrtpError.REPLAY_FAIL


def test_retransmission_allowed_on_protect() -> None:
    """allow_repeat_tx: an RTX of the same packet protects again (the node resends on NACK)."""
    client, server = key_pair(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    tx = SrtpContext.outbound(client)
    once = tx.protect_rtp_bytes(rtp_packet(5))
    twice = tx.protect_rtp_bytes(rtp_packet(5))
    assert once is not None and once == twice
    strict = SrtpContext.outbound(client, allow_repeat_tx=False)
    assert strict.protect_rtp_bytes(rtp_packet(5)) is not None
    assert strict.protect_rtp_bytes(rtp_packet(5)) is None


def test_wrong_key_is_auth_fail() -> None:
    client, _ = key_pair(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    _, other = key_pair(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    p = SrtpContext.outbound(client).protect_rtp_bytes(rtp_packet(1)) or b""
    rx = SrtpContext.inbound(other)
    assert rx.unprotect_rtp_bytes(p) is None and rx.last_error is SrtpError.AUTH_FAIL


def test_buffer_too_small_and_garbage() -> None:
    client, server = key_pair(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    plain = rtp_packet(1)
    exact = ffi.new("char[]", plain)  # no room for the tag
    assert tx.protect_rtp(exact, len(plain)) == -BUFFER_TOO_SMALL
    assert SrtpError.from_code(BUFFER_TOO_SMALL) is SrtpError.OTHER
    short = ffi.new("char[]", b"\x80\x00\x00")
    assert rx.unprotect_rtp(short, 3) < 0
    assert rx.unprotect_rtcp(short, 3) < 0


def test_close_is_idempotent_and_safe() -> None:
    client, _ = key_pair(SrtpProfile.AEAD_AES_128_GCM)
    tx = SrtpContext.outbound(client)
    tx.close()
    tx.close()
    assert tx.closed and tx.srtp is None
    buf = ffi.new("char[]", 1500)
    assert tx.protect_rtp(buf, 100) == -CONTEXT_CLOSED
    assert tx.protect_rtp_bytes(rtp_packet(1)) is None


def test_many_contexts_are_freed() -> None:
    """Create and drop contexts in a bounded loop: ffi.gc frees the ones never closed."""
    client, _ = key_pair(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    for i in range(2000):
        ctx = SrtpContext(SrtpProfile.AES_CM_128_HMAC_SHA1_80, client.local_master, SrtpDirection.OUTBOUND)
        assert ctx.protect_rtp_bytes(rtp_packet(i)) is not None
        if i % 2:
            ctx.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"master": b"\0" * 29}, "master key\\+salt"),
        ({"window_size": 10}, "window_size"),
    ],
)
def test_context_rejects_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "profile": SrtpProfile.AES_CM_128_HMAC_SHA1_80,
        "master": b"\0" * 30,
        "direction": SrtpDirection.INBOUND,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SrtpContext(**args)  # type: ignore[arg-type]


def test_large_packet_bytes_path() -> None:
    client, server = key_pair(SrtpProfile.AEAD_AES_256_GCM)
    tx, rx = SrtpContext.outbound(client), SrtpContext.inbound(server)
    plain = rtp_packet(1, payload=os.urandom(4000))
    assert rx.unprotect_rtp_bytes(tx.protect_rtp_bytes(plain) or b"") == plain
