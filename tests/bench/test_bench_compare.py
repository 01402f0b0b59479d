"""Smoke test of the harness: real processes, real UDP on 127.0.0.1, real SRTP, ~1 s per target.

Fan-out 2, a few hundred packets paced, every packet decrypted and checked at every sink.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cbuild import build_cforward, compiler
from bench.compare import Workload, compare, default_targets
from bench.targets import REPO_ROOT

SMOKE = Workload(fanout=2, seconds=1.0, in_pps=400.0, verify_every=1, drain_ms=300)

needs_gcc = pytest.mark.skipif(compiler() is None, reason="gcc is not installed: the C baseline is built at run time")


def _check_run(run: dict[str, Any], work: Workload) -> None:
    paced = run["paced_run"]
    assert paced["sent"] == int(work.in_pps * work.seconds)
    assert paced["delivered"] == paced["sent"] * work.fanout  # every packet at every sink
    assert paced["verified"] == paced["delivered"]  # ... decrypted and byte-for-byte intact
    assert paced["corrupt"] == 0 and paced["rejected_at_sinks"] == 0
    assert run["loss"] < 0.01
    assert run["out_pps_per_cpu"] > 1000
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] < 500


@needs_gcc
def test_c_forwarder_builds_and_is_cached() -> None:
    exe = build_cforward()
    assert exe.is_file() and exe.stat().st_mode & 0o111
    assert build_cforward() == exe


@needs_gcc
def test_c_and_python_baselines_deliver_intact() -> None:
    result = compare(default_targets(["c", "baseline"]), SMOKE, mode="paced")
    for name in ("c", "baseline"):
        _check_run(result["targets"][name], SMOKE)
    assert result["c_out_pps_per_cpu"] > 0 and result["baseline_out_pps_per_cpu"] > 0
    assert result["baseline_vs_c"] > 0
    assert result["node_out_pps_per_cpu"] is None and result["ratio"] is None and result["ratio_vs_c"] is None
    assert result["primary"] == "baseline" and result["loss"] == result["targets"]["baseline"]["loss"]


def test_python_baseline_plain_io() -> None:
    result = compare(default_targets(["baseline_plain"]), SMOKE, mode="paced")
    _check_run(result["targets"]["baseline_plain"], SMOKE)


@needs_gcc
def test_cli_writes_the_contract_fields(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "--fanout", "2", "--seconds", "0.5", "--mode", "paced",
         "--in-pps", "400", "--targets", "c,baseline", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    for field in ("node_out_pps_per_cpu", "baseline_out_pps_per_cpu", "c_out_pps_per_cpu", "ratio",
                  "ratio_vs_c", "loss", "latency_ms"):
        assert field in doc
    assert set(doc["latency_ms"]) == {"p50", "p99", "p999"}
    assert doc["c_out_pps_per_cpu"] > 0 and doc["baseline_out_pps_per_cpu"] > 0
    assert 0 <= doc["loss"] < 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fanout": 0}, "fanout"), ({"fanout": 2, "seconds": 0}, "seconds"), ({"fanout": 2, "in_pps": -1}, "in_pps")],
)
def test_workload_bounds(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Workload(**kwargs)  # type: ignore[arg-type]


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        default_targets(["c", "nope"])


def test_node_is_a_known_target() -> None:
    assert [t.name for t in default_targets(["node", "baseline", "c"])] == ["node", "baseline", "c"]
