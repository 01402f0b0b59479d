"""Chromium through a real coturn: in a private network namespace where nftables drops every UDP
packet the browser (run as ``nobody``) sends and the node offers no ICE-TCP, the demo page with
``iceTransportPolicy: "relay"`` publishes and watches through coturn over TURN/TCP (3478) and
over TURN/TLS on 443 with a self-signed certificate (Chromium started with
``--ignore-certificate-errors``), and with the default policy falls back to TURN/TLS by itself
after its UDP checks go unanswered; the node sees coturn's relayed addresses
as its peers.  Two participants of ``room.html`` (``levelchat.js``, relay policy) do the same
with the ICE servers of their ``join`` result.

The namespace runs ``tests/browser/turn_netns.py`` (coturn, node and browser together)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sfu.turn import credential_for
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.coturn import TURNSERVER

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
    pytest.mark.skipif(not shutil.which("turnserver"), reason=f"{TURNSERVER} is missing: apt-get install coturn"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace and nftables need root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("unshare", "nft", "setpriv", "ip")), reason="needs unshare, nft (nftables), setpriv, ip"
    ),
]
ROOT = Path(__file__).resolve().parents[2]


def in_namespace(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.browser.turn_netns", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return result


@pytest.mark.parametrize(
    ("flags", "protocol"),
    [(("--tcp",), "tcp"), (("--tls",), "tls"), (("--tls", "--all"), "tls")],
    ids=["turn-tcp-relay-policy", "turn-tls-443-relay-policy", "turn-tls-443-fallback"],
)
def test_chromium_publishes_and_watches_through_coturn_when_its_udp_is_dropped(flags: tuple[str, ...], protocol: str) -> None:
    r = in_namespace(*flags)
    assert (r["publish"], r["watch"]) == ("connected", "connected"), r
    assert r["frames"] > 30, r
    # the browser's selected pairs are relayed, over TCP or TLS to coturn
    assert sorted(r["candidate_types"]) == [["publish", "relay", protocol], ["watch", "relay", protocol]], r
    low, high = r["relay_ports"]
    assert set(r["peers"]) == {"alice", "alice-viewer"}, r
    for identity, addrs in r["peers"].items():
        (addr,) = addrs
        assert addr[0] == "127.0.0.1" and low <= addr[1] <= high, (identity, r)  # coturn's relayed address
    if "--all" in flags:
        assert r["udp_dropped"] > 0, r  # the browser did try its host UDP, and nftables dropped it
    assert r["credentials_issued"] >= 2 and r["page_errors"] == [], r


def test_sdk_participants_see_each_other_through_coturn_over_tls() -> None:
    """``levelchat.js`` with ``iceTransportPolicy: "relay"`` uses the join result's ice_servers:
    both participants' publisher and subscriber transports are coturn's relayed addresses."""
    r = in_namespace("--tls", "--sdk")
    assert r["frames"] >= 30, r
    low, high = r["relay_ports"]
    assert set(r["peers"]) == {"ann", "ben"}, r
    for identity, addrs in r["peers"].items():
        assert len(addrs) == 2, (identity, r)  # publisher and subscriber
        assert all(a[0] == "127.0.0.1" and low <= a[1] <= high for a in addrs), (identity, r)
    assert r["credentials_issued"] == 2 and r["page_errors"] == [], r  # one per join


_OPTIONS_JS = """
async ([room]) => {
  const { MediaSession, iceServersFromLinks, fetchIceServers } = await import("/static/whip.js");
  const { connect } = await import("/static/levelchat.js");
  const { mintDevToken } = await import("/static/devtoken.js");
  const all = ["room:join", "room:publish", "room:subscribe"];
  const token = await mintDevToken({ room, identity: "opt", scopes: all });
  const code = async (promise) => { try { await promise; return "resolved"; } catch (e) { return e.code ?? String(e); } };
  const stream = new MediaStream();
  const room1 = await connect(location.origin, await mintDevToken({ room, identity: "sdk", scopes: all }), { data: false });
  const out = {
    parsed: iceServersFromLinks(
      '<turn:h:1?transport=udp>; rel="ice-server"; username="7:a\\\\"b"; credential="c\\\\\\\\d="; credential-type="password", ' +
      '<https://example.com/>; rel="next", <turns:h:443?transport=tcp>; rel="ice-server"; username="u"; credential="p"'),
    fetched: await fetchIceServers(`/whip/${room}`, token),
    whipBadPolicy: await code(MediaSession.publish("", room, token, stream, null, { iceTransportPolicy: "bogus" })),
    whepBadPolicy: await code(MediaSession.watch("", room, "", token, null, { iceTransportPolicy: 7 })),
    sdkBadPolicy: await code(connect(location.origin, token, { iceTransportPolicy: "relay-only" })),
    sdkBadServers: await code(connect(location.origin, token, { iceServers: "turn:x" })),
    sdkConfig: room1.rtcConfig,
  };
  room1.leave?.();
  return out;
}
"""


async def test_the_pages_read_link_headers_and_refuse_a_bad_ice_transport_policy(node_factory: Any, browser: Any) -> None:
    """Without a namespace: ``whip.js`` parses ``Link`` headers (escapes, other rels skipped) and
    fetches the node's via ``OPTIONS``; ``whip.js`` and ``levelchat.js`` refuse an
    ``iceTransportPolicy`` other than "all" or "relay" (``config/invalid``); ``connect`` takes the
    join result's ``ice_servers``."""
    secret = "s" * 40
    urls = ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:443?transport=tcp"]
    node = await node_factory(turn_servers=[{"urls": urls, "secret": secret}])
    page = await DemoPage.open(browser, node.url)
    r = await page.page.evaluate(_OPTIONS_JS, ["turn-options"])
    assert r["parsed"] == [
        {"urls": "turn:h:1?transport=udp", "username": '7:a"b', "credential": "c\\d="},
        {"urls": "turns:h:443?transport=tcp", "username": "u", "credential": "p"},
    ], r
    assert [s["urls"] for s in r["fetched"]] == urls and all(s["username"].endswith(":opt") for s in r["fetched"]), r
    assert all(s["credential"] == credential_for(secret, s["username"]) for s in r["fetched"]), r
    assert (r["whipBadPolicy"], r["whepBadPolicy"], r["sdkBadPolicy"], r["sdkBadServers"]) == ("config/invalid",) * 4, r
    (ice,) = r["sdkConfig"]["iceServers"]
    assert ice["urls"] == urls and ice["username"].endswith(":sdk") and r["sdkConfig"]["iceTransportPolicy"] == "all", r
    assert node.turn_credentials_issued == 2, node.turn_credentials_issued  # OPTIONS and the one join
