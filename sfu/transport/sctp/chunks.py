"""SCTP chunks (RFC 9260, RFC 3758 FORWARD-TSN, RFC 6525 RE-CONFIG) as dataclasses.

Each chunk has ``parse(flags, body)`` (``body``: the chunk value, without the 4-byte header and
padding; raises ``ValueError`` saying what is wrong) and ``__bytes__`` (the whole chunk, padded to
four bytes).  ``parse_chunks`` splits a packet's chunk area.  Unknown chunk types come back as
``UnknownChunk`` so the association can apply the action their type's two high bits ask for.

Import chunks from here.  The classes live in ``control_chunks`` (setup, heartbeat, abort,
shutdown) and ``data_chunks`` (DATA, SACK, FORWARD-TSN, RE-CONFIG), both on ``wire`` (type codes,
the chunk header, TLV parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.transport.sctp.control_chunks import (
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    ErrorChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
)
from sfu.transport.sctp.data_chunks import (
    DataChunk,
    ForwardTsnChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
)
from sfu.transport.sctp.wire import (
    CHUNK_HEADER,
    DATA_FLAG_BEGIN,
    DATA_FLAG_END,
    DATA_FLAG_UNORDERED,
    FLAG_T,
    ChunkType,
    Param,
    ParamType,
    ReconfigResult,
    encode_chunk,
    encode_params,
    padding,
    parse_params,
)

__all__ = [
    "DATA_FLAG_BEGIN",
    "DATA_FLAG_END",
    "DATA_FLAG_UNORDERED",
    "FLAG_T",
    "AbortChunk",
    "Chunk",
    "ChunkType",
    "CookieAckChunk",
    "CookieEchoChunk",
    "DataChunk",
    "ErrorChunk",
    "ForwardTsnChunk",
    "HeartbeatAckChunk",
    "HeartbeatChunk",
    "InitAckChunk",
    "InitChunk",
    "OutgoingResetRequest",
    "Param",
    "ParamType",
    "ReconfigChunk",
    "ReconfigResponse",
    "ReconfigResult",
    "SackChunk",
    "ShutdownAckChunk",
    "ShutdownChunk",
    "ShutdownCompleteChunk",
    "UnknownChunk",
    "encode_params",
    "parse_chunks",
    "parse_params",
]


@dataclass(frozen=True)
class UnknownChunk:
    type: int
    flags: int
    body: bytes = field(default=b"")

    @property
    def skip(self) -> bool:
        """RFC 9260 3.2: high bit set: skip it and go on with the packet; clear: stop there."""
        return bool(self.type & 0x80)

    def __bytes__(self) -> bytes:
        return encode_chunk(self.type, self.flags, self.body)


Chunk = (
    DataChunk
    | InitChunk
    | InitAckChunk
    | SackChunk
    | HeartbeatChunk
    | HeartbeatAckChunk
    | AbortChunk
    | ShutdownChunk
    | ShutdownAckChunk
    | ErrorChunk
    | CookieEchoChunk
    | CookieAckChunk
    | ShutdownCompleteChunk
    | ForwardTsnChunk
    | ReconfigChunk
    | UnknownChunk
)


_PARSERS: dict[int, Callable[[int, bytes], Chunk]] = {
    ChunkType.DATA: DataChunk.parse,
    ChunkType.INIT: InitChunk.parse,
    ChunkType.INIT_ACK: InitAckChunk.parse,
    ChunkType.SACK: SackChunk.parse,
    ChunkType.HEARTBEAT: HeartbeatChunk.parse,
    ChunkType.HEARTBEAT_ACK: HeartbeatAckChunk.parse,
    ChunkType.ABORT: AbortChunk.parse,
    ChunkType.SHUTDOWN: ShutdownChunk.parse,
    ChunkType.SHUTDOWN_ACK: ShutdownAckChunk.parse,
    ChunkType.ERROR: ErrorChunk.parse,
    ChunkType.COOKIE_ECHO: CookieEchoChunk.parse,
    ChunkType.COOKIE_ACK: CookieAckChunk.parse,
    ChunkType.SHUTDOWN_COMPLETE: ShutdownCompleteChunk.parse,
    ChunkType.FORWARD_TSN: ForwardTsnChunk.parse,
    ChunkType.RECONFIG: ReconfigChunk.parse,
}


def parse_chunks(data: bytes | memoryview) -> list[Chunk]:
    """Every chunk of a packet's chunk area; ``ValueError`` if any is malformed or truncated."""
    chunks: list[Chunk] = []
    offset = 0
    end = len(data)
    if end == 0:
        raise ValueError("packet: no chunks")
    while offset < end:
        if end - offset < 4:
            raise ValueError(f"packet: {end - offset} trailing bytes are not a chunk")
        type_, flags, length = CHUNK_HEADER.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"chunk type {type_}: length {length} does not fit the {end - offset} bytes left")
        body = bytes(data[offset + 4 : offset + length])
        parser = _PARSERS.get(type_)
        chunks.append(parser(flags, body) if parser is not None else UnknownChunk(type_, flags, body))
        offset += length + padding(length)
    return chunks
