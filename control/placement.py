"""Which node gets a new room: pure functions over node records, time passed in.

The Redis store runs the same rule in Lua (``control/store/redis_scripts.py``); the shared store
test-suite holds the two to the same behaviour.

* eligible: live lease (not revoked, ``lease_expires_at > now``), healthy, not draining, not
  excluded, and with room to spare: ``rooms < max_rooms`` and ``participants < max_participants``
  where rooms/participants are the node's last report plus the rooms placed on it since (each such
  room counts as one room and one participant, its first joiner).
* score: ``max(rooms / max_rooms, participants / max_participants, cpu)``, least wins; ties go to
  the lower rooms fraction, then the lower node id.
* region: when the room asks for one, eligible nodes in that region win; others are the fallback.
* prefer: a room placed again goes back to the node that held it when that node is eligible (it
  re-registered without the room after a restart: clients may still hold its URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control.model import Node, PlacementOutcome


def effective_rooms(node: Node) -> int:
    return node.load.rooms + node.placed_since_report


def effective_participants(node: Node) -> int:
    return node.load.participants + node.placed_since_report


def passes_checks(node: Node, now_ms: int) -> bool:
    return node.lease_alive(now_ms) and node.healthy and not node.draining


def has_capacity(node: Node) -> bool:
    return (
        effective_rooms(node) < node.capacity.max_rooms
        and effective_participants(node) < node.capacity.max_participants
    )


def score(node: Node) -> tuple[float, float, str]:
    rooms_frac = effective_rooms(node) / node.capacity.max_rooms
    parts_frac = effective_participants(node) / node.capacity.max_participants
    return (max(rooms_frac, parts_frac, node.load.cpu), rooms_frac, node.id)


@dataclass(frozen=True)
class Choice:
    outcome: PlacementOutcome  # PLACED, NO_NODES, ALL_FAILING or FULL
    node: Node | None
    live_nodes: int
    passing_nodes: int


def choose(
    nodes: Iterable[Node], now_ms: int, region: str | None, exclude: frozenset[str], prefer: str | None = None
) -> Choice:
    live = passing = 0
    best: Node | None = None
    best_local: Node | None = None
    preferred: Node | None = None
    for node in nodes:
        if not node.lease_alive(now_ms):
            continue
        live += 1
        if node.id in exclude or not passes_checks(node, now_ms):
            continue
        passing += 1
        if not has_capacity(node):
            continue
        if node.id == prefer:
            preferred = node
        if best is None or score(node) < score(best):
            best = node
        if region is not None and node.region == region and (best_local is None or score(node) < score(best_local)):
            best_local = node
    chosen = preferred or best_local or best
    if chosen is not None:
        return Choice(PlacementOutcome.PLACED, chosen, live, passing)
    if live == 0:
        return Choice(PlacementOutcome.NO_NODES, None, live, passing)
    if passing == 0:
        return Choice(PlacementOutcome.ALL_FAILING, None, live, passing)
    return Choice(PlacementOutcome.FULL, None, live, passing)
