"""Process helpers shared by the bench CLIs and the harness: CPU time of a pid, JSON/READY lines."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

READY = "READY"


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every live thread of ``pid``.

    Prefers ``/proc/<pid>/task/*/schedstat`` (nanoseconds, exact) and falls back to the tick-based
    utime+stime of ``/proc/<pid>/stat``.  Raises ProcessLookupError once the process is gone.
    """
    task_dir = Path(f"/proc/{pid}/task")
    try:
        total_ns = 0
        for task in task_dir.iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended between listing and reading
        return total_ns / 1e9
    except FileNotFoundError:
        pass
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def announce_ready(value: str) -> None:
    """The first stdout line of every bench process: ``READY <port[,port...]>``."""
    sys.stdout.write(f"{READY} {value}\n")
    sys.stdout.flush()


def emit_json(stats: dict[str, Any]) -> None:
    """The last stdout line of every bench process: its stats as one JSON object."""
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()


class Deadline:
    """A wall-clock bound read from time.monotonic (CLIs only; logic takes ``now`` as an argument)."""

    def __init__(self, seconds: float) -> None:
        if not 0 < seconds <= 3600:
            raise ValueError(f"seconds must be in (0, 3600], got {seconds}")
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.at
