"""One recorded track in the recorder process: jitter buffer, depacketizer, PyAV muxer.

Remux only: the frames the publisher encoded go into the file as they are (``add_mux_stream``:
no codec context is opened).  VP8, VP9, AV1 and Opus go in WebM, H264 in Matroska (``.mkv``,
which stays playable up to its last cluster when the process dies, unlike an MP4 without its
``moov``).  Each file starts at its first frame (pts 0); where that frame falls on the
publisher's clock comes from its RTCP sender reports (NTP), reported as ``started_at`` so that
files of one participant can be lined up (their ``offset_s`` in the recording).

A simulcast source is recorded one layer at a time (``sfu.recording.follow``); a move to another
layer (``on_layer``) starts a new *segment* of the same file: what the old layer left in the
jitter buffer and the assembler is written, then the new layer's packets (another sequence and
timestamp space, from a keyframe) go through a fresh jitter buffer and assembler.  Its
timestamps are put on the file's timeline (the first layer's RTP clock) through the two layers'
sender reports (the same publisher clock), or, without them, after the last frame by the time
between the packets' arrivals.  ``layers`` lists each segment's rid and where it starts.
"""

from __future__ import annotations

import json
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
#: a layer's timestamps mapped by sender reports further than this from the file's last frame are
#: not believed (the arrival times place the segment instead)
MAX_SWITCH_JUMP_S = 10
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
        self._first_ts = -1  # the first frame's timestamp on the file's timeline (extended)
        self._last_ts = -1  # the last frame's, on the file's timeline
        self._last_pts = -1
        #: the publisher's sender reports (NTP 64-bit, RTP ts) in the file's timestamp space (the
        #: first segment's), the first ``MAX_REPORTS``
        self.reports: list[tuple[int, int]] = []
        # -- segments (simulcast layers) --
        self._seg_last = -1  # the segment's last frame's extended timestamp, in its own space
        self._seg_offset: int | None = 0  # segment space + offset = file timeline; None: not placed yet
        self._seg_sr: tuple[float, int] | None = None  # the segment's newest report: (NTP s, RTP ts)
        self._file_sr: tuple[float, int] | None = None  # a report on the file's timeline: (NTP s, ext ts)
        self._arrival = 0  # the arrival (ms, 32 bits) of the packet being taken
        self._switch_arrival = 0  # the last packet's before the move
        self._pending_rid: str | None = None
        self._file_space = True  # the segment's timestamps are the file's (its reports date the file)
        rid = spec.get("rid")
        #: the layers recorded: rid and the second of the file it starts at
        self.layers: list[dict[str, Any]] = [{"rid": rid, "at_s": 0.0}] if isinstance(rid, str) else []
        self._past = {"frames": 0, "frames_skipped": 0, "malformed": 0, "packets_lost": 0, "packets_late": 0}
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
        self._arrival = arrival_ms
        skipped = self.assembler.frames_skipped
        self._take(self.jitter.push(seq, arrival_ms, (ts, marker, payload)), budget)
        if self.assembler.frames_skipped != skipped and arrival_ms - self._last_pli_ms >= KEYFRAME_REQUEST_INTERVAL_MS:
            self._last_pli_ms = arrival_ms
            return self.codec.is_video
        return False

    def on_sr(self, ntp: int, rtp_ts: int) -> None:
        self._seg_sr = ((ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32, rtp_ts)
        if self._file_space and len(self.reports) < MAX_REPORTS:
            self.reports.append((ntp, rtp_ts))

    def on_layer(self, body: bytes, arrival_ms: int, budget: list[int]) -> None:
        """The track's packets are another layer's from the next one on: the segment so far is
        written out, the next one starts fresh (placed on the timeline at its first frame)."""
        self._take(self.jitter.flush(), budget)
        self._write(self.assembler.flush(), budget)
        if self._seg_sr is not None and self._seg_offset is not None and self._seg_last >= 0:
            ntp_s, rtp_ts = self._seg_sr
            self._file_sr = (ntp_s, self._extend(rtp_ts) + self._seg_offset)
        past = self._past
        past["frames"] += self.assembler.frames
        past["frames_skipped"] += self.assembler.frames_skipped
        past["malformed"] += self.assembler.malformed
        past["packets_lost"] += self.jitter.lost
        past["packets_late"] += self.jitter.late
        self.jitter = JitterBuffer(max_packets=JITTER_MAX_PACKETS, max_delay_ms=JITTER_MAX_DELAY_MS)
        self.assembler = FrameAssembler(self.codec)
        # a file without a frame yet: the new layer's space becomes the file's
        self._file_space = self._first_ts < 0
        self._seg_offset = 0 if self._file_space else None
        if self._file_space:
            self.reports.clear()
            self.layers.clear()
        self._seg_last = -1
        self._seg_sr = None
        self._switch_arrival = self._arrival
        try:
            rid = json.loads(body).get("rid")
        except (ValueError, AttributeError):
            rid = None
        self._pending_rid = rid if isinstance(rid, str) else None
        if self._file_space and self._pending_rid is not None:
            self.layers.append({"rid": self._pending_rid, "at_s": 0.0})

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
            seg_ext = self._extend(frame.timestamp)
            self._seg_last = seg_ext
            if self._seg_offset is None:
                self._seg_offset = self._place(seg_ext)
                at = (seg_ext + self._seg_offset - self._first_ts) / self.clock_rate
                self.layers.append({"rid": self._pending_rid, "at_s": round(at, 3)})
            ext = seg_ext + self._seg_offset
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
        """``ts`` extended in the segment's own space (near its last frame's)."""
        if self._seg_last < 0:
            return ts
        delta = (ts - self._seg_last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return self._seg_last + delta

    def _place(self, seg_ext: int) -> int:
        """The offset that puts a new segment's first frame (``seg_ext``, its own space) on the
        file's timeline: where the publisher's clock says (both layers' sender reports), else the
        time between the old layer's last packet and this one after the last frame; never at or
        before the last frame."""
        clock = self.clock_rate
        target: int | None = None
        if self._seg_sr is not None and self._file_sr is not None:
            ntp_new, rtp_new = self._seg_sr
            delta = (rtp_new - seg_ext) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            frame_ntp = ntp_new - delta / clock
            ntp_file, ext_file = self._file_sr
            target = ext_file + round((frame_ntp - ntp_file) * clock)
            if abs(target - self._last_ts) > MAX_SWITCH_JUMP_S * clock:
                target = None  # reports that do not agree: placed by arrival
        if target is None:
            waited = (self._arrival - self._switch_arrival) & 0xFFFFFFFF
            target = self._last_ts + waited * clock // 1000
        return max(target, self._last_ts + 1) - seg_ext

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
        past = self._past
        frames = past["frames"] + self.assembler.frames
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
                "packets_lost": past["packets_lost"] + self.jitter.lost,
                "packets_late": past["packets_late"] + self.jitter.late,
                "frames_skipped": past["frames_skipped"] + self.assembler.frames_skipped,
                "malformed": past["malformed"] + self.assembler.malformed + self.malformed_packets,
            },
            "truncated": self.truncated,
            "layers": self.layers,
        }
