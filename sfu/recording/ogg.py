"""A stream template carrying the Opus identification header (``OpusHead``, RFC 7845 §5.1).

WebM stores it as the Opus track's CodecPrivate, which players need; PyAV's muxing streams have
no way to set it, but a stream copied from a template carries its parameters (the template's
codec context is never opened: nothing is encoded).  The template is a three-page Ogg Opus
stream built here in memory: the header, empty tags, one empty (silent) 20 ms packet.  The
pre-skip is 0: samples of an RTP stream are not to be dropped at its start (audio stays lined up
with video).
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any

import av

OGG_CRC_POLY = 0x04C11DB7


def _crc(data: bytes) -> int:
    c = 0
    for b in data:
        c ^= b << 24
        for _ in range(8):
            c = ((c << 1) ^ OGG_CRC_POLY) & 0xFFFFFFFF if c & 0x80000000 else (c << 1) & 0xFFFFFFFF
    return c


def _page(packet: bytes, seq: int, flags: int, granule: int = 0) -> bytes:
    segments = [255] * (len(packet) // 255) + [len(packet) % 255]
    page = b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, 1, seq, 0, len(segments)) + bytes(segments) + packet
    return page[:22] + struct.pack("<I", _crc(page)) + page[26:]


@cache
def opus_ogg(channels: int = 2, rate: int = 48000) -> bytes:
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, rate, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 9) + b"levelchat" + struct.pack("<I", 0)
    return _page(head, 0, 0x02) + _page(tags, 1, 0) + _page(b"\xf8", 2, 0x04, 960)


def opus_template(channels: int = 2) -> tuple[Any, Any]:
    """(the template container, its Opus stream); close the container after use."""
    container = av.open(io.BytesIO(opus_ogg(channels)), format="ogg")
    return container, container.streams.audio[0]
