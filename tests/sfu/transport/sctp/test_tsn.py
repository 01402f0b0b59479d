from __future__ import annotations

import pytest

from sfu.transport.sctp.tsn import ssn_gt, tsn_add, tsn_diff, tsn_gt, tsn_gte

CASES = [
    # a, b, a > b
    (1, 0, True),
    (0, 0xFFFFFFFF, True),  # wraparound
    (5, 0xFFFFFFF0, True),
    (0xFFFFFFF0, 5, False),
    (0x80000000, 0, False),  # exactly half: not after
    (0x7FFFFFFF, 0, True),
    (3, 3, False),
]


@pytest.mark.parametrize(("a", "b", "after"), CASES)
def test_tsn_order(a: int, b: int, after: bool) -> None:
    assert tsn_gt(a, b) is after
    assert tsn_gte(a, b) is (after or a == b)


def test_add_and_diff_wrap() -> None:
    assert tsn_add(0xFFFFFFFF, 1) == 0
    assert tsn_add(0, -1) == 0xFFFFFFFF
    assert tsn_diff(2, 0xFFFFFFFE) == 4
    assert tsn_diff(0xFFFFFFFE, 2) == -4


def test_ssn_wrap() -> None:
    assert ssn_gt(0, 0xFFFF)
    assert not ssn_gt(0xFFFF, 0)
