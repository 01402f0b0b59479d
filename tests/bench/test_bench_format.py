"""What a person reads from the bench: one number format for every command, ``compare``'s summary
table and progress lines (real runs of the Python baselines, ~1 s each), and ``--plot`` (a short
run's PNG; a clear message before any run when matplotlib is missing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.compare import Workload, compare, default_targets, summary, table
from bench.fmt import grid, num
from bench.loadgen.report import PLOT_MISSING, plot
from bench.loadgen.report import table as run_table
from bench.targets import REPO_ROOT

SHORT = Workload(fanout=2, seconds=0.5, in_pps=400.0, verify_every=1, drain_ms=300)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (None, "pps", "-"), (float("nan"), "ms", "-"), (123456.7, "pps", "123,457"), (0.7912, "ratio", "0.79x"),
        (0.0, "loss", "0%"), (0.00012, "loss", "0.012%"), (0.5, "loss", "50.000%"), (0.4123, "ms", "0.412"),
        (12.34, "ms", "12.3"), (3.1, "ms", "3.10"), (123.6, "ms", "124"), (1234.5, "ms", "1,234"), (0.0, "ms", "0"), (87.4, "pct", "87%"),
        (1.23456, "s", "1.235"), (1234, "", "1,234"), ("spawned", "", "spawned"),
    ],
)
def test_num(value: Any, kind: str, text: str) -> None:
    assert num(value, kind) == text


def test_num_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown number kind"):
        num(1.0, "percent")


def test_grid_aligns_columns() -> None:
    lines = grid(("target", "pps"), [["node", "1,000"], ["C", "20,000"]], left=1).splitlines()
    assert lines == ["target     pps", "------  ------", "node     1,000", "C       20,000"]


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return compare(default_targets(["baseline_plain", "baseline"]), SHORT, mode="paced")


def test_summary_shows_each_target_with_the_shared_format(result: dict[str, Any]) -> None:
    text = summary(result)
    lines = text.splitlines()
    assert lines[0].startswith("fan-out 2, 1200-byte packets, 0.5 s per run, mode paced")
    header = lines[1].split("  ")
    assert "out pps/CPU-s" in lines[1] and "p99 ms" in lines[1] and "loss" in lines[1]
    assert "vs C" not in lines[1] and "node vs it" not in lines[1]  # neither C nor the node ran
    assert header[0] == "target" and set(lines[2]) <= {"-", " "}
    rows = {line.split("  ")[0].strip(): line for line in lines[3:5]}
    assert set(rows) == {"bare Python, plain I/O", "bare Python"}
    for name, label in (("baseline_plain", "bare Python, plain I/O"), ("baseline", "bare Python")):
        run = result["targets"][name]
        assert num(run["out_pps_per_cpu"], "pps") in rows[label]
        assert num(run["loss"], "loss") in rows[label]
        assert num(run["latency_ms"]["p99"], "ms") in rows[label]
    assert len(lines) == 5  # no ratio line: none of node / baseline / C pairs ran


def test_sweep_table_uses_the_same_format(result: dict[str, Any]) -> None:
    text = table([result])
    assert "fan-out" in text.splitlines()[0]
    assert num(result["targets"]["baseline"]["out_pps_per_cpu"], "pps") in text
    assert num(400.0, "pps") in text  # the paced in-rate


def test_cli_prints_progress_on_stderr_and_the_summary_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    argv = [sys.executable, "-m", "bench", "compare", "--fanout", "2", "--seconds", "0.5", "--mode", "paced",
            "--in-pps", "400", "--targets", "baseline_plain,baseline"]
    proc = subprocess.run([*argv, "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] paced run, bare Python, plain I/O: fan-out 2, 400 in pps, 0.5 s ..." in proc.stderr
    assert "[2/2] paced run, bare Python:" in proc.stderr and "out pps per CPU-s" in proc.stderr
    assert "out pps/CPU-s" in proc.stdout and "bare Python" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"full result: {out}")
    doc = json.loads(out.read_text())
    assert num(doc["baseline_out_pps_per_cpu"], "pps") in proc.stdout
    quiet = subprocess.run([*argv, "--quiet", "--json", "-"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=90, check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["baseline_out_pps_per_cpu"] > 0  # stdout: JSON only
    assert "[1/2]" not in quiet.stderr and "out pps/CPU-s" in quiet.stderr  # the table moved to stderr


def _short_run(samples: int) -> dict[str, Any]:
    timeline = [{"t": 0.5 * (i + 1), "forwarded_pps": 800.0 + i, "received_pps": 790.0 + i, "p99_ms": 1.5 + i,
                 "node_cpu_pct": 12.0, "generator_cpu_pct": 20.0} for i in range(samples)]
    step = {"step": 0, "load": 4, "sessions": 4, "sessions_up": 4, "forwarded_pps": 800.0, "received_pps": 790.0,
            "loss": 0.00012, "latency_ms": {"p50": 0.8, "p99": 1.5, "p999": 2.5}, "node_cpu_pct": 12.0,
            "node_rss_mb": 60.0, "out_pps_per_node_cpu": 6600.0, "generator_cpu_pct": 20.0,
            "generator_vs_node_cpu": 1.7, "timeline": timeline}
    return {"scenario": "short", "description": "two samples", "steps": [step]}


@pytest.mark.parametrize("samples", [0, 1, 2])
def test_a_short_run_plots(tmp_path: Path, samples: int) -> None:
    png = tmp_path / "short.png"
    plot(_short_run(samples), png)
    import matplotlib.image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(str(png)).shape[:2] == (700, 800)
    assert "0.012%" in run_table(_short_run(samples))  # the run table shares the format


def test_plot_without_matplotlib_says_what_to_install_before_running(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from bench.__main__ import main; "
            f"sys.exit(main(['run', 'bench/scenarios/one-to-many-16.toml', '--plot', {str(tmp_path / 'x.png')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2
    assert PLOT_MISSING in proc.stderr and "'.[bench]'" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_workers_table_uses_the_same_format() -> None:
    from bench.workers import table as workers_table

    def run(*pps: float) -> dict[str, Any]:
        per = [{"worker": i, "rooms": 1, "forwarded": 160_000, "cpu_s": 1.2345, "out_pps_per_cpu": p}
               for i, p in enumerate(pps)]
        return {"per_worker": per, "front_cpu_s": 0.03, "loss": 0.0}

    result = {"runs": {"1": [run(103_562.4)], "2": [run(102_989.0, 101_471.0)]},
              "out_pps_per_cpu_per_worker": {"1": 103_562.4, "2": 102_230.0}, "ratio": 0.9871,
              "target_ratio": 0.9, "runs_ratio_min_max": [0.91, 1.28]}
    lines = workers_table(result).splitlines()
    assert "out pps/CPU-s" in lines[0] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 3 + 1  # header, rule, one row per worker per run, the summary
    assert lines[2].split() == ["1", "0", "0", "1", "160,000", "1.234", "103,562", "0.030", "0%"]
    assert lines[-1] == ("median out pps/CPU-s per worker: 1 workers 103,562, 2 workers 102,230; ratio 0.99x "
                         "(target >= 0.90x); run-to-run ratio range 0.91x to 1.28x")
