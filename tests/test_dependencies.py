"""pyproject.toml's dependencies are true: every third-party module the code imports is declared
where it is needed (the runtime list for levelchat/sfu/control/bench, an extra for what only one
feature or the tests use), nothing runtime imports the test clients (aiortc, PyAV), and the
markers and bounds the floors rely on are there.  scripts/test-lowest.sh checks the floors."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN = {"levelchat", "sfu", "control", "bench", "tests"}
#: modules imported only inside a function for an optional feature: the extra that provides them
OPTIONAL = {"redis": "redis", "matplotlib": "bench"}
#: scripts the tests run with the system's ``/usr/bin/python3``, whose imports come from Debian
#: packages that ``scripts/test.sh`` installs (GStreamer's ``gi``), not from pyproject.toml
SYSTEM_PYTHON = {REPO / "examples" / "gstreamer_whip.py"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;\[<>=!~]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


@cache
def _project() -> dict[str, Any]:
    return dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"])


def _runtime() -> set[str]:
    return {_name(r) for r in _project()["dependencies"]}


def _extra(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """An extra's distributions, self-references (``levelchat-sfu[a,b]``) expanded."""
    out: set[str] = set()
    for req in _project()["optional-dependencies"][name]:
        m = re.fullmatch(r"levelchat-sfu\[([a-z0-9,_-]+)\]", req)
        if m:
            for sub in m.group(1).split(","):
                if sub not in seen:
                    out |= _extra(sub, seen | {name})
        else:
            out.add(_name(req))
    return out


def _imports(*dirs: str) -> set[str]:
    found: set[str] = set()
    for d in dirs:
        for path in (REPO / d).rglob("*.py"):
            if path in SYSTEM_PYTHON:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in OWN and m not in sys.stdlib_module_names and m != "__future__"}


def _distribution(module: str) -> str:
    dists = packages_distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return dists[0].lower().replace("_", "-")


def test_runtime_imports_are_declared() -> None:
    runtime = _runtime()
    for module in sorted(_imports("levelchat", "sfu", "control", "bench")):
        if module in OPTIONAL:
            assert _distribution(module) in _extra(OPTIONAL[module]), module
        else:
            assert _distribution(module) in runtime, f"{module} ({_distribution(module)}) is not a dependency"


def test_test_imports_are_declared() -> None:
    declared = _runtime() | _extra("test")
    for module in sorted(_imports("tests")):
        assert _distribution(module) in declared, f"tests import {module}, which no test dependency provides"


def test_test_clients_stay_out_of_production() -> None:
    # PyAV is the recorder's muxer (sfu/recording/writer.py): a runtime dependency; aiortc is not
    assert not {"aiortc"} & _imports("levelchat", "sfu", "control", "bench")
    assert not {"aiortc"} & _runtime()
    assert {"aiortc", "av"} <= _extra("test-unit") <= _extra("test")
    assert "av" in _runtime()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("uvloop", r"uvloop>=[\d.]+; sys_platform != 'win32'"),
        ("pylibsrtp", r"pylibsrtp>=[\d.]+,<[\d.]+"),  # a private binding: a ceiling too
        ("aiohttp", r"aiohttp>=3\.(1[1-9]|[2-9]\d)(\.\d+)?|aiohttp>=3\.10\.11"),
        ("pyopenssl", r"pyopenssl>=(24\.[3-9]|2[5-9]|[3-9]\d)[\d.]*"),
    ],
)
def test_runtime_bounds(name: str, pattern: str) -> None:
    (req,) = [r for r in _project()["dependencies"] if _name(r) == name]
    assert re.fullmatch(pattern, req), req


def test_pytest_asyncio_knows_the_loop_scope_key() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "asyncio_default_fixture_loop_scope" in cfg
    (req,) = [r for r in _project()["optional-dependencies"]["test-unit"] if _name(r) == "pytest-asyncio"]
    floor = tuple(int(p) for p in re.search(r">=([\d.]+)", req).group(1).split("."))  # type: ignore[union-attr]
    assert floor >= (0, 24)
