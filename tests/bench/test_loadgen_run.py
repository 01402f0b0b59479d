"""``python -m bench run`` end to end: a spawned node, generator processes, real ICE-lite/DTLS-SRTP sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.loadgen.runner import is_clean

SMALL = """\
name = "small"
seconds = 2.0
generators = 2

[rooms]
count = 2
publishers = 2
subscribers = 2

[video]
bitrate_kbps = 300
"""

STEP_FIELDS = {
    "rooms", "publishers", "receiving_sessions", "sessions", "sessions_up", "setup_s", "seconds", "wall_s",
    "generators", "offered_pps", "expected_out_pps", "sent", "sent_pps", "expected_deliveries", "received",
    "received_pps", "forwarded", "forwarded_pps", "loss", "latency_ms", "verified", "corrupt", "rejected", "gaps",
    "missing_at_gaps", "late", "node_cpu_s", "node_cpu_pct", "node_rss_mb", "out_pps_per_node_cpu",
    "generator_cpu_s", "generator_cpu_pct", "generator_vs_node_cpu", "sessions_deleted", "timeline", "step", "load",
}


def _run(tmp_path: Path, text: str, *extra: str) -> dict[str, Any]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    out = tmp_path / "result.json"
    assert main(["run", str(scenario), "--json", str(out), *extra]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_two_rooms_two_publishers_two_receivers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "plot.png"
    doc = _run(tmp_path, SMALL, "--plot", str(png))
    (step,) = doc["steps"]
    assert STEP_FIELDS <= set(step)
    assert step["sessions"] == step["sessions_up"] == 2 * (2 + 2 * 2)  # WHIP + one WHEP per (receiver, publisher)
    assert step["sessions_deleted"] == step["sessions"]
    # 4 publishers x (audio 50 pps + video 2 packets x 30 fps) for 2 s, each to 2 receivers
    assert step["sent"] == pytest.approx(4 * 110 * 2, rel=0.05)
    assert step["expected_deliveries"] == 2 * step["sent"]
    assert step["loss"] <= 0.002  # loopback: nothing should go missing
    assert step["received"] >= step["expected_deliveries"] * 0.998
    assert step["verified"] == step["received"]  # every packet decrypted and checked byte for byte
    assert step["corrupt"] == step["rejected"] == 0
    assert step["forwarded"] >= step["received"]
    lat = step["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] < 1000
    assert step["node_cpu_s"] > 0 and step["node_rss_mb"] > 10 and step["generator_cpu_s"] > 0
    assert step["out_pps_per_node_cpu"] > 0 and step["generator_vs_node_cpu"] > 0
    assert len(step["timeline"]) >= 2 and all("p99_ms" in p for p in step["timeline"])
    for key in ("forwarded_pps", "received_pps", "out_pps_per_node_cpu", "loss", "latency_ms", "node_cpu_pct",
                "node_rss_mb", "generator_cpu_pct", "generator_vs_node_cpu"):
        assert doc[key] == step[key]
    assert doc["target"]["mode"] == "spawned"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[0] > 100
    captured = capsys.readouterr()
    assert "sessions 12/12" in captured.err  # the progress line
    assert "loss" in captured.out and "p99 ms" in captured.out  # the table


RAMP = """\
name = "ramp"
[rooms]
subscribers = 1
[video]
bitrate_kbps = 100
[ramp]
vary = "subscribers"
start = 1
step = 1
max = 2
step_seconds = 1.0
max_p99_ms = {p99}
max_loss = 0.2
"""


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_ramp_stops_at_its_max(tmp_path: Path) -> None:
    doc = _run(tmp_path, RAMP.format(p99=5000.0), "--quiet")  # lenient: the shared box may be busy
    assert [s["load"] for s in doc["steps"]] == [1, 2]
    assert [s["receiving_sessions"] for s in doc["steps"]] == [1, 2]
    assert all(s["clean"] for s in doc["steps"])
    assert doc["ramp"]["stopped_by"] == "max" and doc["ramp"]["highest_clean"] == 2
    png = tmp_path / "ramp.png"
    from bench.loadgen.report import plot

    plot(doc, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_ramp_stops_at_the_first_step_over_its_threshold(tmp_path: Path) -> None:
    doc = _run(tmp_path, RAMP.format(p99=0.01), "--quiet")  # nothing crosses the node within 10 us
    assert len(doc["steps"]) == 1 and doc["steps"][0]["clean"] is False
    assert doc["ramp"]["stopped_by"] == "p99" and doc["ramp"]["highest_clean"] is None


def _step(**over: Any) -> dict[str, Any]:
    base = {"sessions": 4, "sessions_up": 4, "corrupt": 0, "rejected": 0, "loss": 0.0, "latency_ms": {"p99": 2.0}}
    return base | over


@pytest.mark.parametrize(
    ("step", "why"),
    [
        (_step(), None),
        (_step(loss=0.02), "loss"),
        (_step(loss=None), "loss"),
        (_step(latency_ms={"p99": 80.0}), "p99"),
        (_step(sessions_up=3), "sessions"),
        (_step(corrupt=1), "corrupt"),
        ({"error": "refused", "sessions": 4}, "error"),
    ],
)
def test_is_clean(step: dict[str, Any], why: str | None) -> None:
    assert is_clean(step, max_loss=0.01, max_p99_ms=50.0) == why


def test_run_refuses_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[rooms]\nsubscribers = 1\nrooms = 3\n')
    assert main(["run", str(bad)]) == 2
    assert "unknown key 'rooms'" in capsys.readouterr().err


WORKERS = """\
name = "two-workers"
seconds = 2.0

[rooms]
count = 2
publishers = 1
subscribers = 2

[video]
bitrate_kbps = 300
"""


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_spawned_multi_worker_node_is_measured_over_all_its_processes(tmp_path: Path) -> None:
    doc = _run(tmp_path, WORKERS, "--spawn-node", "--workers", "2", "--quiet")
    (step,) = doc["steps"]
    assert doc["target"]["workers"] == 2
    assert step["sessions_up"] == step["sessions"] == 2 * (1 + 2)
    assert step["loss"] <= 0.002 and step["corrupt"] == step["rejected"] == 0
    assert step["verified"] == step["received"] > 0
    (node,) = step["nodes"]
    procs = node["processes"]
    assert [p["role"] for p in procs] == ["front", "worker 0", "worker 1"]
    assert len({p["pid"] for p in procs}) == 3
    # the front pins one room to each worker: both forward, and between them all the node forwarded
    assert all(p["forwarded"] > 0 for p in procs[1:]), procs
    assert sum(p["forwarded"] for p in procs[1:]) == node["forwarded"] == step["forwarded"]
    assert step["forwarded"] >= step["received"]
    assert all(p["cpu_s"] > 0 and p["rss_mb"] > 10 for p in procs[1:])
    # node CPU and RSS are the front's plus every worker's
    assert step["node_cpu_s"] == pytest.approx(sum(p["cpu_s"] for p in procs), abs=1e-3)
    assert step["node_rss_mb"] == pytest.approx(sum(p["rss_mb"] for p in procs), abs=0.2)
    assert node["rooms"] == 2 and node["sessions"] == step["sessions"]


def test_workers_is_for_a_spawned_node_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(WORKERS)
    assert main(["run", str(scenario), "--node-url", "http://127.0.0.1:9", "--workers", "2"]) == 2
    assert "--spawn-node" in capsys.readouterr().err
