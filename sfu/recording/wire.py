"""What the node and its recorder process say to each other.

Node to recorder (the recorder's stdin): frames of a header ``kind, track, length, arrival_ms``
(``!BBHI``) and ``length`` bytes:

* ``RTP``: one clear RTP packet of track ``track`` as the node received it (after SRTP);
* ``SR``: the track's latest RTCP sender report, ``!QI`` (NTP time, RTP timestamp);
* ``TRACK``: JSON ``{"sid", "kind", "codec", "clock_rate"}``, before the track's first packet;
* ``LAYER``: JSON ``{"rid"}``: from the next packet on, the track's packets are another simulcast
  layer's (another SSRC, sequence and timestamp space), starting at a keyframe; its sender
  report follows before its packets;
* ``END``: stop, finish the files.

Recorder to node (its stdout): one JSON object per line, ``{"event": ...}``: ``ready`` (the
directory is writable), ``pli`` (``track``: a keyframe is wanted), ``limit`` (the recording
reached its size limit: the node stops it), ``failed`` (``detail``),
``completed`` (``files``).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from struct import Struct
from typing import Any

HEADER = Struct("!BBHI")
SR_BODY = Struct("!QI")
MAX_TRACKS = 255
MAX_LINE_BYTES = 1 << 20


class Kind(enum.IntEnum):
    RTP = 1
    SR = 2
    TRACK = 3
    END = 4
    LAYER = 5


@dataclass(frozen=True)
class Message:
    kind: Kind
    track: int
    arrival_ms: int
    body: bytes


def encode(kind: Kind, track: int, arrival_ms: int, body: bytes) -> bytes:
    return HEADER.pack(kind, track, len(body), arrival_ms & 0xFFFFFFFF) + body


def track_message(track: int, spec: dict[str, Any]) -> bytes:
    return encode(Kind.TRACK, track, 0, json.dumps(spec).encode())


class Reader:
    """Frames from a byte stream read in arbitrary pieces; ValueError on an unknown kind."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        size = HEADER.size
        while len(buf) - pos >= size:
            kind, track, length, arrival = HEADER.unpack_from(buf, pos)
            if len(buf) - pos - size < length:
                break
            start = pos + size
            out.append(Message(Kind(kind), track, arrival, bytes(buf[start : start + length])))
            pos = start + length
        del buf[:pos]
        return out
