"""The recorder's parts that need no process: the wire's framing, the RTP fields the writer
reads, the Opus template, the retention sweeper (an injected clock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sfu.config import load
from sfu.recording.manager import RecordingManager
from sfu.recording.ogg import opus_ogg, opus_template
from sfu.recording.tap import TapBuffer
from sfu.recording.wire import SR_BODY, Kind, Reader, encode, track_message
from sfu.recording.writer import _rtp_fields, _vp8_size


def test_wire_frames_survive_any_split() -> None:
    spec = track_message(0, {"sid": "TR_x", "codec": "VP8"})
    stream = (
        spec
        + encode(Kind.RTP, 0, 1234, b"\x80" * 20)
        + encode(Kind.SR, 1, 0, SR_BODY.pack(1 << 40, 99))
        + encode(Kind.END, 0, 0, b"")
    )
    for step in (1, 3, 7, len(stream)):
        reader = Reader()
        got = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i : i + step])
        assert [(m.kind, m.track, m.arrival_ms, len(m.body)) for m in got] == [
            (Kind.TRACK, 0, 0, len(spec) - 8),
            (Kind.RTP, 0, 1234, 20),
            (Kind.SR, 1, 0, 12),
            (Kind.END, 0, 0, 0),
        ]
    with pytest.raises(ValueError):
        Reader().feed(b"\x09\x00\x00\x00\x00\x00\x00\x00")  # an unknown kind


@pytest.mark.parametrize(
    ("packet", "fields"),
    [
        (b"\x80\xe0\x00\x05" + (7).to_bytes(4, "big") + b"\x00" * 4 + b"ab", (5, 7, True, b"ab")),
        # one-byte header extension (1 word), padding of 2
        (b"\xb0\x60\x00\x06" + b"\x00" * 8 + b"\xbe\xde\x00\x01" + b"\x10\xff\x00\x00" + b"xy" + b"\x00\x02", (6, 0, False, b"xy")),
        (b"\x80\x60\x00", None),  # short
        (b"\x40" + b"\x00" * 11, None),  # version 1
        (b"\xa0\x60" + b"\x00" * 10 + b"\x09", None),  # padding longer than the payload
    ],
)
def test_rtp_fields(packet: bytes, fields: tuple[int, int, bool, bytes] | None) -> None:
    assert _rtp_fields(packet) == fields


def test_vp8_size_and_opus_template() -> None:
    assert _vp8_size(b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00") == (320, 240)
    assert _vp8_size(b"\x11\x02\x00") == (0, 0)
    container, stream = opus_template()
    try:
        assert stream.codec_context.extradata[:8] == b"OpusHead"
        assert stream.codec_context.extradata[10:12] == b"\x00\x00"  # pre-skip 0
    finally:
        container.close()
    assert opus_ogg().count(b"OggS") == 3


def test_sweeper_removes_old_recordings_only(tmp_path: Path) -> None:
    cfg = load(dev=True, flags={"recordings_dir": str(tmp_path), "recording_retention_days": 2}, environ={})
    manager = RecordingManager(cfg, lambda *a, **k: None)
    now = 1_800_000_000.0
    for name, age_days in (("RC_" + "1" * 16, 3), ("RC_" + "2" * 16, 1), ("not-a-recording", 30)):
        d = tmp_path / name
        d.mkdir()
        (d / "track0-video-vp8.webm").write_bytes(b"x")
        for p in (d / "track0-video-vp8.webm", d):
            os.utime(p, (now - age_days * 86400, now - age_days * 86400))
    assert manager.sweep(now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RC_" + "2" * 16, "not-a-recording"]
    assert manager.get("RC_" + "1" * 16) is None
    assert manager.get("../etc") is None


def test_taps_frame_packets_and_drop_when_full() -> None:
    taps = TapBuffer(size=64)
    video, audio = taps.make_tap(0), taps.make_tap(1)
    packet = memoryview(bytearray(b"\x80" + bytes(range(1, 30))))
    video(packet, 20, 1000)  # the first 20 bytes of a larger receive buffer
    audio(packet, 12, 1001)
    video(packet, 30, 1002)  # 8 + 30 more would pass 64 bytes: dropped, counted
    assert taps.dropped[:2] == [1, 0]
    assert taps.put(encode(Kind.END, 0, 0, b"")) is True
    assert taps.put(b"\x00" * 64) is False  # a control frame that does not fit: refused
    msgs = Reader().feed(taps.take())
    assert [(m.kind, m.track, m.arrival_ms, m.body) for m in msgs] == [
        (Kind.RTP, 0, 1000, bytes(packet[:20])),
        (Kind.RTP, 1, 1001, bytes(packet[:12])),
        (Kind.END, 0, 0, b""),
    ]
    assert taps.fill == 0 and taps.take() == b""
