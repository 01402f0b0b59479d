"""control.placement: eligibility, score and region preference, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from control.model import Capacity, Load, Node, PlacementOutcome
from control.placement import choose, has_capacity, score

NOW = 1_000_000


def node(node_id: str, **kw: object) -> Node:
    base = Node(
        id=node_id, url=f"http://127.0.0.1:1/{node_id}", media_host="127.0.0.1", media_port=7882, region=None,
        capacity=Capacity(max_participants=100, max_rooms=10), version="t", registered_at=0,
        lease_expires_at=NOW + 5_000,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


CASES = [
    ("empty fleet", [], None, PlacementOutcome.NO_NODES, None),
    ("only expired", [node("a", lease_expires_at=NOW)], None, PlacementOutcome.NO_NODES, None),
    ("only revoked", [node("a", revoked=True)], None, PlacementOutcome.NO_NODES, None),
    ("unhealthy", [node("a", healthy=False)], None, PlacementOutcome.ALL_FAILING, None),
    ("draining", [node("a", draining=True), node("b", healthy=False)], None, PlacementOutcome.ALL_FAILING, None),
    ("rooms full", [node("a", load=Load(rooms=10))], None, PlacementOutcome.FULL, None),
    ("placed fill it", [node("a", load=Load(rooms=8), placed_since_report=2)], None, PlacementOutcome.FULL, None),
    ("participants full", [node("a", load=Load(participants=99), placed_since_report=1)], None,
     PlacementOutcome.FULL, None),
    ("tie by id", [node("b"), node("a")], None, PlacementOutcome.PLACED, "a"),
    ("fewer rooms", [node("a", load=Load(rooms=2)), node("b", load=Load(rooms=1))], None,
     PlacementOutcome.PLACED, "b"),
    ("placed count", [node("a", placed_since_report=3), node("b", load=Load(rooms=2))], None,
     PlacementOutcome.PLACED, "b"),
    ("cpu dominates", [node("a", load=Load(cpu=0.9)), node("b", load=Load(rooms=5))], None,
     PlacementOutcome.PLACED, "b"),
    ("participants dominate", [node("a", load=Load(participants=70)), node("b", load=Load(rooms=5))], None,
     PlacementOutcome.PLACED, "b"),
    ("equal max, fewer rooms", [node("a", load=Load(rooms=3, cpu=0.5)), node("b", load=Load(rooms=1, cpu=0.5))],
     None, PlacementOutcome.PLACED, "b"),
    ("region preferred", [node("a", region="us"), node("b", region="eu", load=Load(rooms=9))], "eu",
     PlacementOutcome.PLACED, "b"),
    ("region full falls back", [node("a", region="us"), node("b", region="eu", load=Load(rooms=10))], "eu",
     PlacementOutcome.PLACED, "a"),
    ("unknown region falls back", [node("a", region="us")], "ap", PlacementOutcome.PLACED, "a"),
    ("skips failing", [node("a", healthy=False), node("b", load=Load(rooms=9))], None,
     PlacementOutcome.PLACED, "b"),
]


@pytest.mark.parametrize(("what", "nodes", "region", "outcome", "chosen"), CASES, ids=[c[0] for c in CASES])
def test_choose(what: str, nodes: list[Node], region: str | None, outcome: PlacementOutcome, chosen: str | None) -> None:
    choice = choose(nodes, NOW, region, frozenset())
    assert choice.outcome is outcome
    assert (choice.node.id if choice.node else None) == chosen


def test_exclude_counts_as_failing() -> None:
    choice = choose([node("a"), node("b", healthy=False)], NOW, None, frozenset({"a"}))
    assert choice.outcome is PlacementOutcome.ALL_FAILING
    assert (choice.live_nodes, choice.passing_nodes) == (2, 0)


def test_score_and_capacity() -> None:
    n = node("a", load=Load(rooms=4, participants=30, cpu=0.2), placed_since_report=1)
    assert score(n) == (0.5, 0.5, "a")
    assert has_capacity(n)
    assert not has_capacity(replace(n, placed_since_report=6))
