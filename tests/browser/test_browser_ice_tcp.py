"""Chromium over ICE-TCP: in a private network namespace where nftables drops every UDP packet
the browser (run as ``nobody``) sends, it publishes and watches through the demo page over the
node's passive TCP candidate, and two participants of ``room.html`` (the SDK, WebSocket
signaling) see each other; with ICE-TCP turned off the same browser cannot connect at all.

The namespace runs ``tests/browser/ice_tcp_netns.py`` (node and browser together); the node's
own UDP, its self-check, is root's and keeps working."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.browser.demo_page import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace and nftables need root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("unshare", "nft", "setpriv", "ip")), reason="needs unshare, nft (nftables), setpriv, ip"
    ),
]
ROOT = Path(__file__).resolve().parents[2]


def in_namespace(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.browser.ice_tcp_netns", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return result


def test_chromium_publishes_and_watches_over_ice_tcp_when_udp_is_dropped() -> None:
    r = in_namespace()
    assert (r["publish"], r["watch"]) == ("connected", "connected"), r
    assert r["frames"] > 30, r
    assert r["transports"] == {"alice": ["tcp"], "alice-viewer": ["tcp"]}, r
    assert r["udp_dropped"] > 0, r  # the browser did try UDP, and nftables dropped it
    assert r["self_check_ok"] and r["page_errors"] == [], r


def test_chromium_sdk_participants_see_each_other_over_ice_tcp() -> None:
    r = in_namespace("--sdk")
    assert r["frames"] >= 30, r
    assert r["transports"] == {"ann": ["tcp", "tcp"], "ben": ["tcp", "tcp"]}, r  # publisher and subscriber pcs
    assert r["udp_dropped"] > 0 and r["self_check_ok"] and r["page_errors"] == [], r


def test_without_ice_tcp_the_same_browser_gets_nothing() -> None:
    r = in_namespace("--no-ice-tcp")
    assert r["publish"] != "connected" and r["frames"] == 0, r
    assert r["udp_dropped"] > 0, r
