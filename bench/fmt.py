"""One way to write the bench's numbers, for every command's table and summary.

``num(value, kind)``: ``None`` is ``-``; ``pps`` a rate with thousands separators (``123,456``);
``ratio`` two decimals and an ``x`` (``0.79x``); ``loss`` a percentage with enough digits to show
one lost packet in a short run (``0.012%``, and ``0%`` when nothing was lost); ``ms`` three
significant digits (``0.412``, ``3.10``, ``12.3``; whole from 100: ``1,234``); ``pct`` a whole percentage (``87%``);
``s`` seconds with three decimals; a plain number: integers with separators, floats as ``ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KINDS = ("pps", "ratio", "loss", "ms", "pct", "s", "")


def num(value: Any, kind: str = "") -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown number kind {kind!r}; known: {KINDS}")
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value != value:  # NaN
        return "-"
    if kind == "pps":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "loss":
        return "0%" if value == 0 else f"{value:.3%}"
    if kind == "pct":
        return f"{value:.0f}%"
    if kind == "s":
        return f"{value:.3f}"
    if isinstance(value, int) and kind == "":
        return f"{value:,}"
    return _sig3(float(value))


def _sig3(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    return f"{value:#.3g}" if abs(value) >= 0.001 else f"{value:.1e}"  # '#': 3.10, not 3.1


def grid(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> str:
    """Columns right-aligned to their widest cell (the first ``left`` ones left-aligned)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
