"""The run's outputs besides JSON: a table for stdout and a PNG plot (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.fmt import num

COLUMNS = ("load", "sessions", "fwd pps", "rx pps", "loss", "p50 ms", "p99 ms", "p999 ms", "node CPU",
           "node RSS MB", "out/node CPU-s", "gen CPU", "gen/node")


def _fmt(value: Any, kind: str = "") -> str:
    return num(value, kind)


def table(doc: dict[str, Any]) -> str:
    rows = []
    for s in doc["steps"]:
        if "error" in s:
            rows.append([_fmt(s["load"]), _fmt(s.get("sessions")), "error: " + s["error"][:80]])
            continue
        lat = s["latency_ms"]
        rows.append([
            _fmt(s["load"]) + ("" if s.get("clean", True) else " *"), f"{s['sessions_up']}/{s['sessions']}",
            _fmt(s["forwarded_pps"]), _fmt(s["received_pps"]), _fmt(s["loss"], "loss"),
            _fmt(lat["p50"]), _fmt(lat["p99"]), _fmt(lat["p999"]), _fmt(s["node_cpu_pct"], "pct"),
            _fmt(s["node_rss_mb"]), _fmt(s["out_pps_per_node_cpu"]), _fmt(s["generator_cpu_pct"], "pct"),
            _fmt(s["generator_vs_node_cpu"]),
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows if i < len(r))) for i, c in enumerate(COLUMNS)]
    lines = [f"scenario {doc['scenario']}: {doc.get('description', '')}".rstrip(": "),
             "  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    last = next((s for s in reversed(doc["steps"]) if "nodes" in s), None)
    if last is not None and (len(last["nodes"]) > 1 or any(len(n.get("processes", ())) > 1 for n in last["nodes"])):
        lines.append(f"per node (step {last['step']}):")
        for n in last["nodes"]:
            lines.append(f"  {n['url']}: {n['rooms']} rooms, {n['sessions']} sessions, forwarded {n['forwarded']:,}, "
                         f"CPU {_fmt(n['cpu_pct'], 'pct')}, RSS {_fmt(n['rss_mb'])} MB")
            for p in n.get("processes", ()):
                lines.append(f"    {p['role']} (pid {p['pid']}): CPU {_fmt(p['cpu_pct'], 'pct')}, "
                             f"RSS {_fmt(p['rss_mb'])} MB, forwarded {_fmt(p['forwarded'])}")
    ramp = doc.get("ramp")
    if ramp:
        lines.append(f"ramp over {ramp['vary']}: highest clean step {ramp['highest_clean']}, stopped by "
                     f"{ramp['stopped_by']} (loss <= {ramp['max_loss']}, p99 <= {ramp['max_p99_ms']} ms; "
                     "* = not clean)")
    return "\n".join(lines)


#: What ``--plot`` says when matplotlib is missing (scripts/dev.sh installs the package without it).
PLOT_MISSING = ("--plot needs matplotlib, which is in the bench extra: pip install -e '.[bench]' "
                "(in this repository: .venv/bin/python -m pip install -e '.[bench]')")


def can_plot() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules
        return False


def _clean(ys: list[Any]) -> list[float]:
    return [float("nan") if y is None else float(y) for y in ys]


def _headroom(series: dict[str, list[Any]]) -> float:
    top = max((y for ys in series.values() for y in _clean(ys) if y == y), default=0.0)
    return top * 1.4 if top > 0 else 1.0


def plot(doc: dict[str, Any], path: str | Path) -> None:
    """Throughput and latency: against the load per step for a ramp, against time for one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in doc["steps"] if "error" not in s]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    if len(steps) > 1 or doc.get("ramp"):
        x = [s["load"] for s in steps]
        xlabel = f"load ({doc['ramp']['vary'] if doc.get('ramp') else 'sessions'})"
        series = {
            "forwarded pps (node)": [s["forwarded_pps"] for s in steps],
            "received pps (generator)": [s["received_pps"] for s in steps],
            "expected pps": [s["expected_out_pps"] for s in steps],
        }
        lat = {q: [s["latency_ms"][q] for s in steps] for q in ("p50", "p99", "p999")}
        cpu = {"node CPU %": [s["node_cpu_pct"] for s in steps],
               "generator CPU %": [s["generator_cpu_pct"] for s in steps]}
        marker = "o-"
    else:
        tl = steps[0]["timeline"] if steps else []
        x = [p["t"] for p in tl]
        xlabel = "seconds"
        series = {"forwarded pps (node)": [p["forwarded_pps"] for p in tl],
                  "received pps (generator)": [p["received_pps"] for p in tl]}
        lat = {"p99": [p["p99_ms"] for p in tl]}
        cpu = {"node CPU %": [p["node_cpu_pct"] for p in tl], "generator CPU %": [p["generator_cpu_pct"] for p in tl]}
        marker = "o-" if len(x) <= 30 else ".-"  # a short run's few points stay visible
    for name, ys in series.items():
        top.plot(x, _clean(ys), marker, label=name)
    top.set_ylabel("packets/s")
    top.grid(True, alpha=0.3)
    twin = top.twinx()
    for name, ys in cpu.items():
        twin.plot(x, _clean(ys), "--", alpha=0.6, label=name)
    twin.set_ylabel("CPU %")
    handles = top.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    labels = top.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    top.legend(handles, labels, loc="upper left", fontsize=8)
    for name, ys in lat.items():
        bottom.plot(x, _clean(ys), marker, label=f"{name} latency")
    bottom.set_ylabel("one-way latency, ms")
    bottom.set_xlabel(xlabel)
    positive = [y for ys in lat.values() for y in _clean(ys) if y > 0]
    if positive and max(positive) > 10 * min(positive):  # log only when it spreads over a decade
        bottom.set_yscale("log")
    else:
        bottom.set_ylim(0, _headroom(lat))
    top.set_ylim(0, _headroom(series))  # room above the lines for the legend
    twin.set_ylim(0, _headroom(cpu))
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    if not x:
        top.text(0.5, 0.5, "no samples: the run was shorter than one sampling interval", ha="center",
                 va="center", transform=top.transAxes)
    title = f"{doc['scenario']}: throughput and latency"
    if len(steps) == 1:  # one run: its headline figures, formatted as in the table
        s = steps[0]
        title += (f"\n{_fmt(s['received_pps'])} pps received, loss {_fmt(s['loss'], 'loss')}, "
                  f"p99 {_fmt(s['latency_ms']['p99'])} ms, node CPU {_fmt(s['node_cpu_pct'], 'pct')}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
