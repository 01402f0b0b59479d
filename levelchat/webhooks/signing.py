"""``LevelChat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

A receiver checks it like this (the raw body, before any JSON parsing)::

    import hashlib, hmac, time

    def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        t, sig = parts.get("t", ""), parts.get("v1", "")
        if not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
            return False
        mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, sig)
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "LevelChat-Signature"
EVENT_ID_HEADER = "LevelChat-Event-Id"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, t: int, body: bytes) -> str:
    """The header value for ``body`` sent at unix time ``t``."""
    return f"t={t},v1={signature(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, now_s: float, tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within ``tolerance_s``."""
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    t, sig = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or len(t) > 12 or abs(now_s - int(t)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(t), body), sig)
