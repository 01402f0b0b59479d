"""Simulcast: layers learnt from their rid extension, one layer per subscriber, switches at keyframes.

Packets are real RTP (``RtpPacket`` with header extensions) entering ``PublisherSink`` or
``PublishedTrack.on_rtp``; what subscribers get leaves through a real CONNECTED transport and is
unprotected by the raw client.
"""

from __future__ import annotations

import struct

import pytest

from levelchat.errors import ApiError
from sfu.counters import DropReason, MediaCounters
from sfu.packet.rtp import RtpPacket
from sfu.routing.allocator import LayerInfo, TrackInput, video_options
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, PublisherSink
from sfu.routing.router import Router
from sfu.routing.simulcast import (
    HDREXT_MID,
    HDREXT_REPAIRED_RID,
    HDREXT_RID,
    SIZE_WATCH_MS,
    RidRestrictions,
    SimulcastGroup,
    form_groups,
    sources,
)
from sfu.routing.track import PublishedTrack, TrackCodec
from tests.sfu.routing.harness import VP8_DELTA, VP8_KEY, Link, rtp_bytes

T0 = 100_000
VP8 = TrackCodec("VP8", 90_000, 96)
EXT = {HDREXT_MID: 1, HDREXT_RID: 2, HDREXT_REPAIRED_RID: 3}
SSRCS = {"q": 0x51, "h": 0x52, "f": 0x53}


class Publisher:
    """Three layers ("q", "h", "f", low to high) of one source, and the PLIs the node asked for."""

    def __init__(
        self,
        counters: MediaCounters,
        rids: tuple[str, ...] = ("q", "h", "f"),
        restrictions: tuple[str, ...] | None = None,
        *,
        known: bool = True,
        mid: str = "0",
    ) -> None:
        self.plis: list[int] = []
        self.layers: dict[str, PublishedTrack] = {}
        for i, rid in enumerate(rids):
            self.layers[rid] = PublishedTrack(
                kind="video",
                ssrc=SSRCS.get(rid, 0x60 + i) if known else -(i + 1),
                codecs=[VP8],
                mid=mid,
                owner="alice",
                counters=counters,
                request_keyframe=self.plis.append,
                rid=rid,
                ext_ids=EXT,
            )
        params = restrictions or ("",) * len(rids)
        (self.group,) = form_groups(
            [(t, RidRestrictions.parse(p)) for t, p in zip(self.layers.values(), params, strict=True)], T0
        )
        self.seq = {rid: 1000 * (i + 1) for i, rid in enumerate(rids)}
        self.ts = {rid: 7_000_000 * (i + 1) for i, rid in enumerate(rids)}

    def send(
        self,
        rid: str,
        key: bool,
        now_ms: int,
        *,
        frames: int = 1,
        packets: int = 1,
        size: tuple[int, int] | None = None,
    ) -> None:
        """``frames`` frames of ``packets`` packets on layer ``rid``, the first a keyframe (of
        ``size``, else VP8_KEY's 320x240) when ``key``; the payload ends with the rid."""
        layer = self.layers[rid]
        keyframe = VP8_KEY if size is None else vp8_key(*size)
        for f in range(frames):
            for p in range(packets):
                start = p == 0
                payload = (keyframe if key and f == 0 else VP8_DELTA) if start else b"\x00\x00" + bytes(10)
                data = rtp_bytes(
                    self.seq[rid], self.ts[rid], ssrc=layer.ssrc, pt=96, payload=payload + rid.encode(),
                    marker=p == packets - 1,
                )
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                layer.on_rtp(memoryview(data), len(data), now_ms + 33 * f)
            self.ts[rid] = (self.ts[rid] + 3000) & 0xFFFFFFFF


def vp8_key(width: int, height: int) -> bytes:
    """A VP8 key frame's first payload (descriptor, frame tag, start code, size) of that size."""
    return bytes([0x10, 0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", width, height) + bytes(20)


def subscriber(link: Link, target: str | None = None) -> DownTrack:
    dt = DownTrack(
        peer=link.peer,
        kind="video",
        mid="0",
        ssrc=0xBB01,
        out_payload_types={"VP8": 100},
        out_ext_ids={},
        counters=link.counters,
    )
    dt.target_rid = target
    return dt


async def receive_all(link: Link) -> list[RtpPacket]:
    out = []
    while True:
        try:
            out.append(RtpPacket.parse(await link.client.recv_rtp(0.15)))
        except TimeoutError:
            return out


def layer_of(packet: RtpPacket) -> str:
    return packet.payload[-1:].decode()


def assert_continuous(got: list[RtpPacket]) -> None:
    seqs = [p.header.sequence_number for p in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))], seqs
    for a, b in zip(got, got[1:], strict=False):
        assert 0 <= (b.header.timestamp - a.header.timestamp) & 0xFFFFFFFF < 0x80000000, (a.header, b.header)
    assert {p.header.ssrc for p in got} == {0xBB01}


# -- restrictions and ranking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", RidRestrictions()),
        ("max-width=1280;max-height=720", RidRestrictions(max_width=1280, max_height=720)),
        ("pt=96;max-br=300000;max-fps=30", RidRestrictions(max_fps=30, max_br=300000)),
        (" max-width = 320 ; depend=q ", RidRestrictions(max_width=320)),
    ],
)
def test_rid_restrictions_parse(params: str, expected: RidRestrictions) -> None:
    assert RidRestrictions.parse(params) == expected


@pytest.mark.parametrize(("params", "message"), [("max-width=wide", "not a number"), ("max-br=-1", "negative")])
def test_rid_restrictions_refuse_nonsense(params: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RidRestrictions.parse(params)


@pytest.mark.parametrize(
    ("rids", "restrictions", "ranked"),
    [
        (("q", "h", "f"), None, ["q", "h", "f"]),  # no restrictions: the offer's order, low first
        (("f", "h", "q"), ("max-width=1280;max-height=720", "max-width=640;max-height=360",
                           "max-width=320;max-height=180"), ["q", "h", "f"]),
        (("a", "b"), ("max-br=900000", "max-br=100000"), ["b", "a"]),
        (("a", "b"), ("max-br=900000", ""), ["a", "b"]),  # not every layer restricted: offer order
    ],
)
def test_ranking_by_restrictions(
    rids: tuple[str, ...], restrictions: tuple[str, ...] | None, ranked: list[str]
) -> None:
    pub = Publisher(MediaCounters(), rids, restrictions)
    assert pub.group.rids == ranked


@pytest.mark.parametrize(
    ("packets_per_frame", "ranked"),
    [
        ({"q": 1, "h": 3, "f": 8}, ["q", "h", "f"]),
        ({"q": 8, "h": 3, "f": 1}, ["f", "h", "q"]),  # listed high first: measured rates re-rank
        ({"q": 2, "h": 2, "f": 8}, ["q", "h", "f"]),  # too close to tell: the order is kept
    ],
)
def test_ranking_by_measured_packet_rate(packets_per_frame: dict[str, int], ranked: list[str]) -> None:
    pub = Publisher(MediaCounters())
    for rid, n in packets_per_frame.items():
        pub.send(rid, True, T0, frames=30, packets=n)
    pub.group.tick(T0 + 1000)
    assert pub.group.rids == ranked


FIREFOX_SIZES = {"f": (640, 480), "h": (320, 240), "q": (160, 120)}


@pytest.mark.parametrize(
    ("rids", "restrictions", "sizes", "ranked"),
    [
        # Firefox: listed high first, no restrictions, one packet per frame on every layer
        (("f", "h", "q"), None, FIREFOX_SIZES, ["q", "h", "f"]),
        (("q", "h", "f"), None, FIREFOX_SIZES, ["q", "h", "f"]),
        # what the keyframes carry wins over what a=rid declares
        (
            ("a", "b"),
            ("max-width=1280;max-height=720", "max-width=320;max-height=180"),
            {"a": (320, 180), "b": (1280, 720)},
            ["a", "b"],
        ),
        # equal sizes: the restrictions break the tie
        (("a", "b"), ("max-br=900000", "max-br=100000"), {"a": (320, 240), "b": (320, 240)}, ["b", "a"]),
        # Firefox with f not sent yet: q and h in size order in their places, f in the offer's
        (("f", "h", "q"), None, {"h": (320, 240), "q": (160, 120)}, ["f", "q", "h"]),
        # the same with restrictions: they place f (then sizes order the others)
        (("f", "h", "q"), ("max-width=640;max-height=480", "max-width=320;max-height=240",
                           "max-width=160;max-height=120"), {"h": (320, 240), "q": (160, 120)}, ["q", "h", "f"]),
        # 1280x720 against 960x960: pixels, not width
        (("w", "s"), None, {"w": (1280, 720), "s": (960, 960)}, ["w", "s"]),
    ],
)
def test_ranking_by_keyframe_size(
    rids: tuple[str, ...],
    restrictions: tuple[str, ...] | None,
    sizes: dict[str, tuple[int, int]],
    ranked: list[str],
) -> None:
    pub = Publisher(MediaCounters(), rids, restrictions)
    for rid, size in sizes.items():
        pub.send(rid, True, T0, frames=30, size=size)
    assert pub.group.rids == ranked  # at once, before any tick
    pub.group.tick(T0 + 1000)  # equal packet rates change nothing
    assert pub.group.rids == ranked
    assert {rid: (pub.layers[rid].width, pub.layers[rid].height) for rid in sizes} == sizes


def test_a_top_layer_that_starts_paused() -> None:
    """Firefox lists f, h, q and f sends nothing at first: the default is the largest layer that
    sends (h), and f once it sends."""
    pub = Publisher(MediaCounters(), ("f", "h", "q"))
    for rid in ("h", "q"):
        pub.send(rid, True, T0, frames=30, size=FIREFOX_SIZES[rid])
    pub.group.tick(T0 + 1000)
    assert pub.group.rids == ["f", "q", "h"] and pub.group.choose(None) is pub.layers["h"]
    pub.send("f", True, T0 + 1000, frames=30, size=FIREFOX_SIZES["f"])
    assert pub.group.rids == ["q", "h", "f"]
    pub.group.tick(T0 + 2000)
    assert pub.group.choose(None) is pub.layers["f"]


def test_layer_infos_for_the_allocator() -> None:
    """The allocator gets each layer's keyframe size and state in rank order: its options for a
    Firefox-ordered group run q, h, f, without f once the publisher pauses it."""
    pub = Publisher(MediaCounters(), ("f", "h", "q"))
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, size=size)
    pub.group.tick(T0 + 1000)
    infos = pub.group.layer_infos()
    assert infos == (LayerInfo("q", 160, 120), LayerInfo("h", 320, 240), LayerInfo("f", 640, 480))
    assert [o.layer.rid for o in video_options(TrackInput("v", "video", infos))] == ["q", "h", "f"]
    for rid in ("q", "h"):
        pub.send(rid, False, T0 + 1000)
    pub.group.tick(T0 + 2000)  # f paused by the publisher
    infos = pub.group.layer_infos()
    assert infos[2] == LayerInfo("f", 640, 480, active=False)
    assert [o.layer.rid for o in video_options(TrackInput("v", "video", infos))] == ["q", "h"]


async def test_firefox_order_default_and_named_layers(link: Link) -> None:
    """f, h, q listed high first: the default is the largest (f), a rid keeps naming its layer."""
    pub = Publisher(link.counters, ("f", "h", "q"))
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, size=size)
    pub.group.tick(T0 + 1000)
    dt = subscriber(link)
    pub.group.attach(dt, T0 + 1000)
    for rid in ("f", "h", "q"):
        pub.send(rid, True, T0 + 1000, size=FIREFOX_SIZES[rid])
    assert dt.source is pub.layers["f"]
    assert pub.group.set_target(dt, "q", T0 + 1100) is pub.layers["q"]
    pub.send("q", True, T0 + 1100, size=FIREFOX_SIZES["q"])
    assert dt.source is pub.layers["q"]
    got = await receive_all(link)
    assert runs([layer_of(p) for p in got]) == ["f", "q"]
    assert [x["width"] for x in pub.group.describe(dt)["layers"]] == [160, 320, 640]  # type: ignore[index]


def runs(layers: list[str]) -> list[str]:
    return [layers[0]] + [b for a, b in zip(layers, layers[1:], strict=False) if a != b]


async def test_a_layer_that_shrinks_changes_rank(link: Link) -> None:
    """The encoder scales f down to 160x120 (a bandwidth limit): its keyframe re-ranks the group;
    the default subscriber moves to the new top layer (h) at the next tick, the one that asked
    for "f" by name stays on f."""
    pub = Publisher(link.counters, ("f", "h", "q"))
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, frames=30, size=size)
    pub.group.tick(T0 + 1000)
    auto, named = subscriber(link), subscriber(link, target="f")
    for dt in (auto, named):
        pub.group.attach(dt, T0 + 1000)
    pub.send("f", True, T0 + 1000, size=FIREFOX_SIZES["f"])
    assert auto.source is named.source is pub.layers["f"]
    pub.layers["f"].keyframe_pending = True  # a keyframe is looked at (a PLI, a new subscriber...)
    pub.send("f", True, T0 + 1100, size=(160, 120))
    assert pub.group.rids == ["f", "q", "h"]  # f and q tie on size: the offer's order
    for rid in ("h", "q"):
        pub.send(rid, False, T0 + 1100)
    pub.group.tick(T0 + 2000)
    assert auto.pending_source is pub.layers["h"] and named.pending_source is None
    pub.send("h", True, T0 + 2000, size=FIREFOX_SIZES["h"])
    assert auto.source is pub.layers["h"] and named.source is pub.layers["f"]


def test_a_new_size_is_read_only_from_keyframes_looked_at() -> None:
    """A size is read from keyframes the track looks at anyway (its first; those subscribers
    wait for), not from every packet; a layer whose packet rate moves by RECHECK_RATIO has its
    next keyframe looked at (an encoder that changes size under a bandwidth limit changes rate)."""
    pub = Publisher(MediaCounters(), ("f", "h", "q"))
    f = pub.layers["f"]
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, frames=30, packets=6 if rid == "f" else 1, size=size)
    assert not f.keyframe_pending
    pub.group.tick(T0 + 1000)  # the first rates
    pub.send("f", True, T0 + 1000, frames=30, packets=6, size=(160, 120))
    assert (f.width, f.height) == (640, 480)  # not looked at: nobody waited
    pub.group.tick(T0 + 2000)
    assert not f.keyframe_pending  # the same rate
    pub.send("f", False, T0 + 2000, frames=30, packets=1)
    pub.group.tick(T0 + 3000)
    assert f.keyframe_pending  # a sixth of the rate (averaged: 0.58): the next keyframe is read
    pub.send("f", True, T0 + 3000, frames=30, packets=1, size=(160, 120))
    assert (f.width, f.height) == (160, 120) and not f.keyframe_pending
    assert pub.group.rids[-1] == "h"


async def test_a_size_watch_without_a_keyframe_ends(link: Link) -> None:
    """A rate change looks for the next keyframe for SIZE_WATCH_MS; none comes: the layer stops
    looking at every packet, unless a subscriber waits for a keyframe."""
    pub = Publisher(link.counters, ("f", "h", "q"))
    f = pub.layers["f"]
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, frames=30, packets=6, size=size)
    pub.group.tick(T0 + 1000)
    now = T0 + 1000
    pub.send("f", False, now, frames=30, packets=1)
    pub.group.tick(now + 1000)
    assert f.keyframe_pending
    for second in range(2, 12):
        pub.send("f", False, now + 1000 * (second - 1), frames=30, packets=1)
        pub.group.tick(now + 1000 * second)
        assert f.keyframe_pending is (1000 * (second - 1) < SIZE_WATCH_MS), second
    # a watch that ends while a subscriber waits for a keyframe leaves its wait alone
    pub.send("f", False, now + 11_000, frames=30, packets=6)
    pub.group.tick(now + 12_000)
    assert f.keyframe_pending and not f.keyframe_wanted()  # the watch
    f.add_switcher(subscriber(link), now + 12_000)
    for second in range(13, 25):
        pub.send("f", False, now + 1000 * (second - 1), frames=30, packets=6)
        pub.group.tick(now + 1000 * second)
    assert f.keyframe_pending and f.keyframe_wanted()


def test_sources_lists_a_group_once() -> None:
    counters = MediaCounters()
    pub = Publisher(counters)
    audio = PublishedTrack(kind="audio", ssrc=9, codecs=[TrackCodec("opus", 48000, 111)], mid="1", owner="alice",
                           counters=counters, request_keyframe=lambda s: None)
    listed = list(sources([*pub.layers.values(), audio]))
    assert listed == [pub.layers["q"], audio] and pub.group.primary is pub.layers["q"]


def test_group_needs_distinct_rids() -> None:
    counters = MediaCounters()
    tracks = [PublishedTrack(kind="video", ssrc=i, codecs=[VP8], mid="0", owner="a", counters=counters,
                             request_keyframe=lambda s: None, rid="x") for i in range(2)]
    with pytest.raises(ValueError, match="distinct"):
        SimulcastGroup(tracks)


# -- learning layers from the rid extension -----------------------------------------------------------


def _publisher_sink(counters: MediaCounters) -> tuple[Participant, PublisherSink, Publisher]:
    pub = Publisher(counters, known=False)
    participant = Participant(identity="alice", room_id="room-1", kind=ParticipantKind.WHIP)
    for layer in pub.layers.values():
        participant.tracks[layer.ssrc] = layer
    return participant, PublisherSink(participant, counters), pub


def _feed(sink: PublisherSink, ssrc: int, seq: int, extensions: list[tuple[int, bytes]]) -> None:
    data = rtp_bytes(seq, seq * 3000, ssrc=ssrc, pt=96, payload=VP8_DELTA, extensions=extensions)
    sink.on_rtp(None, memoryview(data), len(data), T0)


@pytest.mark.parametrize(
    ("extensions", "learnt", "rtx_of", "drop"),
    [
        ([(1, b"0"), (2, b"h")], "h", None, None),
        ([(2, b"f")], "f", None, None),  # no mid extension: the rid alone names the layer
        ([(1, b"0"), (3, b"q")], None, "q", DropReason.RTX_UNKNOWN),  # repaired rid: RTX of q
        ([(1, b"0")], None, None, DropReason.RTP_UNKNOWN_SSRC),  # names no layer
        ([(1, b"7"), (2, b"h")], None, None, DropReason.RTP_UNKNOWN_SSRC),  # another section's rid
        ([(2, b"x")], None, None, DropReason.RTP_UNKNOWN_SSRC),  # a rid the offer did not have
        ([], None, None, DropReason.RTP_UNKNOWN_SSRC),
    ],
)
def test_publisher_sink_learns_layers_from_rid(
    extensions: list[tuple[int, bytes]], learnt: str | None, rtx_of: str | None, drop: DropReason | None
) -> None:
    counters = MediaCounters()
    participant, sink, pub = _publisher_sink(counters)
    _feed(sink, 0xCAFE, 10, extensions)
    if learnt is not None:
        layer = pub.layers[learnt]
        assert layer.ssrc == 0xCAFE and participant.tracks[0xCAFE] is layer
        assert layer.stats.packets == 1
        _feed(sink, 0xCAFE, 11, [])  # later packets carry no rid: routed by SSRC
        assert layer.stats.packets == 2
        assert len([s for s in participant.tracks if s < 0]) == 2
    else:
        assert sorted(participant.tracks) == [-3, -2, -1]
    if rtx_of is not None:
        assert pub.layers[rtx_of].rtx_ssrc == 0xCAFE and sink.rtx_ssrcs[0xCAFE] is pub.layers[rtx_of]
    assert sum(counters.drops) == (1 if drop is not None else 0)
    if drop is not None:
        assert counters.drops[drop] == 1


def test_a_layer_keyframe_request_waits_for_its_ssrc() -> None:
    counters = MediaCounters()
    _participant, sink, pub = _publisher_sink(counters)
    f = pub.layers["f"]
    assert f.request_keyframe(T0) is False and pub.plis == []  # no SSRC to send a PLI for yet
    _feed(sink, 0xF00D, 1, [(2, b"f")])
    assert pub.plis == [0xF00D]  # owed, sent with the layer's first packet


# -- one layer per subscriber, switching at keyframes ---------------------------------------------------


async def test_default_target_is_the_highest_active_layer(link: Link) -> None:
    pub = Publisher(link.counters)
    for rid in ("q", "h"):  # "f" has not started yet
        pub.send(rid, True, T0)
    dt = subscriber(link)
    dt.bind(pub.layers["q"], T0)  # binding to any layer: the group chooses
    assert dt.source is pub.layers["h"] and dt in pub.group.subscribers
    pub.send("q", True, T0 + 10)
    pub.send("h", True, T0 + 10)
    got = await receive_all(link)
    assert [layer_of(p) for p in got] == ["h"]


async def test_switch_happens_only_at_the_target_layers_keyframe(link: Link) -> None:
    pub = Publisher(link.counters)
    dt = subscriber(link)
    dt.bind(pub.layers["f"], T0)
    for rid in ("q", "h", "f"):
        pub.send(rid, True, T0)
    pub.plis.clear()
    pub.group.set_target(dt, "q", T0 + 40)
    assert pub.plis == [SSRCS["q"]] and dt.pending_source is pub.layers["q"]
    for i in range(3):  # q sends inter frames only: f keeps being forwarded
        for rid in ("q", "h", "f"):
            pub.send(rid, False, T0 + 50 + 33 * i)
    assert dt.source is pub.layers["f"]
    pub.send("q", True, T0 + 200)  # the keyframe: f is left here
    for rid in ("q", "h", "f"):
        pub.send(rid, False, T0 + 233)
    got = await receive_all(link)
    assert [layer_of(p) for p in got] == ["f", "f", "f", "f", "q", "q"]
    assert got[4].payload.startswith(VP8_KEY)
    assert_continuous(got)
    assert dt.source is pub.layers["q"] and dt.pending_source is None
    assert pub.layers["f"].downtracks == [] and pub.layers["q"].downtracks == [dt]


async def test_changing_the_target_back_cancels_a_pending_switch(link: Link) -> None:
    pub = Publisher(link.counters)
    dt = subscriber(link)
    dt.bind(pub.layers["f"], T0)
    pub.send("f", True, T0)
    pub.send("h", False, T0)
    pub.group.set_target(dt, "h", T0 + 10)
    assert pub.layers["h"].switching == [dt]
    pub.group.set_target(dt, "f", T0 + 20)
    assert pub.layers["h"].switching == [] and dt.pending_source is None
    pub.send("h", True, T0 + 30)
    pub.send("f", False, T0 + 30)
    assert [layer_of(p) for p in await receive_all(link)] == ["f", "f"]
    assert dt.source is pub.layers["f"]


SWITCHES = [
    pytest.param(["h", "q", "f"], {}, id="down-down-up"),
    pytest.param(["q", "f", "q", "f"], {}, id="back-and-forth"),
    pytest.param(["h", "q"], {"q": 65534, "h": 65533}, id="sequence-wraps"),
    pytest.param(["q", "h"], {"q": 1, "h": 65535, "f": 30000}, id="targets-older-sequence"),
]


@pytest.mark.parametrize(("targets", "start_seq"), SWITCHES)
async def test_continuity_across_switches(link: Link, targets: list[str], start_seq: dict[str, int]) -> None:
    pub = Publisher(link.counters)
    pub.seq.update(start_seq)
    pub.ts["h"] = 0xFFFFF000  # a timestamp that wraps
    dt = subscriber(link)
    dt.bind(pub.layers["f"], T0)
    now = T0
    expected: list[str] = []
    current = "f"
    for rid in ("q", "h", "f"):
        pub.send(rid, True, now)
    expected.append("f")
    for target in targets:
        now += 100
        pub.group.set_target(dt, target, now)
        for rid in ("q", "h", "f"):  # inter frames: still the old layer, one packet each frame
            pub.send(rid, False, now, packets=2)
        expected += [current, current]
        pub.send(target, True, now + 33, packets=3)  # the target's keyframe, three packets
        for rid in ("q", "h", "f"):
            pub.send(rid, False, now + 66, packets=2)
        expected += [target] * 5
        current = target
    got = await receive_all(link)
    assert [layer_of(p) for p in got] == expected
    assert_continuous(got)
    assert dt.packets_sent == len(expected)


async def test_a_stopped_layer_moves_its_subscribers_down_and_back_up(link: Link) -> None:
    pub = Publisher(link.counters)
    dt = subscriber(link)
    dt.bind(pub.layers["f"], T0)
    for rid in ("q", "h", "f"):
        pub.send(rid, True, T0, frames=5)
    pub.group.tick(T0 + 1000)
    assert dt.pending_source is None
    # the publisher pauses "f": after a tick without its packets, the subscriber moves to "h"
    for rid in ("q", "h"):
        pub.send(rid, False, T0 + 1000, frames=5)
    pub.plis.clear()
    pub.group.tick(T0 + 2000)
    assert dt.pending_source is pub.layers["h"] and pub.plis == [SSRCS["h"]]
    pub.send("h", True, T0 + 2010)
    assert dt.source is pub.layers["h"]
    # "f" comes back: the next tick moves the subscriber up again (its target is still the highest)
    pub.send("f", False, T0 + 2100, frames=3)
    pub.group.tick(T0 + 3000)
    assert dt.pending_source is pub.layers["f"]
    pub.send("f", True, T0 + 3010)
    assert dt.source is pub.layers["f"] and dt.target_rid is None
    got = await receive_all(link)
    assert "".join(layer_of(p) for p in got).strip("f") == "h"  # f...f h f...
    assert_continuous(got)


async def test_a_target_that_does_not_send_gets_the_best_layer_below(link: Link) -> None:
    pub = Publisher(link.counters)
    for rid in ("q", "h", "f"):
        pub.send(rid, True, T0)
    pub.group.tick(T0 + 1000)
    pub.send("q", False, T0 + 1000)
    pub.group.tick(T0 + 2000)  # h and f stopped
    dt = subscriber(link, target="h")
    dt.bind(pub.layers["f"], T0 + 2000)
    assert dt.source is pub.layers["q"] and dt.target_rid == "h"
    described = pub.group.describe(dt)
    assert described == {
        "layers": [
            {"rid": "q", "active": True, "width": 320, "height": 240},  # VP8_KEY's size
            {"rid": "h", "active": False, "width": 320, "height": 240},
            {"rid": "f", "active": False, "width": 320, "height": 240},
        ],
        "target": "h",
        "current": "q",
        "switching_to": None,
    }


async def test_router_set_layer(link: Link) -> None:
    pub = Publisher(link.counters)
    pub.send("q", False, T0)
    pub.send("f", False, T0)
    viewer = Participant(identity="bob", room_id="room-1", kind=ParticipantKind.WHEP)
    dt = subscriber(link)
    viewer.downtracks.append(dt)
    dt.bind(pub.layers["q"], T0)
    assert dt.source is pub.layers["f"]
    pub.send("f", True, T0 + 5)  # media flows: a change of layer waits for q's keyframe
    result = Router.set_layer(viewer, dt, "q", T0 + 10)
    assert (result["target"], result["current"], result["switching_to"]) == ("q", "f", "q")
    with pytest.raises(ApiError) as bad:
        Router.set_layer(viewer, dt, "x", T0 + 20)
    assert bad.value.code == "bad_request" and "q, h, f" in bad.value.detail
    other = subscriber(link)
    with pytest.raises(ApiError) as missing:
        Router.set_layer(viewer, other, "q", T0 + 20)
    assert missing.value.code == "not_found"
    plain = PublishedTrack(kind="video", ssrc=7, codecs=[VP8], mid="0", owner="carol", counters=link.counters,
                           request_keyframe=lambda s: None)
    dt.bind(plain, T0 + 30)
    with pytest.raises(ApiError) as not_simulcast:
        Router.set_layer(viewer, dt, "q", T0 + 40)
    assert not_simulcast.value.code == "bad_request"
    assert dt.pending_source is None and pub.layers["q"].switching == []
