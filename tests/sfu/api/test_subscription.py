"""``update_subscription``'s parameters (a table of refusals, each naming its field), and what
applying one does to a subscription over a real simulcast group and a real CONNECTED transport:
pause (nothing more leaves for that track), resume (a PLI, then from a keyframe on), bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfu.api.jsonrpc import RpcError
from sfu.api.rtc_subscription import LayerTeller, SubscriptionUpdate, apply
from sfu.routing.dynacast import OFF_DELAY_MS
from sfu.routing.participant import Participant, ParticipantKind
from tests.sfu.routing.harness import Link, open_link
from tests.sfu.routing.test_simulcast import SSRCS, T0, Publisher, layer_of, receive_all, subscriber

T = "TR_x"


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    made = await open_link()
    yield made
    made.close()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([], "params"),
        ({}, "track"),
        ({"track": ""}, "track"),
        ({"track": 7}, "track"),
        ({"track": "x" * 129}, "track"),
        ({"track": T, "enabled": "no"}, "enabled"),
        ({"track": T, "enabled": 0}, "enabled"),
        ({"track": T, "max_layer": 3}, "max_layer"),
        ({"track": T, "max_layer": ""}, "max_layer"),
        ({"track": T, "max_width": 0}, "max_width"),
        ({"track": T, "max_width": -5}, "max_width"),
        ({"track": T, "max_width": 320.5}, "max_width"),
        ({"track": T, "max_width": True}, "max_width"),
        ({"track": T, "max_height": 16_385}, "max_height"),
        ({"track": T, "max_height": "720"}, "max_height"),
        ({"track": T, "max_fps": 0}, "max_fps"),
        ({"track": T, "max_fps": 241}, "max_fps"),
        ({"track": T, "max_fps": float("nan")}, "max_fps"),
        ({"track": T, "max_fps": False}, "max_fps"),
        ({"track": T, "quality": "high"}, "quality"),
    ],
)
def test_refusals_name_their_field(params: Any, field: str) -> None:
    with pytest.raises(RpcError) as info:
        SubscriptionUpdate.parse(params)
    assert info.value.error.code == "bad_request"
    assert f"params.{field}" in info.value.error.detail if field != "params" else "params" in info.value.error.detail


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"track": T}, SubscriptionUpdate(T, frozenset())),
        ({"track": T, "enabled": False}, SubscriptionUpdate(T, frozenset({"enabled"}), enabled=False)),
        ({"track": T, "max_layer": "auto"}, SubscriptionUpdate(T, frozenset({"max_layer"}), max_layer=None)),
        ({"track": T, "max_layer": None, "max_width": 640, "max_height": None, "max_fps": 15},
         SubscriptionUpdate(T, frozenset({"max_layer", "max_width", "max_height", "max_fps"}), max_width=640,
                            max_fps=15.0)),
        ({"track": T, "max_fps": 7.5}, SubscriptionUpdate(T, frozenset({"max_fps"}), max_fps=7.5)),
    ],
)
def test_parse(params: dict[str, Any], expected: SubscriptionUpdate) -> None:
    assert SubscriptionUpdate.parse(params) == expected


def _sub(link: Link) -> tuple[Participant, Publisher, Any]:
    pub = Publisher(link.counters)
    for rid in ("q", "h", "f"):
        pub.send(rid, True, T0)
    participant = Participant(identity="bob", room_id="room-1", kind=ParticipantKind.RTC)
    dt = subscriber(link)
    participant.downtracks.append(dt)
    dt.bind(pub.layers["f"], T0)
    return participant, pub, dt


async def test_pause_sends_nothing_and_resume_starts_at_a_keyframe(link: Link) -> None:
    participant, pub, dt = _sub(link)
    pub.send("f", True, T0 + 10)
    assert [layer_of(p) for p in await receive_all(link)] == ["f"]
    result = apply(participant, dt, SubscriptionUpdate.parse({"track": T, "enabled": False}), T0 + 20)
    assert result["enabled"] is False and dt.paused
    for i in range(5):
        for rid in ("q", "h", "f"):
            pub.send(rid, i == 0, T0 + 30 + 33 * i)
    assert await receive_all(link) == []
    pub.plis.clear()
    result = apply(participant, dt, SubscriptionUpdate.parse({"track": T, "enabled": True}), T0 + 600)
    assert result["enabled"] is True and not dt.paused
    assert pub.plis == [SSRCS["f"]]  # the keyframe it starts at is asked for
    pub.send("f", False, T0 + 610)  # not a keyframe: still nothing
    assert await receive_all(link) == []
    pub.send("f", True, T0 + 650)
    pub.send("f", False, T0 + 683)
    got = await receive_all(link)
    assert [layer_of(p) for p in got] == ["f", "f"]


async def test_bounds_choose_the_layer_and_max_fps_is_kept(link: Link) -> None:
    participant, pub, dt = _sub(link)
    pub.send("f", True, T0 + 5)  # f flows: a move waits for the new layer's keyframe
    result = apply(participant, dt, SubscriptionUpdate.parse({"track": T, "max_layer": "h", "max_fps": 15}), T0 + 10)
    assert result["max_layer"] == "h" and result["max_fps"] == 15.0 and dt.prefs.max_fps == 15.0
    assert result["switching_to"] == "h"
    with pytest.raises(RpcError) as info:
        apply(participant, dt, SubscriptionUpdate.parse({"track": T, "max_layer": "x"}), T0 + 20)
    assert "params.max_layer" in info.value.error.detail
    assert dt.target_rid == "h"  # a refused update changes nothing
    result = apply(participant, dt, SubscriptionUpdate.parse({"track": T, "max_layer": None}), T0 + 30)
    assert result["max_layer"] is None and result["switching_to"] is None and dt.prefs.max_fps == 15.0


async def test_the_teller_tells_a_publisher_what_its_subscribers_need(link: Link) -> None:
    participant, pub, dt = _sub(link)
    teller = LayerTeller()
    groups = [pub.group]
    assert teller.decide(groups, T0) == []
    apply(participant, dt, SubscriptionUpdate.parse({"track": T, "max_layer": "q"}), T0 + 10)
    assert teller.decide(groups, T0 + OFF_DELAY_MS - 1) == []
    sid = pub.group.primary.sid
    off = [{"rid": "q", "active": True}, {"rid": "h", "active": False}, {"rid": "f", "active": False}]
    assert teller.decide(groups, T0 + OFF_DELAY_MS) == [{"track": sid, "layers": off}]
    apply(participant, dt, SubscriptionUpdate.parse({"track": T, "max_layer": "auto"}), T0 + OFF_DELAY_MS + 1)
    on = [{"rid": "q", "active": True}, {"rid": "h", "active": True}, {"rid": "f", "active": True}]
    assert teller.decide(groups, T0 + OFF_DELAY_MS + 1) == [{"track": sid, "layers": on}]
    assert teller.decide([], T0 + OFF_DELAY_MS + 2) == [] and teller._by_track == {}
