"""SCTP chunks that move data (RFC 9260 DATA and SACK, RFC 3758 FORWARD-TSN) and reset streams
(RFC 6525 RE-CONFIG with its request and response parameters).  Import them from ``chunks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from typing import ClassVar

from sfu.transport.sctp.wire import (
    DATA_FLAG_BEGIN,
    DATA_FLAG_END,
    DATA_FLAG_UNORDERED,
    U32,
    ChunkType,
    Param,
    ParamType,
    encode_chunk,
    encode_params,
    parse_params,
)

_DATA = Struct("!IHHI")
_SACK = Struct("!IIHH")
_GAP = Struct("!HH")
_FWD = Struct("!HH")
_RESET_OUT = Struct("!III")
_RESP = Struct("!II")


@dataclass(frozen=True)
class DataChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.DATA
    tsn: int
    stream: int
    ssn: int
    ppid: int
    data: bytes
    unordered: bool = False
    begin: bool = True
    end: bool = True

    @classmethod
    def parse(cls, flags: int, body: bytes) -> DataChunk:
        if len(body) < 12:
            raise ValueError(f"DATA: {len(body)}-byte value is shorter than its 12-byte header")
        if len(body) == 12:
            raise ValueError("DATA: no user data")
        tsn, stream, ssn, ppid = _DATA.unpack_from(body)
        return cls(
            tsn,
            stream,
            ssn,
            ppid,
            bytes(body[12:]),
            unordered=bool(flags & DATA_FLAG_UNORDERED),
            begin=bool(flags & DATA_FLAG_BEGIN),
            end=bool(flags & DATA_FLAG_END),
        )

    @property
    def flags(self) -> int:
        return (
            (DATA_FLAG_UNORDERED if self.unordered else 0)
            | (DATA_FLAG_BEGIN if self.begin else 0)
            | (DATA_FLAG_END if self.end else 0)
        )

    def __bytes__(self) -> bytes:
        return encode_chunk(self.TYPE, self.flags, _DATA.pack(self.tsn, self.stream, self.ssn, self.ppid) + self.data)


@dataclass(frozen=True)
class SackChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.SACK
    cumulative_tsn: int
    a_rwnd: int
    gaps: tuple[tuple[int, int], ...] = ()  # (start, end) offsets from the cumulative TSN
    duplicates: tuple[int, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> SackChunk:
        if len(body) < 12:
            raise ValueError(f"SACK: {len(body)}-byte value is shorter than 12 bytes")
        cum, rwnd, ngaps, ndups = _SACK.unpack_from(body)
        if len(body) != 12 + 4 * ngaps + 4 * ndups:
            raise ValueError(f"SACK: {ngaps} gap blocks and {ndups} duplicates do not fill {len(body)} bytes")
        gaps = tuple(_GAP.unpack_from(body, 12 + 4 * i) for i in range(ngaps))
        for start, end in gaps:
            if start == 0 or end < start:
                raise ValueError(f"SACK: bad gap block {start}-{end}")
        off = 12 + 4 * ngaps
        dups = tuple(U32.unpack_from(body, off + 4 * i)[0] for i in range(ndups))
        return cls(cum, rwnd, gaps, dups)

    def __bytes__(self) -> bytes:
        body = _SACK.pack(self.cumulative_tsn, self.a_rwnd, len(self.gaps), len(self.duplicates))
        body += b"".join(_GAP.pack(s, e) for s, e in self.gaps)
        body += b"".join(U32.pack(d) for d in self.duplicates)
        return encode_chunk(self.TYPE, 0, body)


@dataclass(frozen=True)
class ForwardTsnChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.FORWARD_TSN
    new_cumulative_tsn: int
    streams: tuple[tuple[int, int], ...] = ()  # (stream, ssn) of ordered streams skipped to

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ForwardTsnChunk:
        if len(body) < 4 or len(body) % 4:
            raise ValueError(f"FORWARD-TSN: value of {len(body)} bytes is not 4 + 4n")
        cum = U32.unpack_from(body)[0]
        streams = tuple(_FWD.unpack_from(body, off) for off in range(4, len(body), 4))
        return cls(cum, streams)

    def __bytes__(self) -> bytes:
        body = U32.pack(self.new_cumulative_tsn) + b"".join(_FWD.pack(s, n) for s, n in self.streams)
        return encode_chunk(self.TYPE, 0, body)


# --- RE-CONFIG (RFC 6525) ------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingResetRequest:
    """The sender resets its outgoing streams (so the receiver's incoming ones)."""

    request_seq: int
    response_seq: int
    last_tsn: int
    streams: tuple[int, ...] = ()  # empty: every stream

    @classmethod
    def parse(cls, value: bytes) -> OutgoingResetRequest:
        if len(value) < 12 or len(value) % 2:
            raise ValueError(f"RE-CONFIG: outgoing reset request of {len(value)} bytes")
        req, resp, last = _RESET_OUT.unpack_from(value)
        streams = tuple(int.from_bytes(value[i : i + 2], "big") for i in range(12, len(value), 2))
        return cls(req, resp, last, streams)

    def param(self) -> Param:
        value = _RESET_OUT.pack(self.request_seq, self.response_seq, self.last_tsn)
        return (ParamType.OUTGOING_SSN_RESET, value + b"".join(s.to_bytes(2, "big") for s in self.streams))


@dataclass(frozen=True)
class ReconfigResponse:
    response_seq: int
    result: int

    @classmethod
    def parse(cls, value: bytes) -> ReconfigResponse:
        if len(value) not in (8, 16):
            raise ValueError(f"RE-CONFIG: response of {len(value)} bytes")
        return cls(*_RESP.unpack_from(value))

    def param(self) -> Param:
        return (ParamType.RECONFIG_RESPONSE, _RESP.pack(self.response_seq, self.result))


@dataclass(frozen=True)
class ReconfigChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.RECONFIG
    params: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ReconfigChunk:
        params = tuple(parse_params(body, "RE-CONFIG"))
        if not params or len(params) > 2:
            raise ValueError(f"RE-CONFIG: {len(params)} parameters (1 or 2 expected)")
        for ptype, value in params:  # validate the ones we read
            if ptype == ParamType.OUTGOING_SSN_RESET:
                OutgoingResetRequest.parse(value)
            elif ptype == ParamType.RECONFIG_RESPONSE:
                ReconfigResponse.parse(value)
        return cls(params)

    def __bytes__(self) -> bytes:
        return encode_chunk(self.TYPE, 0, encode_params(list(self.params)))
