"""ICE-lite checks: real STUN Binding requests built with aioice.stun, parsed, authenticated, answered."""

from __future__ import annotations

import random
import struct

import pytest
from aioice import stun

from sfu.counters import DropReason
from sfu.transport.ice import (
    BindingCheck,
    IceCredentials,
    Keepalive,
    authenticate,
    binding_success,
    parse_check,
    random_ice_string,
)
from tests.sfu.routing.harness import CHECK_PRIORITY, TIE_BREAKER, binding_request

LOCAL = IceCredentials("LoCa", "local-password-0123456789ab")
REMOTE_UFRAG = "ReMo"
USERNAME = f"{LOCAL.ufrag}:{REMOTE_UFRAG}"


def good_check(**kwargs: object) -> BindingCheck:
    check = parse_check(binding_request(USERNAME, LOCAL.pwd, **kwargs))  # type: ignore[arg-type]
    assert isinstance(check, BindingCheck), check
    return check


def test_credentials_have_the_rfc_8445_sizes_and_alphabet() -> None:
    seen = {IceCredentials.generate() for _ in range(50)}
    assert len(seen) == 50
    alphabet = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    for creds in seen:
        assert len(creds.ufrag) == 8 and len(creds.pwd) == 24
        assert set(creds.ufrag) <= alphabet and set(creds.pwd) <= alphabet
    assert len(random_ice_string(40)) == 40


@pytest.mark.parametrize(
    ("use_candidate", "controlling"),
    [(True, True), (False, True), (True, False), (False, False)],
)
def test_parse_check_reads_username_and_flags(use_candidate: bool, controlling: bool) -> None:
    check = good_check(use_candidate=use_candidate, controlling=controlling)
    assert check.local_ufrag == LOCAL.ufrag
    assert check.remote_ufrag == REMOTE_UFRAG
    assert check.use_candidate is use_candidate
    assert check.controlling is controlling
    assert check.message.attributes["PRIORITY"] == CHECK_PRIORITY
    if controlling:
        assert check.message.attributes["ICE-CONTROLLING"] == TIE_BREAKER


def _response() -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    msg.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 4000)
    msg.add_message_integrity(LOCAL.pwd.encode())
    return bytes(msg)


def _allocate() -> bytes:
    msg = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = USERNAME
    msg.add_message_integrity(LOCAL.pwd.encode())
    return bytes(msg)


def _bad_fingerprint() -> bytes:
    data = bytearray(binding_request(USERNAME, LOCAL.pwd))
    data[-1] ^= 0xFF
    return bytes(data)


def _truncated() -> bytes:
    return binding_request(USERNAME, LOCAL.pwd)[:-4]


def _bad_utf8_username() -> bytes:
    """USERNAME (0x0006) that is not UTF-8, then a valid FINGERPRINT."""
    body = struct.pack("!HH", 0x0006, 4) + b"\xff\xfe:\x80"
    head = struct.pack("!HHI12s", 0x0001, len(body) + 8, stun.COOKIE, b"\x01" * 12)
    return head + body + struct.pack("!HHI", 0x8028, 4, stun.message_fingerprint(head + body))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", DropReason.STUN_MALFORMED, id="empty"),
        pytest.param(b"\x00\x01\x00\x00", DropReason.STUN_MALFORMED, id="shorter-than-header"),
        pytest.param(_truncated(), DropReason.STUN_MALFORMED, id="length-mismatch"),
        pytest.param(_bad_fingerprint(), DropReason.STUN_MALFORMED, id="bad-fingerprint"),
        pytest.param(_bad_utf8_username(), DropReason.STUN_MALFORMED, id="username-not-utf8"),
        pytest.param(b"\x3f\xff" + bytes(18), DropReason.STUN_MALFORMED, id="unknown-method"),
        pytest.param(_response(), DropReason.STUN_UNEXPECTED, id="binding-response"),
        pytest.param(_allocate(), DropReason.STUN_UNEXPECTED, id="allocate-request"),
        pytest.param(binding_request(None, LOCAL.pwd), DropReason.STUN_UNKNOWN_USER, id="no-username"),
        pytest.param(binding_request("nocolon", LOCAL.pwd), DropReason.STUN_UNKNOWN_USER, id="username-no-colon"),
        pytest.param(
            binding_request(USERNAME, LOCAL.pwd, integrity=False), DropReason.STUN_MALFORMED, id="no-integrity"
        ),
        pytest.param(
            binding_request(USERNAME, LOCAL.pwd, fingerprint=False), DropReason.STUN_MALFORMED, id="no-fingerprint"
        ),
        pytest.param(
            binding_request(USERNAME, LOCAL.pwd, integrity=False, fingerprint=False),
            DropReason.STUN_MALFORMED,
            id="neither",
        ),
    ],
)
def test_parse_check_drop_reasons(data: bytes, reason: DropReason) -> None:
    assert parse_check(data) is reason


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            binding_request(None, "", integrity=False, use_candidate=False, controlling=False,
                            message_class=stun.Class.INDICATION),
            id="bare-with-fingerprint",  # what libnice sends every 25 s
        ),
        pytest.param(
            binding_request(None, "", integrity=False, fingerprint=False, use_candidate=False, controlling=False,
                            message_class=stun.Class.INDICATION),
            id="bare",
        ),
        pytest.param(binding_request(USERNAME, LOCAL.pwd, message_class=stun.Class.INDICATION), id="with-integrity"),
    ],
)
def test_binding_indications_are_keepalives(data: bytes) -> None:
    assert parse_check(data) is Keepalive.BINDING_INDICATION


def test_a_malformed_indication_is_still_malformed() -> None:
    data = bytearray(binding_request(None, "", integrity=False, message_class=stun.Class.INDICATION))
    data[-1] ^= 1  # FINGERPRINT no longer matches
    assert parse_check(bytes(data)) is DropReason.STUN_MALFORMED


def test_parse_check_never_raises_on_mutated_checks() -> None:
    rng = random.Random(7)
    base = binding_request(USERNAME, LOCAL.pwd)
    outcomes: set[str] = set()
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        result = parse_check(bytes(data))
        outcomes.add(type(result).__name__)
        if isinstance(result, BindingCheck):
            # whatever parsed must still fail or pass authentication without raising
            authenticate(result, LOCAL, None)
    assert outcomes == {"DropReason", "BindingCheck"}


@pytest.mark.parametrize(
    ("pwd", "expected_remote", "ok"),
    [
        (LOCAL.pwd, REMOTE_UFRAG, True),
        (LOCAL.pwd, None, True),  # remote ufrag not known yet: only the password counts
        ("wrong-password-0123456789", REMOTE_UFRAG, False),
        (LOCAL.pwd[:-1], None, False),
        (LOCAL.pwd, "Other", False),  # right password, someone else's session
        (LOCAL.pwd, REMOTE_UFRAG + "x", False),
    ],
)
def test_authenticate(pwd: str, expected_remote: str | None, ok: bool) -> None:
    check = parse_check(binding_request(USERNAME, pwd))
    assert isinstance(check, BindingCheck)
    assert authenticate(check, LOCAL, expected_remote) is ok


@pytest.mark.parametrize(
    "addr",
    [("127.0.0.1", 50000), ("127.0.0.1", 1), ("127.5.6.7", 65535), ("10.0.0.1", 9)],
)
def test_binding_success_parses_back_and_verifies(addr: tuple[str, int]) -> None:
    check = good_check()
    data = binding_success(check, addr, LOCAL)
    response = stun.parse_message(data)  # also verifies FINGERPRINT
    assert response.message_method is stun.Method.BINDING
    assert response.message_class is stun.Class.RESPONSE
    assert response.transaction_id == check.message.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert "FINGERPRINT" in response.attributes
    assert response.check_message_integrity(LOCAL.pwd.encode())
    assert not response.check_message_integrity(b"another password")
    # XOR-MAPPED-ADDRESS is really XORed on the wire: the plain port never appears at its offset
    assert struct.pack("!H", addr[1] ^ (stun.COOKIE >> 16)) in data


def test_binding_success_keeps_each_transaction_id() -> None:
    ids = {bytes(range(i, i + 12)) for i in range(5)}
    for tid in ids:
        check = parse_check(binding_request(USERNAME, LOCAL.pwd, transaction_id=tid))
        assert isinstance(check, BindingCheck)
        response = stun.parse_message(binding_success(check, ("127.0.0.1", 9), LOCAL))
        assert response.transaction_id == tid
