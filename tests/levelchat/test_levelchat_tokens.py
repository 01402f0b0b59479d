"""levelchat.tokens: every claim rule of the contract, one row each, through real PyJWT tokens."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from levelchat.errors import ApiError
from levelchat.tokens import (
    LEEWAY_S,
    MAX_IDENTITY,
    ApiKey,
    Claims,
    TokenVerifier,
    mint,
    validate_identity,
    validate_room,
)

NOW = 1_700_000_000
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
KEY = ApiKey("key-1", SECRET)
PROJECT = "levelchat"
VERIFIER = TokenVerifier([KEY], PROJECT)


def _claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": KEY.key_id,
        "aud": PROJECT,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
        "sub": "alice",
        "room": "demo-1",
        "scopes": ["room:join", "room:publish"],
    }
    for name, value in overrides.items():
        if value is _DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


_DROP = object()


def _encode(claims: dict[str, Any], *, secret: str = SECRET, kid: str | None = "key-1", alg: str = "HS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, secret, algorithm=alg, headers=headers)


def _refusal(token: str | None, now: float = NOW) -> ApiError:
    with pytest.raises(ApiError) as info:
        VERIFIER.verify(token, now)
    return info.value


# -- refusals ----------------------------------------------------------------------------------
REFUSALS: list[tuple[str, str | None, float, str, str]] = [
    # (case, token, now, code, substring of detail)
    ("no token", None, NOW, "unauthorized", "no access token"),
    ("empty token", "", NOW, "unauthorized", "no access token"),
    ("not a JWT", "not.a.jwt", NOW, "token/invalid", "malformed"),
    ("one segment", "abc", NOW, "token/invalid", "malformed"),
    ("bad signature", _encode(_claims(), secret="another-secret-that-is-long-enough-too"), NOW, "token/invalid", "rejected"),
    ("unknown kid", _encode(_claims(), kid="nope"), NOW, "token/invalid", "unknown API key"),
    ("no kid", _encode(_claims(), kid=None), NOW, "token/invalid", "unknown API key"),
    ("other algorithm", _encode(_claims(), alg="HS512"), NOW, "token/invalid", "HS256"),
    ("wrong audience", _encode(_claims(aud="other-project")), NOW, "token/invalid", "rejected"),
    ("no audience", _encode(_claims(aud=_DROP)), NOW, "token/invalid", "rejected"),
    ("wrong issuer", _encode(_claims(iss="key-2")), NOW, "token/invalid", "rejected"),
    ("expired beyond leeway", _encode(_claims(exp=NOW - LEEWAY_S - 1)), NOW, "token/expired", "expired"),
    ("expired long ago", _encode(_claims(exp=NOW - 86400)), NOW, "token/expired", "expired"),
    ("nbf beyond leeway", _encode(_claims(nbf=NOW + LEEWAY_S + 1)), NOW, "token/invalid", "nbf"),
    ("iat beyond leeway", _encode(_claims(iat=NOW + LEEWAY_S + 1, nbf=_DROP)), NOW, "token/invalid", "iat"),
    ("exp not a number", _encode(_claims(exp="tomorrow")), NOW, "token/invalid", "exp"),
    ("nbf not a number", _encode(_claims(nbf="now")), NOW, "token/invalid", "nbf"),
    ("exp a boolean", _encode(_claims(exp=True)), NOW, "token/invalid", "exp"),
    ("nbf a boolean", _encode(_claims(nbf=False)), NOW, "token/invalid", "nbf"),
    ("iat a boolean", _encode(_claims(iat=True)), NOW, "token/invalid", "iat"),
    ("exp infinite", _encode(_claims(exp=float("inf"))), NOW, "token/invalid", "exp"),
    ("scopes not a list", _encode(_claims(scopes="room:join")), NOW, "token/invalid", "scopes"),
    ("scopes not strings", _encode(_claims(scopes=["room:join", 7])), NOW, "token/invalid", "scopes"),
    ("identity empty", _encode(_claims(sub="")), NOW, "invalid_identity", "128"),
    ("identity too long", _encode(_claims(sub="x" * (MAX_IDENTITY + 1))), NOW, "invalid_identity", "128"),
    ("room too short", _encode(_claims(room="abc")), NOW, "invalid_room", "4 to 64"),
    ("room too long", _encode(_claims(room="r" * 65)), NOW, "invalid_room", "4 to 64"),
    ("room with a slash", _encode(_claims(room="demo/1")), NOW, "invalid_room", "4 to 64"),
]


@pytest.mark.parametrize(("case", "token", "now", "code", "detail"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_verify_refuses(case: str, token: str | None, now: float, code: str, detail: str) -> None:
    err = _refusal(token, now)
    assert err.code == code, f"{case}: {err}"
    assert detail in err.detail
    assert err.status == (400 if code.startswith("invalid_") else 401)


# -- acceptances at the edges ------------------------------------------------------------------
ACCEPTED: list[tuple[str, dict[str, Any], float]] = [
    ("fresh", _claims(), NOW),
    ("exp within leeway", _claims(exp=NOW - LEEWAY_S), NOW),
    ("exp just within leeway", _claims(exp=NOW - LEEWAY_S + 1), NOW),
    ("nbf within leeway", _claims(nbf=NOW + LEEWAY_S), NOW),
    ("iat within leeway", _claims(iat=NOW + LEEWAY_S, nbf=_DROP), NOW),
    ("float times", _claims(exp=NOW + 0.5, nbf=NOW - 0.5, iat=NOW - 0.5), NOW),
    ("no exp, nbf or iat", _claims(exp=_DROP, nbf=_DROP, iat=_DROP), NOW),
    ("identity at the limit", _claims(sub="x" * MAX_IDENTITY), NOW),
    ("room at the limits", _claims(room="r" * 64), NOW),
    ("shortest room", _claims(room="ab-1"), NOW),
    ("no identity, no room", _claims(sub=_DROP, room=_DROP), NOW),
    ("no scopes", _claims(scopes=_DROP), NOW),
]


@pytest.mark.parametrize(("case", "claims", "now"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_verify_accepts(case: str, claims: dict[str, Any], now: float) -> None:
    got = VERIFIER.verify(_encode(claims), now)
    assert got.key_id == "key-1"
    assert got.identity == claims.get("sub")
    assert got.room == claims.get("room")
    assert got.scopes == frozenset(claims.get("scopes", []))
    assert got.expires_at == (int(claims["exp"]) if "exp" in claims else None)


def test_leeway_is_configurable() -> None:
    strict = TokenVerifier([KEY], PROJECT, leeway_s=0)
    token = _encode(_claims(exp=NOW - 1))
    with pytest.raises(ApiError) as info:
        strict.verify(token, NOW)
    assert info.value.code == "token/expired"
    assert VERIFIER.verify(token, NOW).identity == "alice"


def test_display_data_is_kept_only_when_textual() -> None:
    got = VERIFIER.verify(_encode(_claims(name="Alice", metadata='{"a":1}')), NOW)
    assert (got.name, got.metadata) == ("Alice", '{"a":1}')
    got = VERIFIER.verify(_encode(_claims(name=7, metadata={"a": 1})), NOW)
    assert (got.name, got.metadata) == (None, None)


# -- scopes and room binding -------------------------------------------------------------------
def _c(scopes: tuple[str, ...] = (), room: str | None = None) -> Claims:
    return Claims(key_id="k", identity="alice", room=room, scopes=frozenset(scopes), expires_at=None)


@pytest.mark.parametrize(
    ("have", "need", "missing"),
    [
        (("room:join", "room:publish"), ("room:join", "room:publish"), None),
        (("room:join",), ("room:join", "room:publish"), "room:publish"),
        ((), ("room:join",), "room:join"),
        (("room:admin",), ("room:join", "room:subscribe"), "room:join, room:subscribe"),
        (("room:join",), (), None),
    ],
)
def test_require_scopes(have: tuple[str, ...], need: tuple[str, ...], missing: str | None) -> None:
    if missing is None:
        _c(have).require(*need)
        return
    with pytest.raises(ApiError) as info:
        _c(have).require(*need)
    assert info.value.code == "token/unauthorized"
    assert info.value.status == 401
    assert missing in info.value.detail


@pytest.mark.parametrize(
    ("bound", "asked", "ok"),
    [(None, "demo-1", True), ("demo-1", "demo-1", True), ("demo-1", "demo-2", False), ("demo-1", "DEMO-1", False)],
)
def test_require_room(bound: str | None, asked: str, ok: bool) -> None:
    claims = _c(("room:join",), room=bound)
    if ok:
        claims.require_room(asked)
        return
    with pytest.raises(ApiError) as info:
        claims.require_room(asked)
    assert info.value.code == "token/unauthorized"
    assert repr(asked) in info.value.detail


@pytest.mark.parametrize(
    ("bound", "scopes", "asked", "ok"),
    [
        (None, ("room:join",), "demo-1", False),  # a room-less join token is not a key to every room
        (None, ("room:join", "room:publish", "room:subscribe", "room:create"), "demo-1", False),
        (None, ("room:admin",), "demo-1", True),  # an operator's token
        ("demo-1", ("room:join",), "demo-1", True),
        ("demo-1", ("room:admin",), "demo-2", False),  # room:admin bound to another room
    ],
)
def test_require_room_access(bound: str | None, scopes: tuple[str, ...], asked: str, ok: bool) -> None:
    claims = _c(scopes, room=bound)
    if ok:
        claims.require_room_access(asked)
        return
    with pytest.raises(ApiError) as info:
        claims.require_room_access(asked)
    assert info.value.code == "token/unauthorized"
    assert repr(asked) in info.value.detail


# -- validators --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("room", "ok"),
    [
        ("demo", True),
        ("a-b-", True),
        ("Room-42", True),
        ("x" * 64, True),
        ("abc", False),
        ("x" * 65, False),
        ("demo room", False),
        ("demo_1", False),
        ("démo", False),
        ("demo\n", False),
        ("", False),
        (None, False),
        (1234, False),
    ],
)
def test_validate_room(room: object, ok: bool) -> None:
    if ok:
        assert validate_room(room) == room
        return
    with pytest.raises(ApiError) as info:
        validate_room(room)
    assert info.value.code == "invalid_room"


@pytest.mark.parametrize(
    ("identity", "ok"),
    [("a", True), ("x" * 128, True), ("émile ✓", True), ("", False), ("x" * 129, False), (None, False), (5, False)],
)
def test_validate_identity(identity: object, ok: bool) -> None:
    if ok:
        assert validate_identity(identity) == identity
        return
    with pytest.raises(ApiError) as info:
        validate_identity(identity)
    assert info.value.code == "invalid_identity"


# -- minting -----------------------------------------------------------------------------------
def test_mint_round_trip() -> None:
    token = mint(
        KEY,
        project=PROJECT,
        now_s=NOW,
        ttl_s=120,
        identity="bob",
        room="demo-1",
        scopes=["room:subscribe", "room:join", "room:join"],
        name="Bob",
        metadata="m",
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "key-1"}
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], audience=PROJECT, options={"verify_exp": False})
    assert raw["scopes"] == ["room:join", "room:subscribe"]
    assert (raw["iat"], raw["nbf"], raw["exp"]) == (NOW, NOW, NOW + 120)
    got = VERIFIER.verify(token, NOW + 120 + LEEWAY_S)
    assert (got.identity, got.room, got.name, got.metadata) == ("bob", "demo-1", "Bob", "m")
    assert _refusal(token, NOW + 121 + LEEWAY_S).code == "token/expired"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"scopes": ["room:fly"]}, "bad_request"),
        ({"identity": ""}, "invalid_identity"),
        ({"identity": "x" * 129}, "invalid_identity"),
        ({"room": "no"}, "invalid_room"),
    ],
)
def test_mint_refuses(kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ApiError) as info:
        mint(KEY, project=PROJECT, now_s=NOW, ttl_s=60, **kwargs)
    assert info.value.code == code


def test_es256_keys() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = TokenVerifier([ApiKey("ec-key", public_pem, "ES256")], PROJECT)
    token = mint(ApiKey("ec-key", private_pem, "ES256"), project=PROJECT, now_s=NOW, ttl_s=60, identity="eve")
    assert verifier.verify(token, NOW).identity == "eve"
    # an HS256 token naming the ES256 key is refused (no algorithm confusion)
    forged = jwt.encode(_claims(iss="ec-key"), "x" * 32, algorithm="HS256", headers={"kid": "ec-key"})
    with pytest.raises(ApiError) as info:
        verifier.verify(forged, NOW)
    assert info.value.code == "token/invalid"
    assert "ES256" in info.value.detail
