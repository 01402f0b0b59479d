"""Firefox publishes simulcast (issue 12): headless Debian ``firefox-esr`` (no driver) on a page that
publishes three encodings with ``whip.js`` (f full size, h half, q quarter).  Firefox lists them
high first in ``a=simulcast`` (f;h;q) without a=rid restrictions; the node must rank them by the
sizes in their keyframes, so an aiortc WHEP viewer decodes the largest layer by default, the
smallest after ``{"rid": "q"}``, the middle one after ``{"rid": "h"}`` and the largest again after
``null``.  (Before, the offer's order was taken as low to high and every viewer got q.)

It runs ``tests/browser/firefox_netns.py`` in a private network namespace (Firefox gathers no
candidate without a default route there: the script adds one on ``lo``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.browser.firefox_netns import FIREFOX

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not FIREFOX.exists(), reason=f"{FIREFOX} is missing: apt-get install firefox-esr"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("unshare", "ip")), reason="needs unshare and ip"),
]
ROOT = Path(__file__).resolve().parents[2]


def in_namespace() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.browser.firefox_netns"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_firefox_simulcast_layers_are_ranked_by_their_size() -> None:
    r = in_namespace()
    firefox = r["firefox"]
    assert firefox.get("state") == "connected" and firefox.get("simulcast") == "f;h;q", r
    sent = {e["rid"]: (e["frameWidth"], e["frameHeight"]) for e in firefox["encodings"]}
    # Firefox's fake camera, scaled down by 2 per layer; the node read the same sizes
    full = sent["f"]
    assert sent == {"f": full, "h": (full[0] // 2, full[1] // 2), "q": (full[0] // 4, full[1] // 4)}, r
    assert {rid: tuple(size) for rid, size in r["sizes"].items()} == sent, r
    assert r["offer_order"] == ["f", "h", "q"] and r["ranked"] == ["q", "h", "f"], r
    assert [x["width"] for x in r["layers_after_q"]] == [full[0] // 4, full[0] // 2, full[0]], r
    assert r["default_widths"] == [full[0]], r
    assert (
        r["widths_q"] == [full[0] // 4] and r["widths_h"] == [full[0] // 2] and r["widths_None"] == [full[0]]
    ), r
