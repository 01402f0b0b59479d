"""The layers keep one direction of dependency, and no package imports itself in a circle.

Read from the source (``ast``), not by importing it: every ``import`` counts, at module level or
deferred inside a function; imports under ``if TYPE_CHECKING:`` are kept apart (they cost nothing
at run time, but they are still dependencies a reader follows).

- No import cycles in ``sfu``, ``control`` or ``levelchat`` counting run-time imports.
- Counting ``TYPE_CHECKING`` imports too, the cycles are exactly ``KNOWN_TYPING_CYCLES`` (a ratchet:
  a new one fails, and one that is gone must be removed from the list).
- ``sfu``'s layers: packet -> transport -> routing -> signaling/api -> node, agent, workers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sfu", "control", "levelchat")

#: cycles through typing-only imports still there; the API depending on a host protocol instead of
#: ``sfu.node.Node`` (issue 16) removes the big one
KNOWN_TYPING_CYCLES = {
    frozenset({"sfu.routing.downtrack", "sfu.routing.simulcast", "sfu.routing.track"}),
    frozenset({
        "sfu.api.http", "sfu.api.participants", "sfu.api.rtc", "sfu.api.rtc_data", "sfu.api.rtc_ice",
        "sfu.api.rtc_session", "sfu.api.rtc_timeouts", "sfu.node", "sfu.selfcheck",
    }),
}

#: what each layer of ``sfu`` may import from ``sfu`` (its own layer always; ``sfu`` alone is
#: ``sfu.clock``; ``counters`` is the drop-reason and counter vocabulary every layer shares)
ALLOWED = {
    "packet": set(),
    "counters": {"packet"},
    "transport": {"packet", "counters", "clock"},
    "routing": {"packet", "transport", "counters", "clock"},
    "signaling": {"packet", "routing", "counters"},
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    typing_only: bool
    line: int


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(nodes: list[ast.stmt], typing_only: bool) -> Iterator[tuple[str, str | None, bool, int]]:
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node.body, True)
            yield from _imports(node.orelse, typing_only)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, typing_only, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"relative import at line {node.lineno}: the code base uses absolute ones")
            for alias in node.names:
                yield node.module or "", alias.name, typing_only, node.lineno
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _imports([n for n in inner if isinstance(n, ast.stmt | ast.excepthandler)], typing_only)  # type: ignore[misc]


def edges(known: dict[str, Path]) -> list[Edge]:
    out = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for module, member, typing_only, line in _imports(tree.body, False):
            for target in (f"{module}.{member}" if member else None, module):
                if target in known and target != name:
                    out.append(Edge(name, target, typing_only, line))
                    break
    return out


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def graph_of(all_edges: list[Edge], *, typing_too: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in all_edges:
        if typing_too or not e.typing_only:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    return graph


ALL_MODULES = {name: path for package in PACKAGES for name, path in modules(package).items()}
ALL_EDGES = edges(ALL_MODULES)


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["e", "e2"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_edges_see_deferred_and_typing_imports() -> None:
    seen = {(e.source, e.target, e.typing_only) for e in ALL_EDGES}
    assert ("sfu.api.http", "sfu.node", True) in seen  # under TYPE_CHECKING
    assert any(not e.typing_only and e.source == "sfu.node" for e in ALL_EDGES)
    assert len(ALL_MODULES) > 100


def test_no_import_cycles_at_run_time() -> None:
    found = cycles(graph_of(ALL_EDGES, typing_too=False))
    assert found == [], [sorted(c) for c in found]


def test_typing_import_cycles_are_only_the_known_ones() -> None:
    found = set(cycles(graph_of(ALL_EDGES, typing_too=True)))
    assert not found - KNOWN_TYPING_CYCLES, f"new import cycle(s): {[sorted(c) for c in found - KNOWN_TYPING_CYCLES]}"
    assert not KNOWN_TYPING_CYCLES - found, (
        f"gone, take them off KNOWN_TYPING_CYCLES: {[sorted(c) for c in KNOWN_TYPING_CYCLES - found]}")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "clock"  # ``from sfu import clock``


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_sfu_layers_depend_downward_only(layer: str) -> None:
    wrong = [
        f"{e.source}:{e.line} imports {e.target}"
        for e in ALL_EDGES
        if e.source.startswith("sfu.") and e.target.startswith("sfu")
        and _layer(e.source) == layer and _layer(e.target) not in ALLOWED[layer] | {layer}
    ]
    assert wrong == []


def test_packet_layer_has_no_io() -> None:
    io = {"asyncio", "socket", "uvloop", "aiohttp", "logging"}
    wrong = []
    for name, path in ALL_MODULES.items():
        if name.startswith("sfu.packet"):
            for module, _, _, line in _imports(ast.parse(path.read_text()).body, False):
                if module.split(".")[0] in io:
                    wrong.append(f"{name}:{line} imports {module}")
    assert wrong == []
