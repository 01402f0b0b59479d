"""Join tokens: JWTs signed with an API secret, the header's ``kid`` naming the API key.

Claims and refusals follow ``shared/design/contracts.md`` (Tokens).  Time is passed in.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from levelchat.errors import ApiError

SCOPES = frozenset(
    {
        "room:join",
        "room:publish",
        "room:subscribe",
        "room:create",
        "room:admin",
        "recording:write",
        "node:register",
        "node:admin",
    }
)
LEEWAY_S = 30
ROOM_RE = re.compile(r"^[A-Za-z0-9-]{4,64}$")
MAX_IDENTITY = 128
ALGORITHMS = ("HS256", "ES256")
# Configurations refuse short secrets outside dev mode; the dev key is short on purpose.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


def validate_room(room: object) -> str:
    if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
        raise ApiError("invalid_room", f"room id {room!r} must be 4 to 64 letters, digits or dashes")
    return room


def validate_identity(identity: object) -> str:
    if not isinstance(identity, str) or not identity or len(identity) > MAX_IDENTITY:
        raise ApiError("invalid_identity", "identity must be a non-empty string of at most 128 characters")
    return identity


@dataclass(frozen=True)
class Claims:
    key_id: str
    identity: str | None
    room: str | None
    scopes: frozenset[str]
    expires_at: int | None
    name: str | None = None
    metadata: str | None = None

    def require(self, *scopes: str) -> None:
        missing = [s for s in scopes if s not in self.scopes]
        if missing:
            raise ApiError("token/unauthorized", f"token lacks scope(s): {', '.join(missing)}")

    def require_room(self, room: str) -> None:
        """A token with a ``room`` claim is bound to that room."""
        if self.room is not None and self.room != room:
            raise ApiError("token/unauthorized", f"token is for room {self.room!r}, not {room!r}")

    def require_room_access(self, room: str) -> None:
        """The token may act *in* ``room`` (join it, publish, subscribe, act on its sessions, read
        it): its ``room`` claim names that room, or it has no ``room`` claim and carries
        ``room:admin`` (an operator's token).  A room-less token without ``room:admin`` is not a
        key to every room: ``token/unauthorized``.  (Creating a room, ``room:create``, only needs
        ``require_room``: a provisioning token may be room-less.)"""
        if self.room is None and "room:admin" not in self.scopes:
            raise ApiError(
                "token/unauthorized",
                f"token has no room claim: it may act in room {room!r} only with the room:admin scope",
            )
        self.require_room(room)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret: str  # HS256 secret, or an EC public key in PEM for ES256
    algorithm: str = "HS256"


class TokenVerifier:
    def __init__(self, keys: Iterable[ApiKey], project: str, leeway_s: int = LEEWAY_S) -> None:
        self._keys = {k.key_id: k for k in keys}
        self._project = project
        self._leeway = leeway_s

    def verify(self, token: str | None, now_s: float) -> Claims:
        if not token:
            raise ApiError("unauthorized", "no access token was given")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ApiError("token/invalid", f"malformed token: {exc}") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise ApiError("token/invalid", "token names an unknown API key")
        if header.get("alg") != key.algorithm:
            raise ApiError("token/invalid", f"API key {kid} signs with {key.algorithm}")
        try:
            raw: dict[str, Any] = jwt.decode(
                token,
                key.secret,
                algorithms=[key.algorithm],
                audience=self._project,
                issuer=key.key_id,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise ApiError("token/invalid", f"token rejected: {exc}") from None
        return self._check_claims(raw, key.key_id, now_s)

    def _check_claims(self, raw: Mapping[str, Any], kid: str, now_s: float) -> Claims:
        exp, nbf, iat = raw.get("exp"), raw.get("nbf"), raw.get("iat")
        for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat)):
            # a JSON boolean is not a number (Python's bool is an int); nor is NaN or an infinity
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise ApiError("token/invalid", f"claim {name} must be a number of seconds")
        if exp is not None and now_s > exp + self._leeway:
            raise ApiError("token/expired", "token expired")
        if nbf is not None and now_s + self._leeway < nbf:
            raise ApiError("token/invalid", "token is not valid yet (nbf)")
        if iat is not None and now_s + self._leeway < iat:
            raise ApiError("token/invalid", "token was issued in the future (iat)")
        scopes = raw.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ApiError("token/invalid", "claim scopes must be a list of strings")
        sub = raw.get("sub")
        identity = validate_identity(sub) if sub is not None else None
        raw_room = raw.get("room")
        room = validate_room(raw_room) if raw_room is not None else None
        display = raw.get("name")
        metadata = raw.get("metadata")
        return Claims(
            key_id=kid,
            identity=identity,
            room=room,
            scopes=frozenset(scopes),
            expires_at=int(exp) if exp is not None else None,
            name=display if isinstance(display, str) else None,
            metadata=metadata if isinstance(metadata, str) else None,
        )


def mint(
    key: ApiKey,
    *,
    project: str,
    now_s: float,
    ttl_s: int,
    identity: str | None = None,
    room: str | None = None,
    scopes: Iterable[str] = (),
    name: str | None = None,
    metadata: str | None = None,
) -> str:
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in SCOPES]
    if unknown:
        raise ApiError("bad_request", f"unknown scope(s): {', '.join(unknown)}")
    claims: dict[str, Any] = {
        "iss": key.key_id,
        "aud": project,
        "iat": int(now_s),
        "nbf": int(now_s),
        "exp": int(now_s) + int(ttl_s),
        "scopes": scope_list,
    }
    if identity is not None:
        claims["sub"] = validate_identity(identity)
    if room is not None:
        claims["room"] = validate_room(room)
    if name is not None:
        claims["name"] = name
    if metadata is not None:
        claims["metadata"] = metadata
    return jwt.encode(claims, key.secret, algorithm=key.algorithm, headers={"kid": key.key_id})
