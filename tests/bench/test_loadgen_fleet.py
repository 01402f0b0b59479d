"""``python -m bench run --control-url``: a real control plane and two real nodes registered with it
(``tests.e2e.procs``), rooms placed by the control plane, every session's token and node from
``POST /v1/tokens``, and the result's per-node figures checked against what each node hosts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from tests.e2e.procs import DEV_KEY, Proc, Procs, call, wait_nodes_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NODE_IDS = ("lg-a", "lg-b")
#: few rooms per node, so that rooms (not the CPU noise of idle processes) drive placement
NODE_ENV = {"LEVELCHAT_SFU_MAX_ROOMS": "4"}
ROOMS = 4
SCENARIO = f"""\
name = "fleet"
seconds = 2.0
generators = 2

[rooms]
count = {ROOMS}
publishers = 1
subscribers = 2

[video]
bitrate_kbps = 300
"""


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Proc, dict[str, Proc]]]:
    procs = Procs(tmp_path)
    try:
        control = procs.control()
        await control.wait_healthy()
        nodes = {i: procs.node(i, control.url, env=NODE_ENV) for i in NODE_IDS}
        for node in nodes.values():
            await node.wait_healthy()
        await wait_nodes_state(control.url, NODE_IDS, "live", timeout_s=15)
        yield control, nodes
    finally:
        procs.stop_all()


async def test_a_scenario_through_the_control_plane_spreads_over_both_nodes(
        fleet: tuple[Proc, dict[str, Proc]], tmp_path: Path) -> None:
    control, nodes = fleet
    scenario = tmp_path / "fleet.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "fleet.json"
    code = await asyncio.to_thread(main, [
        "run", str(scenario), "--control-url", control.url, "--api-key", DEV_KEY.key_id,
        "--api-secret", DEV_KEY.secret, "--json", str(out), "--quiet"])
    assert code == 0, [n.tail() for n in nodes.values()]
    doc: dict[str, Any] = json.loads(out.read_text())
    (step,) = doc["steps"]
    assert doc["target"]["mode"] == "control"
    assert step["sessions_up"] == step["sessions"] == ROOMS * (1 + 2)
    assert step["sessions_deleted"] == step["sessions"]
    assert step["loss"] <= 0.002  # loopback: nothing should go missing
    assert step["verified"] == step["received"] >= step["expected_deliveries"] * 0.998
    assert step["corrupt"] == step["rejected"] == 0
    # the rooms went to both nodes, and the result says what each one carried
    per_node = {n["url"]: n for n in step["nodes"]}
    assert set(per_node) == {p.url for p in nodes.values()}, per_node
    assert sum(n["rooms"] for n in per_node.values()) == ROOMS
    assert sum(n["sessions"] for n in per_node.values()) == step["sessions"]
    for url, n in per_node.items():
        assert n["rooms"] >= 1 and n["sessions"] == 3 * n["rooms"], n
        assert n["forwarded"] >= 2 * n["rooms"] * 0.9 * step["sent"] / ROOMS, n  # its rooms' packets, to 2 receivers each
        assert n["cpu_s"] is not None and n["cpu_s"] > 0 and n["rss_mb"] is not None and n["rss_mb"] > 10
        # the node hosts exactly the rooms the result puts on it
        hosted = await call("GET", url + "/v1/rooms")
        assert hosted.status == 200, hosted.body
        assert sum(1 for r in hosted.body["rooms"] if r["room"].startswith("lg-s0-")) == n["rooms"], hosted.body
    assert step["node_cpu_s"] == pytest.approx(sum(n["cpu_s"] for n in per_node.values()), abs=1e-3)
    assert step["forwarded"] == sum(n["forwarded"] for n in per_node.values())
