"""One step of a scenario as sessions and streams, spread over generator processes.

Every publisher (WHIP) sends an audio stream and a video stream (or three simulcast layers), each
with a scenario-wide stream id that its packets carry.  Every receiver opens one WHEP session per
publisher it receives (``/whep/{room}/{publisher identity}``) and expects that publisher's audio
and its top video layer.  JSON-friendly dataclasses: the runner hands ``Assignment.to_json()`` to
each generator process.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen.scenario import Scenario

AUDIO_PT = 111
VIDEO_PT = 96
#: simulcast layers, top first, and their share of the video bitrate
LAYERS = (("f", 1.0), ("h", 0.25), ("q", 0.0625))
#: the a=rid restrictions the offer gives each layer (the node ranks layers by them)
RID_RESTRICTIONS = {"f": "max-width=1280;max-height=720", "h": "max-width=640;max-height=360",
                    "q": "max-width=320;max-height=180"}


@dataclass(frozen=True)
class Stream:
    id: int
    kind: str  # "audio" or "video"
    ssrc: int
    pt: int
    packet_size: int  # RTP bytes without a header extension
    interval_s: float  # between frames
    per_frame: int  # packets per frame
    keyframe_interval_s: float = 0.0  # video only
    rid: str = ""  # simulcast layer

    @property
    def pps(self) -> float:
        return self.per_frame / self.interval_s


@dataclass(frozen=True)
class Publisher:
    room: str
    identity: str
    streams: list[int]
    worker: int
    url: str = ""  # WHIP endpoint, filled in by the runner
    token: str = ""


@dataclass(frozen=True)
class Subscriber:
    room: str
    identity: str
    target: str  # the publisher's identity
    expects: list[int]  # stream ids it should receive (audio, top video layer)
    worker: int
    url: str = ""  # WHEP endpoint
    token: str = ""


@dataclass
class Assignment:
    """What one generator process opens and runs."""

    worker: int
    seconds: float
    drain_s: float
    verify_every: int
    streams: list[Stream]  # every stream of the step (receivers look payloads up by id)
    publishers: list[Publisher] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assignment:
        return cls(
            worker=int(data["worker"]),
            seconds=float(data["seconds"]),
            drain_s=float(data["drain_s"]),
            verify_every=int(data["verify_every"]),
            streams=[Stream(**s) for s in data["streams"]],
            publishers=[Publisher(**p) for p in data["publishers"]],
            subscribers=[Subscriber(**s) for s in data["subscribers"]],
        )


@dataclass
class Plan:
    scenario: Scenario
    step: int
    streams: list[Stream]
    publishers: list[Publisher]
    subscribers: list[Subscriber]

    @property
    def sessions(self) -> int:
        return len(self.publishers) + len(self.subscribers)

    def offered_pps(self) -> float:
        """Packets per second the publishers send."""
        return sum(s.pps for s in self.streams)

    def expected_out_pps(self) -> float:
        """Packets per second the node should deliver to the receivers."""
        by_id = {s.id: s for s in self.streams}
        return sum(by_id[i].pps for sub in self.subscribers for i in sub.expects)

    def assignments(self) -> list[Assignment]:
        sc = self.scenario
        out = [Assignment(w, sc.seconds, sc.drain_s, sc.verify_every, self.streams)
               for w in range(sc.generators)]
        for p in self.publishers:
            out[p.worker].publishers.append(p)
        for s in self.subscribers:
            out[s.worker].subscribers.append(s)
        return out


#: what room names start with unless told (``--room-prefix``: two runs against one node keep apart)
ROOM_PREFIX = "lg"
_PREFIX_RE = re.compile(r"[a-z0-9]{1,16}")


def room_name(step: int, index: int, prefix: str = ROOM_PREFIX) -> str:
    return f"{prefix}-s{step}-r{index}"


def check_room_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"room prefix {prefix!r}: 1 to 16 lower-case letters and digits")
    return prefix


def build_plan(scenario: Scenario, step: int = 0, room_prefix: str = ROOM_PREFIX) -> Plan:
    """Sessions and streams of a fixed (non-ramp) scenario; ``step`` keeps room names apart, and
    ``room_prefix`` those of another run against the same node."""
    check_room_prefix(room_prefix)
    if scenario.ramp is not None:
        raise ValueError("build_plan takes one step of a ramp: scenario.at(value)")
    r, a, v = scenario.rooms, scenario.audio, scenario.video
    streams: list[Stream] = []
    publishers: list[Publisher] = []
    subscribers: list[Subscriber] = []
    top_video: dict[str, list[int]] = {}  # publisher key -> what a receiver of it expects
    ssrc_base = 0x10000000 + (step << 16)
    workers = scenario.generators
    n_sub = 0

    def new_stream(**kw: Any) -> int:
        sid = len(streams)
        streams.append(Stream(id=sid, ssrc=ssrc_base + sid + 1, **kw))
        return sid

    for room_i in range(r.count):
        room = room_name(step, room_i, room_prefix)
        for p in range(r.publishers):
            ids: list[int] = []
            expects: list[int] = []
            if a.enabled:
                ids.append(new_stream(kind="audio", pt=AUDIO_PT, packet_size=a.packet_size, interval_s=1.0 / a.pps,
                                      per_frame=1))
                expects.append(ids[-1])
            if v.enabled:
                layers = LAYERS if v.simulcast else (("", 1.0),)
                for rid, share in layers:
                    per_frame = max(1, math.ceil(v.bitrate_kbps * 1000 * share / 8 / v.fps / v.packet_size))
                    ids.append(new_stream(kind="video", pt=VIDEO_PT, packet_size=v.packet_size,
                                          interval_s=1.0 / v.fps, per_frame=per_frame,
                                          keyframe_interval_s=v.keyframe_interval_s, rid=rid))
                    if rid in ("", "f"):
                        expects.append(ids[-1])
            identity = f"p{p}"
            publishers.append(Publisher(room, identity, ids, worker=len(publishers) % workers))
            top_video[f"{room}/{identity}"] = expects
        for p in range(r.publishers):
            target = f"p{p}"
            receivers = [f"s{j}" for j in range(r.subscribers)]
            if r.mesh:
                receivers += [f"p{k}" for k in range(r.publishers) if k != p]
            for who in receivers:
                subscribers.append(Subscriber(room, f"{who}-rx-{target}", target, top_video[f"{room}/{target}"],
                                              worker=n_sub % workers))
                n_sub += 1
    return Plan(scenario, step, streams, publishers, subscribers)
