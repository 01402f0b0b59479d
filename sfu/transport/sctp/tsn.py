"""Serial number arithmetic (RFC 1982) for 32-bit TSNs and 16-bit SSNs."""

from __future__ import annotations

_HALF32 = 1 << 31
_HALF16 = 1 << 15


def tsn_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


def tsn_diff(a: int, b: int) -> int:
    """``a - b`` as a signed distance (a TSN ``a`` after ``b`` gives a positive number)."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= _HALF32 else d


def tsn_gt(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFFFFFF) < _HALF32


def tsn_gte(a: int, b: int) -> bool:
    return a == b or tsn_gt(a, b)


def ssn_gt(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFF) < _HALF16
