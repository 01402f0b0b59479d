"""Summaries of py-spy's collapsed stacks (the profile run itself needs ptrace and is not tested)."""

from __future__ import annotations

import pytest

from bench.nodeprof import Hotspot, summarize

_RAW = """\
main (a.py:1);loop (a.py:5);forward (b.py:10);sendto (c.py:3) 6
main (a.py:1);loop (a.py:5);forward (b.py:11);protect (d.py:7) 3
main (a.py:1);loop (a.py:6) 1
not a stack line
"""


@pytest.mark.parametrize(
    ("rank", "index", "expected"),
    [
        ("own", 0, Hotspot("sendto (c.py)", 0.6)),
        ("own", 1, Hotspot("protect (d.py)", 0.3)),
        ("own", 2, Hotspot("loop (a.py)", 0.1)),
        ("incl", 0, Hotspot("main (a.py)", 1.0)),
        ("incl", 2, Hotspot("forward (b.py)", 0.9)),  # two lines of the same function count once each
    ],
)
def test_summarize_ranks_by_share(rank: str, index: int, expected: Hotspot) -> None:
    total, own, incl = summarize(_RAW)
    assert total == 10
    assert (own if rank == "own" else incl)[index] == expected


def test_summarize_empty() -> None:
    assert summarize("") == (0, [], [])
