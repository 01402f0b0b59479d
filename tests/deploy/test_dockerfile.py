"""Dockerfile, statically (no Docker engine here): it installs this package the way the scripts
do, with extras that exist, runs as a non-root user, has a HEALTHCHECK on the node's /healthz,
and exposes the ports the configurations default to."""

from __future__ import annotations

import re
import shlex

from control.config import ControlConfig
from sfu.config import NodeConfig
from tests.deploy.support import REPO, pyproject

Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out: list[Instruction] = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage() -> list[Instruction]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def pip_targets(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["pip", "install"], command
    return [w for w in words[2:] if not w.startswith("-") and not w.startswith("/")]


def test_installs_this_package_with_extras_that_exist() -> None:
    runs = [rest for op, rest in instructions() if op == "RUN" and rest.startswith("pip install")]
    assert len(runs) == 1, runs
    (target,) = pip_targets(runs[0])
    m = re.fullmatch(r"\.(?:\[([a-z0-9,_-]+)\])?", target)
    assert m is not None, target
    extras = set(m.group(1).split(",")) if m.group(1) else set()
    assert extras <= set(pyproject()["project"]["optional-dependencies"]), extras
    assert "redis" in extras  # compose and Kubernetes run the control plane on Redis
    # the scripts the README points at install the same project directory
    for script in ("dev.sh", "test.sh"):
        text = (REPO / "scripts" / script).read_text()
        assert re.search(r"pip install (-q )?-e \"?\.(\[[a-z,]+\])?\"?", text), script


def test_copies_every_package_pyproject_builds() -> None:
    copied = {rest.split()[0] for op, rest in instructions() if op == "COPY" and "--from" not in rest}
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        assert pattern.rstrip("*") in copied, pattern
    assert "pyproject.toml" in " ".join(rest for op, rest in instructions() if op == "COPY")


def test_python_version_matches_requires_python() -> None:
    froms = [rest for op, rest in instructions() if op == "FROM"]
    needed = pyproject()["project"]["requires-python"].removeprefix(">=")
    for image in froms:
        m = re.match(r"python:(\d+\.\d+)", image)
        assert m is not None and tuple(map(int, m.group(1).split("."))) >= tuple(map(int, needed.split("."))), image


def test_runs_as_a_created_non_root_user() -> None:
    stage = final_stage()
    users = [rest for op, rest in stage if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert any(op == "RUN" and "useradd" in rest and rest.rstrip().endswith(users[-1]) for op, rest in stage)


def test_healthcheck_defaults_to_the_node_healthz() -> None:
    stage = final_stage()
    checks = [rest for op, rest in stage if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0]
    env = " ".join(rest for op, rest in stage if op == "ENV")
    m = re.search(r"HEALTHCHECK_URL=(\S+)", env)
    assert m is not None and "HEALTHCHECK_URL" in checks[0]
    assert m.group(1) == f"http://127.0.0.1:{NodeConfig().http_port}/healthz"


def test_exposes_the_default_ports() -> None:
    exposed = set(" ".join(rest for op, rest in final_stage() if op == "EXPOSE").split())
    node, control = NodeConfig(), ControlConfig()
    assert exposed == {str(node.http_port), str(node.ice_tcp_port), f"{node.media_port}/udp", str(control.port)}
    assert ("STOPSIGNAL", "SIGTERM") in final_stage()


def test_runs_on_glibcs_heap_which_the_node_trims() -> None:
    """PYTHONMALLOC=malloc: after a burst ends the node's trim returns the memory (pymalloc's arenas
    stay pinned; tests/e2e/test_ws_idle_many.py runs the node the same way)."""
    env = " ".join(rest for op, rest in final_stage() if op == "ENV")
    assert re.search(r"(^|\s)PYTHONMALLOC=malloc(\s|$)", env), env
