"""In-place SRTP through the libsrtp that pylibsrtp bundles (its own cffi ``lib``), no copies.

``Key`` is the 30-byte AES_CM_128_HMAC_SHA1_80 master key + salt; ``InplaceSession`` protects or
unprotects a packet that already sits in a C buffer and returns the new length.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi, lib

KEY_LEN = 30  # 16-byte master key + 14-byte master salt
#: Room libsrtp may append when protecting (auth tag + MKI), as pylibsrtp reserves it.
SRTP_MAX_TRAILER = 16 + 128
#: Every packet slot in the bench is this big: a 1500-byte MTU datagram plus trailer room.
SLOT_SIZE = 1500 + SRTP_MAX_TRAILER


@dataclass(frozen=True)
class Key:
    """An SRTP master key + salt for AES_CM_128_HMAC_SHA1_80."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise ValueError(f"SRTP key must be {KEY_LEN} bytes (key + salt), got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> Key:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"SRTP key is not hex: {text!r}") from exc
        return cls(raw)

    @classmethod
    def random(cls) -> Key:
        return cls(secrets.token_bytes(KEY_LEN))

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return self.raw.hex()


class SrtpError(RuntimeError):
    """A libsrtp call returned something other than srtp_err_status_ok."""


class InplaceSession:
    """One libsrtp session with one wildcard stream, used in place on C buffers."""

    def __init__(self, key: Key, outbound: bool) -> None:
        policy = ffi.new("srtp_policy_t *")
        profile = lib.srtp_profile_aes128_cm_sha1_80
        _check(lib.srtp_crypto_policy_set_from_profile_for_rtp(ffi.addressof(policy.rtp), profile))
        _check(lib.srtp_crypto_policy_set_from_profile_for_rtcp(ffi.addressof(policy.rtcp), profile))
        self._key = ffi.new("unsigned char[]", bytes(key))
        policy.key = self._key
        policy.ssrc.type = lib.ssrc_any_outbound if outbound else lib.ssrc_any_inbound
        policy.window_size = 1024
        policy.allow_repeat_tx = 0
        holder = ffi.new("srtp_t *")
        _check(lib.srtp_create(holder, policy))
        self.ctx: Any = holder[0]
        self._holder = holder
        self._len = ffi.new("int *")
        #: the in/out length cell a hot loop passes to ``lib.srtp_protect``/``srtp_unprotect`` itself
        self.length_p: Any = self._len

    def protect(self, ptr: Any, length: int) -> int:
        """SRTP-protect the RTP packet of ``length`` bytes at ``ptr``; returns the new length."""
        self._len[0] = length
        _check(lib.srtp_protect(self.ctx, ptr, self._len))
        return int(self._len[0])

    def unprotect(self, ptr: Any, length: int) -> int:
        """Verify and decrypt the SRTP packet at ``ptr``; returns the RTP length or -1 if rejected."""
        self._len[0] = length
        if lib.srtp_unprotect(self.ctx, ptr, self._len) != lib.srtp_err_status_ok:
            return -1
        return int(self._len[0])

    def close(self) -> None:
        if self.ctx != ffi.NULL:
            lib.srtp_dealloc(self.ctx)
            self.ctx = ffi.NULL

    def __del__(self) -> None:
        self.close()


def _check(rc: int) -> None:
    if rc != lib.srtp_err_status_ok:
        raise SrtpError(f"libsrtp error {rc}")


def binding_path() -> str:
    """Path of the pylibsrtp extension that statically contains libsrtp (and OpenSSL's AES)."""
    path = os.path.join(os.path.dirname(pylibsrtp.__file__), "_binding.abi3.so")
    if not os.path.exists(path):
        raise FileNotFoundError(f"pylibsrtp binding not found at {path}")
    return path


@dataclass(frozen=True)
class PolicyLayout:
    """Where libsrtp's ``srtp_policy_t`` keeps its fields, read from pylibsrtp's own cdef."""

    size: int
    ssrc_type: int
    ssrc_value: int
    rtp: int
    rtcp: int
    key: int
    window_size: int
    allow_repeat_tx: int
    crypto_policy_size: int
    ssrc_any_inbound: int
    ssrc_any_outbound: int
    profile_aes128_cm_sha1_80: int

    @classmethod
    def from_binding(cls) -> PolicyLayout:
        return cls(
            size=ffi.sizeof("srtp_policy_t"),
            ssrc_type=ffi.offsetof("srtp_policy_t", "ssrc") + ffi.offsetof("srtp_ssrc_t", "type"),
            ssrc_value=ffi.offsetof("srtp_policy_t", "ssrc") + ffi.offsetof("srtp_ssrc_t", "value"),
            rtp=ffi.offsetof("srtp_policy_t", "rtp"),
            rtcp=ffi.offsetof("srtp_policy_t", "rtcp"),
            key=ffi.offsetof("srtp_policy_t", "key"),
            window_size=ffi.offsetof("srtp_policy_t", "window_size"),
            allow_repeat_tx=ffi.offsetof("srtp_policy_t", "allow_repeat_tx"),
            crypto_policy_size=ffi.sizeof("srtp_crypto_policy_t"),
            ssrc_any_inbound=int(lib.ssrc_any_inbound),
            ssrc_any_outbound=int(lib.ssrc_any_outbound),
            profile_aes128_cm_sha1_80=int(lib.srtp_profile_aes128_cm_sha1_80),
        )

    def defines(self) -> list[str]:
        """``-D`` flags for the C forwarder, so its idea of the struct is the binding's."""
        return [f"-DPOL_{name.upper()}={value}" for name, value in vars(self).items()]
