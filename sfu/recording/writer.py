"""One recorded track in the recorder process: jitter buffer, depacketizer, PyAV muxer.

Remux only: the frames the publisher encoded go into the file as they are (``add_mux_stream``:
no codec context is opened).  VP8, VP9, AV1 and Opus go in WebM, H264 in Matroska (``.mkv``,
which stays playable up to its last cluster when the process dies, unlike an MP4 without its
``moov``).  Each file starts at its first frame (pts 0); where that frame falls on the
publisher's clock comes from its RTCP sender reports (NTP), reported as ``started_at`` so that
files of one participant can be lined up (their ``offset_s`` in the recording).
"""

from __future__ import annotations

import os
import statistics
from fractions import Fraction
from typing import Any

import av

from sfu.packet.depacketize import (
    Codec,
    Frame,
    FrameAssembler,
    av1_dimensions,
    codec_of,
    h264_dimensions,
    vp9_dimensions,
)
from sfu.packet.jitter import Gap, JitterBuffer
from sfu.recording.ogg import opus_template

NTP_UNIX_OFFSET = 2_208_988_800
#: how long the recorder waits for a missing packet (the node's NACK to the publisher and its
#: retransmission) before it is given up, and how many packets it holds meanwhile
JITTER_MAX_DELAY_MS = 1000
JITTER_MAX_PACKETS = 1024
KEYFRAME_REQUEST_INTERVAL_MS = 1000
PLACEHOLDER_SIZE = (640, 480)
#: sender reports kept per track: where the first frame falls is their median (one report sent
#: late by a loaded publisher does not move it)
MAX_REPORTS = 64
#: a cluster a second at most, written out as soon as it closes: a recorder that dies loses at
#: most about a second, and a full disk is found within a second or so (not at the end)
MUXER_OPTIONS = {"cluster_time_limit": "1000", "cluster_size_limit": "1048576", "flush_packets": "1"}

_Packet = tuple[int, bool, bytes]  # RTP timestamp, marker, payload


class WriteFailed(Exception):
    """The file could not be opened or written (full disk, unwritable directory)."""


def _rtp_fields(packet: bytes) -> tuple[int, int, bool, bytes] | None:
    """(sequence number, timestamp, marker, payload) of a clear RTP packet; None when malformed."""
    n = len(packet)
    if n < 12 or packet[0] & 0xC0 != 0x80:
        return None
    pos = 12 + (packet[0] & 0x0F) * 4
    if packet[0] & 0x10:
        if pos + 4 > n:
            return None
        pos += 4 + ((packet[pos + 2] << 8) | packet[pos + 3]) * 4
    end = n
    if packet[0] & 0x20:
        end -= packet[-1]
    if pos > end:
        return None
    seq = (packet[2] << 8) | packet[3]
    ts = int.from_bytes(packet[4:8], "big")
    return seq, ts, bool(packet[1] & 0x80), packet[pos:end]


def _vp8_size(data: bytes) -> tuple[int, int]:
    """A VP8 keyframe's width and height (RFC 6386 §9.1), (0, 0) when not found."""
    if len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        return (data[6] | (data[7] << 8)) & 0x3FFF, (data[8] | (data[9] << 8)) & 0x3FFF
    return 0, 0


class TrackWriter:
    def __init__(self, directory: str, index: int, spec: dict[str, Any]) -> None:
        codec = codec_of(str(spec.get("codec", "")))
        if codec is None:
            raise ValueError(f"codec {spec.get('codec')!r} cannot be recorded")
        self.codec = codec
        self.index = index
        self.sid = str(spec.get("sid", ""))
        self.kind = "video" if codec.is_video else "audio"
        self.clock_rate = int(spec.get("clock_rate") or (48000 if codec is Codec.OPUS else 90000))
        ext = "mkv" if codec is Codec.H264 else "webm"
        self.name = f"track{index}-{self.kind}-{codec.value.lower()}.{ext}"
        self.path = os.path.join(directory, self.name)
        self.jitter: JitterBuffer[_Packet] = JitterBuffer(max_packets=JITTER_MAX_PACKETS, max_delay_ms=JITTER_MAX_DELAY_MS)
        self.assembler = FrameAssembler(codec)
        self._container: Any = None
        self._stream: Any = None
        self._time_base = Fraction(1, self.clock_rate)
        self._first_ts = -1  # extended RTP timestamp of the first frame
        self._last_ts = -1
        self._last_pts = -1
        #: the publisher's sender reports (NTP 64-bit, RTP ts), the first ``MAX_REPORTS``
        self.reports: list[tuple[int, int]] = []
        self.frame_bytes = 0
        self.malformed_packets = 0
        self.truncated = False
        self._last_pli_ms = -KEYFRAME_REQUEST_INTERVAL_MS

    # -- input -------------------------------------------------------------------------------
    def on_rtp(self, packet: bytes, arrival_ms: int, budget: list[int]) -> bool:
        """One packet; True when a keyframe should be asked for (frames are being skipped)."""
        fields = _rtp_fields(packet)
        if fields is None:
            self.malformed_packets += 1
            return False
        seq, ts, marker, payload = fields
        skipped = self.assembler.frames_skipped
        self._take(self.jitter.push(seq, arrival_ms, (ts, marker, payload)), budget)
        if self.assembler.frames_skipped != skipped and arrival_ms - self._last_pli_ms >= KEYFRAME_REQUEST_INTERVAL_MS:
            self._last_pli_ms = arrival_ms
            return self.codec.is_video
        return False

    def on_sr(self, ntp: int, rtp_ts: int) -> None:
        if len(self.reports) < MAX_REPORTS:
            self.reports.append((ntp, rtp_ts))

    def finish(self, budget: list[int]) -> None:
        self._take(self.jitter.flush(), budget)
        self._write(self.assembler.flush(), budget)
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError) as exc:
                raise WriteFailed(f"{self.name}: {exc}") from exc

    def _take(self, released: list[_Packet | Gap], budget: list[int]) -> None:
        frames: list[Frame] = []
        for item in released:
            if isinstance(item, Gap):
                self.assembler.gap()
            else:
                frames += self.assembler.push(*item)
        self._write(frames, budget)

    # -- output ------------------------------------------------------------------------------
    def _open(self, first: Frame) -> None:
        fmt = "matroska" if self.codec is Codec.H264 else "webm"
        name = {Codec.VP8: "vp8", Codec.VP9: "vp9", Codec.AV1: "av1", Codec.H264: "h264", Codec.OPUS: "opus"}[self.codec]
        try:
            self._container = av.open(self.path, "w", format=fmt, options=MUXER_OPTIONS)
            if self.codec.is_video:
                size = {
                    Codec.VP8: _vp8_size,
                    Codec.VP9: vp9_dimensions,
                    Codec.AV1: av1_dimensions,
                    Codec.H264: h264_dimensions,
                }[self.codec]
                width, height = size(first.data)  # the first frame is a keyframe
                if not width or not height:
                    width, height = PLACEHOLDER_SIZE  # the muxers refuse a video stream without
                self._stream = self._container.add_mux_stream(name, width=width, height=height)
            else:  # Opus: from a template carrying OpusHead (sfu.recording.ogg)
                template, stream = opus_template()
                try:
                    self._stream = self._container.add_stream_from_template(stream)
                finally:
                    template.close()
            self._stream.time_base = self._time_base
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise WriteFailed(f"{self.name}: {exc}") from exc

    def _write(self, frames: list[Frame], budget: list[int]) -> None:
        for frame in frames:
            if self.truncated:
                return
            if budget[0] < len(frame.data):
                self.truncated = True  # the recording's size limit: no more frames are written
                return
            if self._container is None:
                self._open(frame)
            ext = self._extend(frame.timestamp)
            if self._first_ts < 0:
                self._first_ts = ext
            pts = ext - self._first_ts
            if pts <= self._last_pts:
                pts = self._last_pts + 1
            self._last_pts = pts
            self._last_ts = ext
            packet = av.Packet(frame.data)
            packet.stream = self._stream
            packet.pts = packet.dts = pts
            packet.time_base = self._time_base  # the muxer changes the stream's (WebM: 1/1000)
            packet.is_keyframe = frame.keyframe
            try:
                self._container.mux(packet)
            except (av.FFmpegError, OSError) as exc:
                raise WriteFailed(f"{self.name}: {exc}") from exc
            budget[0] -= len(frame.data)
            self.frame_bytes += len(frame.data)

    def _extend(self, ts: int) -> int:
        if self._last_ts < 0:
            return ts
        delta = (ts - self._last_ts) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return self._last_ts + delta

    # -- the result --------------------------------------------------------------------------
    @property
    def started_at(self) -> float | None:
        """The first frame's time on the publisher's wall clock (Unix seconds): the median of
        what each of its sender reports says; None without one."""
        if not self.reports or self._first_ts < 0:
            return None
        first = self._first_ts & 0xFFFFFFFF
        starts = []
        for ntp, rtp_ts in self.reports:
            delta = (first - rtp_ts) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            starts.append((ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32 - NTP_UNIX_OFFSET + delta / self.clock_rate)
        return statistics.median(starts)

    def describe(self) -> dict[str, Any]:
        frames = self.assembler.frames
        span = (self._last_ts - self._first_ts) / self.clock_rate if self._first_ts >= 0 else 0.0
        # the last frame lasts as long as the frames before it did on average
        duration = span + (span / (frames - 1) if frames > 1 else 0.0)
        size = os.path.getsize(self.path) if self._container is not None and os.path.exists(self.path) else 0
        return {
            "name": self.name if self._container is not None else None,
            "track": self.sid,
            "kind": self.kind,
            "codec": self.codec.value,
            "duration_s": round(duration, 3),
            "bytes": size,
            "frames": frames,
            "started_at": self.started_at,
            "gaps": {
                "packets_lost": self.jitter.lost,
                "packets_late": self.jitter.late,
                "frames_skipped": self.assembler.frames_skipped,
                "malformed": self.assembler.malformed + self.malformed_packets,
            },
            "truncated": self.truncated,
        }
