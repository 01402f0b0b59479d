"""ICE-lite (RFC 8445 §2.5): answer connectivity checks, learn the client's address from them.

The node never sends checks of its own.  A check is a STUN Binding request whose USERNAME is
``<our ufrag>:<their ufrag>``, authenticated with our password (MESSAGE-INTEGRITY) and carrying
a FINGERPRINT; the answer is a Binding success with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and
FINGERPRINT.  A Binding indication is a keepalive (RFC 8445 §11): it is accepted and not
answered.  Sans-I/O: the caller hands in bytes and gets bytes back.
"""

from __future__ import annotations

import enum
import secrets
import string
import struct
from dataclasses import dataclass

from aioice import stun

from sfu.counters import DropReason

_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def random_ice_string(length: int) -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


@dataclass(frozen=True)
class IceCredentials:
    ufrag: str
    pwd: str

    @classmethod
    def generate(cls) -> IceCredentials:
        # RFC 8445: ufrag ≥ 24 bits, pwd ≥ 128 bits of randomness.
        return cls(random_ice_string(8), random_ice_string(24))


@dataclass(frozen=True)
class BindingCheck:
    """A parsed Binding request, before authentication."""

    message: stun.Message
    local_ufrag: str
    remote_ufrag: str
    use_candidate: bool
    controlling: bool


class Keepalive(enum.Enum):
    """A well-formed STUN message that is not a check but is expected."""

    BINDING_INDICATION = "binding_indication"  # RFC 8445 §11 (libnice sends one every 25 s)


def parse_check(data: bytes) -> BindingCheck | Keepalive | DropReason:
    """Parse a connectivity check; a DropReason says why it is not one, ``Keepalive`` that it is a
    Binding indication (no MESSAGE-INTEGRITY needed: it is not answered and grants nothing)."""
    try:
        msg = stun.parse_message(data)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError, KeyError):
        return DropReason.STUN_MALFORMED
    if msg.message_method != stun.Method.BINDING:
        return DropReason.STUN_UNEXPECTED
    if msg.message_class == stun.Class.INDICATION:
        return Keepalive.BINDING_INDICATION
    if msg.message_class != stun.Class.REQUEST:
        return DropReason.STUN_UNEXPECTED
    username = msg.attributes.get("USERNAME")
    if not isinstance(username, str) or ":" not in username:
        return DropReason.STUN_UNKNOWN_USER
    if "FINGERPRINT" not in msg.attributes or "MESSAGE-INTEGRITY" not in msg.attributes:
        return DropReason.STUN_MALFORMED
    local, _, remote = username.partition(":")
    return BindingCheck(
        message=msg,
        local_ufrag=local,
        remote_ufrag=remote,
        use_candidate="USE-CANDIDATE" in msg.attributes,
        controlling="ICE-CONTROLLING" in msg.attributes,
    )


def authenticate(check: BindingCheck, local: IceCredentials, remote_ufrag: str | None) -> bool:
    if remote_ufrag is not None and check.remote_ufrag != remote_ufrag:
        return False
    return check.message.check_message_integrity(local.pwd.encode())


def binding_success(check: BindingCheck, addr: tuple[str, int], local: IceCredentials) -> bytes:
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=check.message.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
    response.add_message_integrity(local.pwd.encode())  # adds FINGERPRINT too
    return bytes(response)
