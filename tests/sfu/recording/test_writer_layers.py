"""A recorded simulcast source that moves to another layer (``TrackWriter.on_layer``): one file
whose frames decode, the first layer's then the second's (another size, another RTP timestamp
space), placed on the file's timeline by the two layers' sender reports, or by the packets'
arrival times without them; ``layers`` says where each starts.  Real VP8 frames (aiortc's
encoder), decoded back with PyAV."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import pytest
from aiortc.codecs.vpx import Vp8Encoder

from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.recording.writer import TrackWriter

NTP_T0 = (3_970_000_000 << 32) | (1 << 31)  # some NTP time, x.5 s
FRAME_TICKS = 3000  # 30 fps at 90 kHz
#: rid -> (width, height, RTP timestamp of frame 0, SSRC, first sequence number)
LAYERS = {"h": (320, 240, 4_000_000_000, 0x1111, 65_000), "f": (640, 480, 123_456, 0x2222, 100)}


def _packets(rid: str, frames: range) -> list[tuple[int, bytes]]:
    """(frame number, RTP packet) of layer ``rid``'s frames, the first one a keyframe."""
    width, height, ts0, ssrc, seq = LAYERS[rid]
    encoder = Vp8Encoder()
    picture = av.VideoFrame(width, height, "yuv420p")
    for i, plane in enumerate(picture.planes):
        plane.update(bytes([80 + 30 * i]) * plane.buffer_size)
    out: list[tuple[int, bytes]] = []
    for k, n in enumerate(frames):
        picture.pts, picture.time_base = n * FRAME_TICKS, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(picture, force_keyframe=k == 0)
        for p, payload in enumerate(payloads):
            header = RtpHeader(payload_type=96, sequence_number=seq & 0xFFFF, ssrc=ssrc, marker=p == len(payloads) - 1,
                               timestamp=(ts0 + n * FRAME_TICKS) & 0xFFFFFFFF)
            out.append((n, bytes(RtpPacket(header, payload))))
            seq += 1
    return out


def _decoded(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.width) for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("reports", [True, False], ids=["sender-reports", "arrival-times"])
def test_a_layer_move_continues_the_file_on_its_timeline(tmp_path: Path, reports: bool) -> None:
    w = TrackWriter(str(tmp_path), 0, {"sid": "TR_x", "kind": "video", "codec": "VP8", "clock_rate": 90000, "rid": "h"})
    budget = [1 << 30]
    if reports:  # both layers' reports: frame 0 of each at NTP_T0 (one camera, one clock)
        w.on_sr(NTP_T0, LAYERS["h"][2])
    for n, packet in _packets("h", range(0, 30)):
        w.on_rtp(packet, n * 33, budget)
    w.on_layer(b'{"rid": "f"}', 30 * 33, budget)
    if reports:
        w.on_sr(NTP_T0 + (10 << 32), (LAYERS["f"][2] + 10 * 90000) & 0xFFFFFFFF)  # a report 10 s on
    for n, packet in _packets("f", range(30, 60)):
        w.on_rtp(packet, n * 33, budget)
    w.finish(budget)
    view = w.describe()
    assert view["frames"] == 60 and view["gaps"]["frames_skipped"] == 0 and view["gaps"]["packets_lost"] == 0
    frames = _decoded(tmp_path / view["name"])
    assert [width for _, width in frames] == [320] * 30 + [640] * 30  # every frame decodes, h then f
    times = [t for t, _ in frames]
    assert times == sorted(times) and len(set(times)) == 60
    switch = times[30]
    if reports:  # where the publisher's clock puts frame 30: 1 s in (the file's ms precision)
        assert abs(switch - 1.0) <= 0.001, switch
        assert view["layers"] == [{"rid": "h", "at_s": 0.0}, {"rid": "f", "at_s": 1.0}]
    else:  # after frame 29 by the 33 ms between the arrivals
        assert abs(switch - (29 * FRAME_TICKS / 90000 + 0.033)) <= 0.001, switch
        assert [x["rid"] for x in view["layers"]] == ["h", "f"] and abs(view["layers"][1]["at_s"] - switch) <= 0.001
    assert abs(view["duration_s"] - 2.0) < 0.05, view


def test_a_move_before_the_first_frame_makes_the_new_layer_the_files() -> None:
    w = TrackWriter("/nonexistent", 0, {"sid": "TR_x", "codec": "VP8", "clock_rate": 90000, "rid": "q"})
    budget = [1 << 30]
    w.on_sr(NTP_T0, 5)
    w.on_layer(b'{"rid": "f"}', 0, budget)  # nothing written yet: no file opened
    w.on_sr(NTP_T0, 7)
    assert w.layers == [{"rid": "f", "at_s": 0.0}] and w.reports == [(NTP_T0, 7)]
