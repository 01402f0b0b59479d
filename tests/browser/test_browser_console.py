"""The operator console (``levelchat/console``) driven in headless Chromium against a real control
plane and node (separate processes) with live aiortc publishers: the console shows the node and
the room with live quality, and each action, clicked in the page, has its effect seen through the
API (track muted, participant removed, room closed, node drained, node revoked); refusals are shown
with the problem's ``code``.

Screenshots go to ``$LEVELCHAT_SCREENSHOTS`` when set (``docs/`` for the documentation's), else to
the test's temporary folder."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from levelchat.errors import CATALOGUE
from tests.e2e.clients import WhipPublisher
from tests.e2e.procs import ADMIN_SCOPES, Proc, Procs, admin_token, call, wait_nodes_state

ROOM = "console-room"
NODE_ID = "sfu-console"
#: generous: the page refreshes every 3 s and the machine may be loaded
UI_TIMEOUT_MS = 20_000


@dataclass
class Cluster:
    control: Proc
    node: Proc


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    procs = Procs(tmp_path)
    try:
        control = procs.control(lease_s=3.0, heartbeat_s=0.5)
        await control.wait_healthy()
        node = procs.node(NODE_ID, control.url)
        await node.wait_healthy()
        await wait_nodes_state(control.url, [NODE_ID], "live", timeout_s=15)
        yield Cluster(control, node)
    finally:
        procs.stop_all()


def shots_dir(tmp_path: Path) -> Path:
    target = os.environ.get("LEVELCHAT_SCREENSHOTS")
    return Path(target) if target else tmp_path


async def participants(cluster: Cluster) -> dict[str, dict[str, Any]]:
    reply = await call("GET", f"{cluster.control.url}/v1/rooms/{ROOM}/participants")
    assert reply.status == 200, reply.body
    return {p["identity"]: p for p in reply.body["participants"]}


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/console")
    # the operator's token: the recording buttons need recording:write besides room:admin
    await page.get_by_label("Admin token").fill(admin_token(*ADMIN_SCOPES, "recording:write"))
    await page.get_by_role("button", name="Sign in").click()


async def shown_problem(page: Page) -> str:
    code = page.locator("#problem code")
    await expect(code).to_be_visible(timeout=UI_TIMEOUT_MS)
    return str(await code.get_attribute("data-code"))


async def test_console_shows_the_cluster_and_performs_each_action(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    shots = shots_dir(tmp_path)
    reply = await call("POST", cluster.control.url + "/v1/rooms", {"room": ROOM, "recording": True})
    assert reply.status == 201 and reply.body["node"]["id"] == NODE_ID, reply.body
    publishers = [
        WhipPublisher(cluster.node.url, ROOM, admin_token("room:join", "room:publish", room=ROOM, identity=who))
        for who in ("alice", "bob")
    ]
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        for pub in publishers:
            await pub.connect()
        await sign_in(page, cluster.control.url)
        # the token is kept for the tab, never in the URL
        assert "token" not in page.url and await page.evaluate("sessionStorage.length") == 1

        # the node, the room and its participants with live quality
        node_row = page.locator(f'tr[data-node="{NODE_ID}"]')
        await expect(node_row).to_contain_text("live", timeout=UI_TIMEOUT_MS)
        room = page.locator(f'section[data-room="{ROOM}"]')
        alice = room.locator('tr[data-identity="alice"]')
        await expect(alice).to_contain_text("udp", timeout=UI_TIMEOUT_MS)
        video = alice.locator("li", has_text="video")
        # a bit rate over 0 kbit/s once the page has listed the room twice
        await expect(video).to_contain_text(re.compile(r"video: [1-9]\d* kbit/s"), timeout=UI_TIMEOUT_MS)
        # the control plane's usage (participant-minutes of the period so far)
        await expect(page.locator("#usage")).to_contain_text("Participant-minutes", timeout=UI_TIMEOUT_MS)
        # a room's participants can be hidden and shown again
        await room.get_by_role("button", name=f"Hide participants of room {ROOM}").click()
        await expect(alice).to_have_count(0, timeout=UI_TIMEOUT_MS)
        await room.get_by_role("button", name=f"Show participants of room {ROOM}").click()
        await expect(alice).to_contain_text("udp", timeout=UI_TIMEOUT_MS)
        await page.screenshot(path=str(shots / "console-overview.png"), full_page=True)

        # mute alice's video from the page: the node stops forwarding it, the API says muted
        await video.get_by_role("button", name=re.compile("^Mute the video track")).click()
        await wait_for_api(lambda p: [t["muted"] for t in p["alice"]["tracks"] if t["kind"] == "video"] == [True],
                           cluster, "alice's video muted")
        await expect(video.locator(".muted")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await video.get_by_role("button", name=re.compile("^Unmute the video track")).click()
        await wait_for_api(lambda p: [t["muted"] for t in p["alice"]["tracks"] if t["kind"] == "video"] == [False],
                           cluster, "alice's video unmuted")
        await video.get_by_role("button", name=re.compile("^Mute the video track")).click()
        await wait_for_api(lambda p: [t["muted"] for t in p["alice"]["tracks"] if t["kind"] == "video"] == [True],
                           cluster, "alice's video muted again")
        await expect(video.locator(".muted")).to_be_visible(timeout=UI_TIMEOUT_MS)

        # recording, through the control plane to the room's node: started, then stopped
        await room.get_by_role("button", name=f"Start recording room {ROOM}").click()
        stop = room.get_by_role("button", name=f"Stop recording room {ROOM}")
        problem = page.locator("#problem code")
        await expect(stop).to_be_visible(timeout=UI_TIMEOUT_MS)
        await stop.click()
        await expect(room.get_by_role("button", name=f"Start recording room {ROOM}")).to_be_visible(timeout=UI_TIMEOUT_MS)

        # a test webhook: this control plane has no endpoint, so nobody takes it
        await page.get_by_label("Event").select_option("room_started")
        await page.get_by_role("button", name="Send a test event").click()
        await expect(problem).to_have_attribute("data-code", "no_valid_recipients", timeout=UI_TIMEOUT_MS)
        assert await shown_problem(page) in CATALOGUE
        await page.screenshot(path=str(shots / "console-problem.png"), full_page=True)

        # remove bob: his session ends at the node
        await room.get_by_role("button", name=f"Remove bob from room {ROOM}").click()
        await wait_for_api(lambda p: set(p) == {"alice"}, cluster, "bob removed")
        await expect(room.locator('tr[data-identity="bob"]')).to_have_count(0, timeout=UI_TIMEOUT_MS)

        # close the room: the node no longer lists it
        await room.get_by_role("button", name=f"Close room {ROOM}").click()
        await wait_until_async(lambda: room_listed(cluster), False, "the room closed")
        await expect(room).to_have_count(0, timeout=UI_TIMEOUT_MS)

        # drain the node: the control plane sees it draining (its next heartbeat)
        await node_row.get_by_role("button", name=f"Drain node {NODE_ID}").click()
        await wait_nodes_state(cluster.control.url, [NODE_ID], "draining", timeout_s=15)
        await expect(node_row.locator("td").nth(4)).to_have_text("yes", timeout=UI_TIMEOUT_MS)
        await page.screenshot(path=str(shots / "console-drained.png"), full_page=True)

        # revoke it
        await node_row.get_by_role("button", name=f"Revoke node {NODE_ID}").click()
        nodes = await wait_nodes_state(cluster.control.url, [NODE_ID], "revoked", timeout_s=15)
        assert nodes[NODE_ID]["revoked"] is True
        await expect(node_row.locator("td").nth(5)).to_have_text("yes", timeout=UI_TIMEOUT_MS)
    finally:
        await page.close()
        for pub in publishers:
            await pub.close()


async def wait_for_api(check: Any, cluster: Cluster, what: str, timeout_s: float = 10.0) -> None:
    async def ok() -> bool:
        return bool(check(await participants(cluster)))

    await wait_until_async(ok, True, what, timeout_s)


async def wait_until_async(probe: Any, expected: bool, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await probe() is not expected:
        assert loop.time() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.1)


async def room_listed(cluster: Cluster) -> bool:
    reply = await call("GET", f"{cluster.node.url}/v1/rooms")
    assert reply.status == 200, reply.body
    return any(r["room"] == ROOM for r in reply.body["rooms"])


async def test_lone_node_serves_the_console_and_drains_from_it(browser: Browser, tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    page = await browser.new_page()
    try:
        node = procs.node("lone", None)
        await node.wait_healthy()
        await sign_in(page, node.url)
        row = page.locator('tr[data-node="this node"]')
        await expect(page.locator("#server")).to_have_text("Node", timeout=UI_TIMEOUT_MS)
        await row.get_by_role("button", name="Drain this node").click()
        await wait_until_async(lambda: node_draining(node), True, "the lone node draining")
        await expect(row.get_by_role("button", name="Cancel drain of this node")).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert (await call("GET", node.url + "/v1/nodes")).status == 404  # what told the page it is alone
    finally:
        await page.close()
        procs.stop_all()


async def node_draining(node: Proc) -> bool:
    reply = await call("GET", f"{node.url}/v1/node/drain")
    assert reply.status == 200, reply.body
    return bool(reply.body["draining"])
