"""SCTP packets: the common header (ports, verification tag, CRC32c) and chunks (RFC 9260 3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

import google_crc32c

from sfu.transport.sctp.chunks import Chunk, parse_chunks

_COMMON = Struct("!HHI")
_CRC = Struct("<I")
COMMON_HEADER_LEN = 12


def checksum(data: bytes) -> int:
    """The packet's CRC32c, computed with the checksum field zeroed."""
    return int(google_crc32c.value(data[:8] + b"\x00\x00\x00\x00" + data[12:]))


@dataclass(frozen=True)
class Packet:
    source_port: int
    destination_port: int
    verification_tag: int
    chunks: tuple[Chunk, ...]

    @classmethod
    def parse(cls, data: bytes) -> Packet:
        """ValueError when too short, the CRC32c does not match, or a chunk is malformed."""
        if len(data) < COMMON_HEADER_LEN + 4:
            raise ValueError(f"packet: {len(data)} bytes is shorter than a header and one chunk")
        if _CRC.unpack_from(data, 8)[0] != checksum(data):
            raise ValueError("packet: bad CRC32c")
        src, dst, tag = _COMMON.unpack_from(data)
        return cls(src, dst, tag, tuple(parse_chunks(memoryview(data)[COMMON_HEADER_LEN:])))

    def __bytes__(self) -> bytes:
        return encode(self.source_port, self.destination_port, self.verification_tag, b"".join(bytes(c) for c in self.chunks))


def encode(source_port: int, destination_port: int, tag: int, chunk_bytes: bytes) -> bytes:
    head = _COMMON.pack(source_port, destination_port, tag)
    body = head + b"\x00\x00\x00\x00" + chunk_bytes
    return head + _CRC.pack(int(google_crc32c.value(body))) + chunk_bytes


def has_valid_checksum(data: bytes) -> bool:
    return len(data) >= COMMON_HEADER_LEN and _CRC.unpack_from(data, 8)[0] == checksum(data)
