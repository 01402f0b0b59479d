"""Scenario files (``bench/scenarios/*.toml``): typed, validated, unknown keys rejected.

A scenario is a room shape (``[rooms]``), the media every publisher sends (``[audio]``,
``[video]``) and either one fixed run of ``seconds`` or a ``[ramp]`` that steps one quantity up
until loss or p99 latency crosses a threshold, or its ``max``.  Everything is bounded: at most
``MAX_SESSIONS`` sessions per step, ``MAX_STEPS`` steps, ``MAX_SECONDS`` per step.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MAX_SESSIONS = 2000
MAX_STEPS = 40
MAX_SECONDS = 600.0
#: smallest RTP packet the wire format fits in: header 12 + (rid extension 8) + prefix 2 + stamp 20
MIN_PACKET = 48


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file, table and key."""


class Vary(enum.Enum):
    ROOMS = "rooms"
    SUBSCRIBERS = "subscribers"


@dataclass(frozen=True)
class Rooms:
    count: int = 1
    publishers: int = 1  # per room; each sends the [audio] and [video] streams
    subscribers: int = 0  # per room: receive-only participants, each receives every publisher
    mesh: bool = False  # publishers also receive every other publisher of their room

    def validate(self) -> None:
        _bound("rooms.count", self.count, 1, 500)
        _bound("rooms.publishers", self.publishers, 1, 16)
        _bound("rooms.subscribers", self.subscribers, 0, 1000)
        if self.mesh and self.publishers < 2:
            raise ScenarioError("rooms.mesh needs at least 2 publishers per room")
        if self.subscribers == 0 and not self.mesh:
            raise ScenarioError("nobody receives: set rooms.subscribers > 0 or rooms.mesh = true")


@dataclass(frozen=True)
class Audio:
    enabled: bool = True
    pps: int = 50  # one opus-like packet per 20 ms
    packet_size: int = 120  # RTP bytes (header included)

    def validate(self) -> None:
        _bound("audio.pps", self.pps, 1, 200)
        _bound("audio.packet_size", self.packet_size, MIN_PACKET, 1200)


@dataclass(frozen=True)
class Video:
    enabled: bool = True
    bitrate_kbps: int = 1500  # of the top layer
    packet_size: int = 1200  # RTP bytes (header included)
    fps: int = 30
    keyframe_interval_s: float = 2.0
    simulcast: bool = False  # three rids f / h / q at 1, 1/4 and 1/16 of the bitrate

    def validate(self) -> None:
        _bound("video.bitrate_kbps", self.bitrate_kbps, 10, 50_000)
        _bound("video.packet_size", self.packet_size, MIN_PACKET, 1300)
        _bound("video.fps", self.fps, 1, 120)
        _bound("video.keyframe_interval_s", self.keyframe_interval_s, 0.1, 60.0)


@dataclass(frozen=True)
class Ramp:
    vary: Vary = Vary.SUBSCRIBERS  # what steps up: rooms.count or rooms.subscribers
    start: int = 1
    step: int = 1
    max: int = 8
    step_seconds: float = 3.0
    max_loss: float = 0.01  # a step with more loss than this is not clean
    max_p99_ms: float = 50.0  # nor one with a higher p99 latency

    def validate(self) -> None:
        _bound("ramp.start", self.start, 1, 1000)
        _bound("ramp.step", self.step, 1, 1000)
        _bound("ramp.max", self.max, self.start, 1000)
        _bound("ramp.step_seconds", self.step_seconds, 0.5, 60.0)
        _bound("ramp.max_loss", self.max_loss, 0.0, 1.0)
        _bound("ramp.max_p99_ms", self.max_p99_ms, 0.01, 10_000.0)
        if len(self.values()) > MAX_STEPS:
            raise ScenarioError(f"ramp: {len(self.values())} steps from {self.start} to {self.max} by "
                                f"{self.step}; at most {MAX_STEPS}")

    def values(self) -> list[int]:
        return list(range(self.start, self.max + 1, self.step))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seconds: float = 5.0  # traffic time of a fixed run (a ramp uses ramp.step_seconds)
    drain_s: float = 0.5  # after the publishers stop, receivers keep reading this long
    generators: int = 1  # generator processes the sessions are spread over
    verify_every: int = 1  # receivers decrypt and check every V-th packet of each stream
    node_workers: int = 1  # a spawned node's forwarding worker processes (> 1: a front and N workers)
    rooms: Rooms = field(default_factory=Rooms)
    audio: Audio = field(default_factory=Audio)
    video: Video = field(default_factory=Video)
    ramp: Ramp | None = None

    def validate(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ScenarioError("name: 1 to 64 characters")
        _bound("seconds", self.seconds, 0.5, MAX_SECONDS)
        _bound("drain_s", self.drain_s, 0.1, 10.0)
        _bound("generators", self.generators, 1, 8)
        _bound("verify_every", self.verify_every, 1, 1000)
        _bound("node_workers", self.node_workers, 1, 16)
        for part in (self.rooms, self.audio, self.video):
            part.validate()
        if not self.audio.enabled and not self.video.enabled:
            raise ScenarioError("audio and video are both disabled: nothing to send")
        if self.video.simulcast and not self.video.enabled:
            raise ScenarioError("video.simulcast needs video.enabled")
        if self.ramp is not None:
            self.ramp.validate()
        for value in self.ramp.values() if self.ramp else [0]:
            step = self.at(value) if self.ramp else self
            if step.sessions() > MAX_SESSIONS:
                raise ScenarioError(f"{step.sessions()} sessions in one step (at {value}); at most {MAX_SESSIONS}")

    def at(self, value: int) -> Scenario:
        """The fixed scenario of one ramp step: ``ramp.vary`` set to ``value``."""
        if self.ramp is None:
            return self
        rooms = (replace(self.rooms, count=value) if self.ramp.vary is Vary.ROOMS
                 else replace(self.rooms, subscribers=value))
        return replace(self, rooms=rooms, seconds=self.ramp.step_seconds, ramp=None)

    def sessions(self) -> int:
        """WHIP + WHEP sessions of one step: each receiver opens one WHEP per publisher it receives."""
        r = self.rooms
        per_room = r.publishers + r.subscribers * r.publishers + (r.publishers * (r.publishers - 1) if r.mesh else 0)
        return r.count * per_room


def _bound(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ScenarioError(f"{name}: {value} is outside {low}..{high}")


_TABLES: dict[str, type[Any]] = {"rooms": Rooms, "audio": Audio, "video": Video, "ramp": Ramp}


def _typed(where: str, tp: Any, value: Any) -> Any:
    """``value`` as ``tp`` (int, float, bool, str, an enum, or a table); ScenarioError otherwise."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        names = [m.value for m in tp]
        if value not in names:
            raise ScenarioError(f"{where}: {value!r} is not one of {names}")
        return tp(value)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _typed(where, inner, value)
    if tp in _TABLES.values():
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table, got {type(value).__name__}")
        return _table(where, tp, value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ScenarioError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _table(where: str, cls: type[Any], data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ScenarioError(f"{prefix}unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    kwargs = {k: _typed(f"{where}.{k}" if where else k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ScenarioError(f"{where or 'scenario'}: {exc}") from None


def parse_scenario(data: dict[str, Any]) -> Scenario:
    """A validated Scenario from parsed TOML; ScenarioError names the bad key."""
    if "name" not in data:
        raise ScenarioError("name: a scenario needs a name")
    scenario: Scenario = _table("", Scenario, data)
    scenario.validate()
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_scenario(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path.name}: {exc}") from None
