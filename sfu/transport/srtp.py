"""SRTP/SRTCP on libsrtp 2 through pylibsrtp's own cffi binding, in place on cffi buffers.

The hot path is ``SrtpContext.protect_rtp(cbuf, length)`` and friends: they call libsrtp on the
caller's preallocated ``char[]``/``unsigned char[]`` buffer, reuse one ``int *`` per context and
return the new length, or a negative libsrtp status (``-status``) on failure.  They never raise
and allocate nothing on success.  ``SrtpError.from_code(status)`` turns a status into a drop
reason.  A loop that wants to skip even the method call can use ``ctx.srtp`` (the raw
``srtp_t``) and ``ctx.len_p`` with ``lib.srtp_protect`` itself.

Buffer room: protecting appends the profile's trailer (``profile.rtp_trailer_length`` or
``profile.rtcp_trailer_length`` bytes); the in-place methods check that the buffer has it.

Keys come from DTLS-SRTP (RFC 5764 section 4.2): the exporter label ``EXTRACTOR-dtls_srtp``
yields ``client key | server key | client salt | server salt``.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from typing import Any

from pylibsrtp._binding import ffi, lib

#: RFC 5764 exporter label for DTLS-SRTP keying material.
DTLS_SRTP_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
#: Replay window used for both directions (libsrtp's maximum is 32768).
DEFAULT_WINDOW_SIZE = 1024
#: Room a buffer needs past the packet for any profile and for libsrtp's MKI worst case
#: (SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN, plus the 4-byte SRTCP index for RTCP).
SRTP_MAX_TRAILER_LEN = 16 + 128
SRTCP_MAX_TRAILER_LEN = 4 + 16 + 128
#: Pseudo status (not a libsrtp one) returned as ``-BUFFER_TOO_SMALL`` by the in-place methods.
BUFFER_TOO_SMALL = 1000
#: Pseudo status returned as ``-CONTEXT_CLOSED`` after ``close()``.
CONTEXT_CLOSED = 1001

_SCRATCH_SIZE = 2048

lib.srtp_init()  # idempotent; pylibsrtp's import does it too


@dataclass(frozen=True)
class _ProfileSpec:
    openssl_name: bytes
    libsrtp_profile: int
    key_length: int
    salt_length: int
    rtp_trailer_length: int  # auth tag
    rtcp_trailer_length: int  # E flag + SRTCP index + auth tag


class SrtpProfile(enum.Enum):
    """SRTP protection profiles this node can negotiate (names as in the node config)."""

    AES_CM_128_HMAC_SHA1_80 = _ProfileSpec(
        b"SRTP_AES128_CM_SHA1_80", lib.srtp_profile_aes128_cm_sha1_80, 16, 14, 10, 14
    )
    AEAD_AES_128_GCM = _ProfileSpec(
        b"SRTP_AEAD_AES_128_GCM", lib.srtp_profile_aead_aes_128_gcm, 16, 12, 16, 20
    )
    AEAD_AES_256_GCM = _ProfileSpec(
        b"SRTP_AEAD_AES_256_GCM", lib.srtp_profile_aead_aes_256_gcm, 32, 12, 16, 20
    )

    @property
    def openssl_name(self) -> bytes:
        """The name OpenSSL uses in ``use_srtp`` (RFC 5764 / RFC 7714 profile)."""
        return self.value.openssl_name

    @property
    def libsrtp_profile(self) -> int:
        return self.value.libsrtp_profile

    @property
    def key_length(self) -> int:
        return self.value.key_length

    @property
    def salt_length(self) -> int:
        return self.value.salt_length

    @property
    def rtp_trailer_length(self) -> int:
        """Bytes ``protect_rtp`` appends."""
        return self.value.rtp_trailer_length

    @property
    def rtcp_trailer_length(self) -> int:
        """Bytes ``protect_rtcp`` appends."""
        return self.value.rtcp_trailer_length

    @property
    def keying_material_length(self) -> int:
        """How many exporter bytes DTLS-SRTP needs for this profile (both directions)."""
        return 2 * (self.value.key_length + self.value.salt_length)

    @classmethod
    def from_openssl_name(cls, name: bytes) -> SrtpProfile:
        for profile in cls:
            if profile.value.openssl_name == name:
                return profile
        raise ValueError(f"unknown SRTP profile {name!r}")

    @classmethod
    def from_name(cls, name: str) -> SrtpProfile:
        """By enum name (``AEAD_AES_128_GCM``) or OpenSSL name (``SRTP_AEAD_AES_128_GCM``)."""
        try:
            return cls[name]
        except KeyError:
            return cls.from_openssl_name(name.encode("ascii", "replace"))


class SrtpError(enum.Enum):
    """Why libsrtp refused a packet, coarse enough to label a drop counter."""

    AUTH_FAIL = "auth_fail"
    REPLAY_FAIL = "replay_fail"  # index already seen
    REPLAY_OLD = "replay_old"  # index behind the replay window
    OTHER = "other"

    @classmethod
    def from_code(cls, status: int) -> SrtpError:
        """Map a libsrtp ``srtp_err_status_t`` (positive; the in-place methods return its negation)."""
        return _ERROR_BY_STATUS.get(status, cls.OTHER)


class SrtpStatus(enum.IntEnum):
    """The libsrtp 2 ``srtp_err_status_t`` values this module names."""

    OK = 0
    FAIL = 1
    BAD_PARAM = 2
    ALLOC_FAIL = 3
    INIT_FAIL = 5
    TERMINUS = 6
    AUTH_FAIL = 7
    CIPHER_FAIL = 8
    REPLAY_FAIL = 9
    REPLAY_OLD = 10
    ALGO_FAIL = 11
    NO_SUCH_OP = 12
    NO_CTX = 13
    CANT_CHECK = 14
    KEY_EXPIRED = 15
    PARSE_ERR = 21
    BAD_MKI = 25
    PKT_IDX_OLD = 26
    PKT_IDX_ADV = 27


_ERROR_BY_STATUS: dict[int, SrtpError] = {
    SrtpStatus.AUTH_FAIL: SrtpError.AUTH_FAIL,
    SrtpStatus.REPLAY_FAIL: SrtpError.REPLAY_FAIL,
    SrtpStatus.REPLAY_OLD: SrtpError.REPLAY_OLD,
}


class SrtpFailure(Exception):
    """A libsrtp call outside the hot path failed (session setup, stream management)."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what} failed with libsrtp status {status}")
        self.status = status


@dataclass(frozen=True)
class SrtpKeys:
    """Master keys and salts of one DTLS-SRTP association, seen from this endpoint."""

    profile: SrtpProfile
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        p = self.profile
        for name, value, want in (
            ("local_key", self.local_key, p.key_length),
            ("remote_key", self.remote_key, p.key_length),
            ("local_salt", self.local_salt, p.salt_length),
            ("remote_salt", self.remote_salt, p.salt_length),
        ):
            if len(value) != want:
                raise ValueError(f"{name}: {p.name} needs {want} bytes, got {len(value)}")

    @classmethod
    def from_keying_material(cls, profile: SrtpProfile, material: bytes, *, is_client: bool) -> SrtpKeys:
        """Split RFC 5764 exporter output; the DTLS client's write key comes first."""
        if len(material) != profile.keying_material_length:
            raise ValueError(
                f"keying material: {profile.name} needs {profile.keying_material_length} bytes, "
                f"got {len(material)}"
            )
        k, s = profile.key_length, profile.salt_length
        client_key, server_key = material[:k], material[k : 2 * k]
        client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s :]
        if is_client:
            return cls(profile, client_key, client_salt, server_key, server_salt)
        return cls(profile, server_key, server_salt, client_key, client_salt)

    @property
    def local_master(self) -> bytes:
        """Key followed by salt, the layout libsrtp's policy wants."""
        return self.local_key + self.local_salt

    @property
    def remote_master(self) -> bytes:
        return self.remote_key + self.remote_salt


class SrtpDirection(enum.Enum):
    OUTBOUND = "outbound"  # we protect
    INBOUND = "inbound"  # we unprotect


#: libsrtp sessions created by ``SrtpContext`` and not deallocated yet (``live_sessions()``)
_live = 0


def live_sessions() -> int:
    """How many libsrtp sessions this process holds (each is freed by ``close`` or with its context)."""
    return _live


def _dealloc(ptr: Any) -> None:
    global _live
    if ptr[0] != ffi.NULL:
        lib.srtp_dealloc(ptr[0])
        ptr[0] = ffi.NULL
        _live -= 1


class SrtpContext:
    """One libsrtp session covering every SSRC of one direction (``ssrc_any_*``)."""

    def __init__(
        self,
        profile: SrtpProfile,
        master: bytes,
        direction: SrtpDirection,
        *,
        window_size: int = DEFAULT_WINDOW_SIZE,
        allow_repeat_tx: bool = True,
    ) -> None:
        want = profile.key_length + profile.salt_length
        if len(master) != want:
            raise ValueError(f"master key+salt: {profile.name} needs {want} bytes, got {len(master)}")
        if not 64 <= window_size < 0x8000:
            raise ValueError(f"window_size: must be in [64, 32767], got {window_size}")
        self.profile = profile
        self.direction = direction
        self.last_error: SrtpError | None = None
        policy = ffi.new("srtp_policy_t *")
        rc = lib.srtp_crypto_policy_set_from_profile_for_rtp(
            ffi.addressof(policy.rtp), profile.libsrtp_profile
        )
        if rc != 0:
            raise SrtpFailure(f"policy for {profile.name} (rtp)", rc)
        rc = lib.srtp_crypto_policy_set_from_profile_for_rtcp(
            ffi.addressof(policy.rtcp), profile.libsrtp_profile
        )
        if rc != 0:
            raise SrtpFailure(f"policy for {profile.name} (rtcp)", rc)
        key = ffi.new("unsigned char[]", master)
        policy.key = key
        policy.ssrc.type = (
            lib.ssrc_any_outbound if direction is SrtpDirection.OUTBOUND else lib.ssrc_any_inbound
        )
        policy.window_size = window_size
        policy.allow_repeat_tx = 1 if allow_repeat_tx else 0
        ptr = ffi.new("srtp_t *")
        rc = lib.srtp_create(ptr, policy)
        if rc != 0:
            raise SrtpFailure("srtp_create", rc)
        global _live
        _live += 1
        # ffi.gc frees the session if close() is never called; close() zeroes the slot first.
        self._ptr = ffi.gc(ptr, _dealloc)
        #: The raw ``srtp_t`` for loops that call ``lib.srtp_protect`` themselves. None once closed.
        self.srtp: Any = ptr[0]
        #: The preallocated ``int *`` length slot the in-place methods reuse.
        self.len_p: Any = ffi.new("int *")
        self._rtp_room = profile.rtp_trailer_length
        self._rtcp_room = profile.rtcp_trailer_length
        self._scratch: Any = ffi.new("unsigned char[]", _SCRATCH_SIZE)

    @classmethod
    def outbound(cls, keys: SrtpKeys, **kwargs: Any) -> SrtpContext:
        return cls(keys.profile, keys.local_master, SrtpDirection.OUTBOUND, **kwargs)

    @classmethod
    def inbound(cls, keys: SrtpKeys, **kwargs: Any) -> SrtpContext:
        return cls(keys.profile, keys.remote_master, SrtpDirection.INBOUND, **kwargs)

    # -- in place, hot path ----------------------------------------------------------------------
    def protect_rtp(self, cbuf: Any, length: int) -> int:
        """Protect ``cbuf[:length]`` in place; new length, or ``-status`` on failure."""
        srtp = self.srtp
        if srtp is None:
            return -CONTEXT_CLOSED
        if length + self._rtp_room > len(cbuf):
            return -BUFFER_TOO_SMALL
        len_p = self.len_p
        len_p[0] = length
        rc: int = lib.srtp_protect(srtp, cbuf, len_p)
        return -rc if rc else int(len_p[0])

    def unprotect_rtp(self, cbuf: Any, length: int) -> int:
        """Verify and decrypt ``cbuf[:length]`` in place; new length, or ``-status``."""
        srtp = self.srtp
        if srtp is None:
            return -CONTEXT_CLOSED
        len_p = self.len_p
        len_p[0] = length
        rc: int = lib.srtp_unprotect(srtp, cbuf, len_p)
        return -rc if rc else int(len_p[0])

    def protect_rtcp(self, cbuf: Any, length: int) -> int:
        srtp = self.srtp
        if srtp is None:
            return -CONTEXT_CLOSED
        if length + self._rtcp_room > len(cbuf):
            return -BUFFER_TOO_SMALL
        len_p = self.len_p
        len_p[0] = length
        rc: int = lib.srtp_protect_rtcp(srtp, cbuf, len_p)
        return -rc if rc else int(len_p[0])

    def unprotect_rtcp(self, cbuf: Any, length: int) -> int:
        srtp = self.srtp
        if srtp is None:
            return -CONTEXT_CLOSED
        len_p = self.len_p
        len_p[0] = length
        rc: int = lib.srtp_unprotect_rtcp(srtp, cbuf, len_p)
        return -rc if rc else int(len_p[0])

    # -- bytes in, bytes out: cold path and tests ---------------------------------------------
    def protect_rtp_bytes(self, packet: bytes) -> bytes | None:
        """Protected copy of ``packet``, or None (reason in ``last_error``)."""
        return self._bytes(self.protect_rtp, packet, SRTP_MAX_TRAILER_LEN)

    def unprotect_rtp_bytes(self, packet: bytes) -> bytes | None:
        return self._bytes(self.unprotect_rtp, packet, 0)

    def protect_rtcp_bytes(self, packet: bytes) -> bytes | None:
        return self._bytes(self.protect_rtcp, packet, SRTCP_MAX_TRAILER_LEN)

    def unprotect_rtcp_bytes(self, packet: bytes) -> bytes | None:
        return self._bytes(self.unprotect_rtcp, packet, 0)

    def _bytes(self, op: Any, packet: bytes, room: int) -> bytes | None:
        n = len(packet)
        buf = self._scratch if n + room <= _SCRATCH_SIZE else ffi.new("unsigned char[]", n + room)
        ffi.memmove(buf, packet, n)
        rc: int = op(buf, n)
        if rc < 0:
            self.last_error = SrtpError.from_code(-rc)
            return None
        self.last_error = None
        return bytes(ffi.buffer(buf, rc))

    # -- streams and teardown ----------------------------------------------------------------------
    def remove_stream(self, ssrc: int) -> None:
        """Forget the per-SSRC state libsrtp cloned from the template (e.g. when a track ends)."""
        if self.srtp is None:
            return
        rc = lib.srtp_remove_stream(self.srtp, socket.htonl(ssrc))
        if rc != 0:
            raise SrtpFailure(f"srtp_remove_stream({ssrc})", rc)

    @property
    def closed(self) -> bool:
        return self.srtp is None

    def close(self) -> None:
        """Free the libsrtp session now; the methods then return ``-CONTEXT_CLOSED``."""
        if self.srtp is None:
            return
        self.srtp = None
        _dealloc(self._ptr)
