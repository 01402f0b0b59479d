"""Scenario files: every shipped one loads; bad keys and values are refused with a message naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.plan import build_plan, check_room_prefix
from bench.loadgen.scenario import MAX_SESSIONS, ScenarioError, Vary, load_scenario, parse_scenario

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "bench" / "scenarios").glob("*.toml"))


def test_the_issue_scenarios_ship() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"one-to-many-16", "one-to-many-64", "one-to-many-256", "small-rooms", "audio-conference", "simulcast",
            "ramp-subscribers", "ramp-rooms"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_load_and_plan(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    fixed = scenario.at(scenario.ramp.values()[0]) if scenario.ramp else scenario
    plan = build_plan(fixed)
    assert plan.sessions == fixed.sessions() <= MAX_SESSIONS
    assert plan.expected_out_pps() > 0


BASE: dict[str, Any] = {"name": "t", "rooms": {"subscribers": 2}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"secnds": 3}, "unknown key 'secnds'"),
        ({"rooms": {"subscribers": 2, "subscriber": 3}}, r"\[rooms\] unknown key 'subscriber'"),
        ({"video": {"bitrate": 100}}, r"\[video\] unknown key 'bitrate'"),
        ({"ramp": {"vary": "rooms", "stop": 3}}, r"\[ramp\] unknown key 'stop'"),
        ({"seconds": "5"}, "seconds: expected float"),
        ({"seconds": 0.1}, "seconds: 0.1 is outside"),
        ({"seconds": 5000}, "seconds"),
        ({"generators": 0}, "generators"),
        ({"generators": True}, "generators: expected int"),
        ({"rooms": {"count": 0, "subscribers": 1}}, "rooms.count"),
        ({"rooms": {"subscribers": 2.5}}, "rooms.subscribers: expected int"),
        ({"rooms": {"subscribers": 0}}, "nobody receives"),
        ({"rooms": {"mesh": True, "subscribers": 0}}, "mesh needs at least 2 publishers"),
        ({"rooms": "big"}, "rooms: expected a table"),
        ({"audio": {"pps": 0}}, "audio.pps"),
        ({"audio": {"packet_size": 20}}, "audio.packet_size"),
        ({"video": {"packet_size": 1500}}, "video.packet_size"),
        ({"video": {"fps": 0}}, "video.fps"),
        ({"audio": {"enabled": False}, "video": {"enabled": False}}, "nothing to send"),
        ({"video": {"enabled": False, "simulcast": True}}, "simulcast needs video"),
        ({"ramp": {"vary": "publishers"}}, r"ramp.vary: 'publishers' is not one of"),
        ({"ramp": {"start": 4, "max": 2}}, "ramp.max"),
        ({"ramp": {"start": 1, "step": 1, "max": 100}}, "at most 40"),
        ({"ramp": {"max_loss": 2.0}}, "ramp.max_loss"),
        ({"rooms": {"count": 500, "publishers": 4, "mesh": True, "subscribers": 0}}, "sessions in one step"),
    ],
)
def test_bad_scenarios_are_refused(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(BASE | patch)


def test_a_scenario_needs_a_name() -> None:
    with pytest.raises(ScenarioError, match="name"):
        parse_scenario({"rooms": {"subscribers": 1}})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nrooms = { subscribers = 1 }\nwat = 1\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: unknown key 'wat'"):
        load_scenario(bad)
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="missing.toml"):
        load_scenario(tmp_path / "missing.toml")


def test_ramp_steps_and_plans() -> None:
    sc = parse_scenario({"name": "r", "rooms": {"count": 1, "publishers": 4, "mesh": True},
                         "ramp": {"vary": "rooms", "start": 2, "step": 3, "max": 9}})
    assert sc.ramp is not None and sc.ramp.vary is Vary.ROOMS
    assert sc.ramp.values() == [2, 5, 8]
    step = sc.at(5)
    assert step.ramp is None and step.rooms.count == 5 and step.seconds == sc.ramp.step_seconds
    plan = build_plan(step, step=1)
    assert len(plan.publishers) == 20 and len(plan.subscribers) == 5 * 4 * 3  # everyone receives the other three
    assert {p.room for p in plan.publishers} == {f"lg-s1-r{i}" for i in range(5)}
    assert all(s.target != s.identity.split("-rx-")[0] for s in plan.subscribers)
    other = build_plan(step, step=1, room_prefix="storm2")
    assert {p.room for p in other.publishers} == {f"storm2-s1-r{i}" for i in range(5)}


@pytest.mark.parametrize("prefix", ["", "Storm", "a-b", "x" * 17, "r/1"])
def test_a_room_prefix_is_letters_and_digits(prefix: str) -> None:
    with pytest.raises(ValueError, match="room prefix"):
        check_room_prefix(prefix)


def test_simulcast_receivers_expect_audio_and_the_top_layer() -> None:
    sc = parse_scenario({"name": "s", "rooms": {"subscribers": 3}, "video": {"simulcast": True, "bitrate_kbps": 2000}})
    plan = build_plan(sc)
    by_id = {s.id: s for s in plan.streams}
    assert [(s.kind, s.rid) for s in plan.streams] == [("audio", ""), ("video", "f"), ("video", "h"), ("video", "q")]
    assert by_id[1].pps > by_id[2].pps > by_id[3].pps
    assert all([by_id[i].rid for i in s.expects] == ["", "f"] for s in plan.subscribers)
    assert len({s.ssrc for s in plan.streams}) == 4
