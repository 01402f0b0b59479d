"""SCTP chunks (RFC 9260, RFC 3758 FORWARD-TSN, RFC 6525 RE-CONFIG) as dataclasses.

Each chunk has ``parse(flags, body)`` (``body``: the chunk value, without the 4-byte header and
padding; raises ``ValueError`` saying what is wrong) and ``__bytes__`` (the whole chunk, padded to
four bytes).  ``parse_chunks`` splits a packet's chunk area.  Unknown chunk types come back as
``UnknownChunk`` so the association can apply the action their type's two high bits ask for.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from struct import Struct
from typing import ClassVar, Self

_HDR = Struct("!BBH")
_U32 = Struct("!I")
_DATA = Struct("!IHHI")
_INIT = Struct("!IIHHI")
_SACK = Struct("!IIHH")
_GAP = Struct("!HH")
_PARAM = Struct("!HH")
_FWD = Struct("!HH")
_RESET_OUT = Struct("!III")
_RESP = Struct("!II")

DATA_FLAG_END = 0x01
DATA_FLAG_BEGIN = 0x02
DATA_FLAG_UNORDERED = 0x04
#: ABORT and SHUTDOWN COMPLETE: the verification tag is the sender's own (reflected)
FLAG_T = 0x01


class ChunkType(enum.IntEnum):
    DATA = 0
    INIT = 1
    INIT_ACK = 2
    SACK = 3
    HEARTBEAT = 4
    HEARTBEAT_ACK = 5
    ABORT = 6
    SHUTDOWN = 7
    SHUTDOWN_ACK = 8
    ERROR = 9
    COOKIE_ECHO = 10
    COOKIE_ACK = 11
    SHUTDOWN_COMPLETE = 14
    RECONFIG = 130
    FORWARD_TSN = 192


class ParamType(enum.IntEnum):
    HEARTBEAT_INFO = 1
    STATE_COOKIE = 7
    OUTGOING_SSN_RESET = 13
    INCOMING_SSN_RESET = 14
    RECONFIG_RESPONSE = 16
    SUPPORTED_EXTENSIONS = 0x8008
    FORWARD_TSN_SUPPORTED = 0xC000


class ReconfigResult(enum.IntEnum):
    SUCCESS_NOTHING_TO_DO = 0
    SUCCESS_PERFORMED = 1
    DENIED = 2
    ERROR_WRONG_SSN = 3
    ERROR_REQUEST_ALREADY_IN_PROGRESS = 4
    ERROR_BAD_SEQUENCE_NUMBER = 5
    IN_PROGRESS = 6


Param = tuple[int, bytes]


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _chunk(type_: int, flags: int, body: bytes) -> bytes:
    length = 4 + len(body)
    if length > 0xFFFF:
        raise ValueError(f"chunk: {length} bytes do not fit the 16-bit length")
    return _HDR.pack(type_, flags, length) + body + b"\x00" * _pad(length)


def parse_params(data: bytes, what: str) -> list[Param]:
    """Type-length-value parameters (also error causes), padded to four bytes."""
    params: list[Param] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise ValueError(f"{what}: {len(data) - offset} trailing bytes are not a parameter")
        ptype, length = _PARAM.unpack_from(data, offset)
        if length < 4 or offset + length > len(data):
            raise ValueError(f"{what}: parameter {ptype} has bad length {length}")
        params.append((ptype, bytes(data[offset + 4 : offset + length])))
        offset += length + _pad(length)
    return params


def encode_params(params: list[Param]) -> bytes:
    out = b""
    for ptype, value in params:
        length = 4 + len(value)
        out += _PARAM.pack(ptype, length) + value + b"\x00" * _pad(length)
    return out


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
        return _chunk(self.TYPE, self.flags, _DATA.pack(self.tsn, self.stream, self.ssn, self.ppid) + self.data)


@dataclass(frozen=True)
class InitChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.INIT
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> InitChunk:
        name = cls.TYPE.name.replace("_", "-")
        if len(body) < 16:
            raise ValueError(f"{name}: {len(body)}-byte value is shorter than 16 bytes")
        tag, rwnd, os_, mis, tsn = _INIT.unpack_from(body)
        if tag == 0:
            raise ValueError(f"{name}: the initiate tag is 0")
        if os_ == 0 or mis == 0:
            raise ValueError(f"{name}: zero streams (outbound {os_}, inbound {mis})")
        return cls(tag, rwnd, os_, mis, tsn, tuple(parse_params(body[16:], name)))

    def param(self, ptype: int) -> bytes | None:
        return next((v for t, v in self.params if t == ptype), None)

    @property
    def supports_forward_tsn(self) -> bool:
        ext = self.param(ParamType.SUPPORTED_EXTENSIONS) or b""
        return self.param(ParamType.FORWARD_TSN_SUPPORTED) is not None or ChunkType.FORWARD_TSN in ext

    @property
    def supports_reconfig(self) -> bool:
        return ChunkType.RECONFIG in (self.param(ParamType.SUPPORTED_EXTENSIONS) or b"")

    def __bytes__(self) -> bytes:
        head = _INIT.pack(self.initiate_tag, self.a_rwnd, self.outbound_streams, self.inbound_streams, self.initial_tsn)
        return _chunk(self.TYPE, 0, head + encode_params(list(self.params)))


@dataclass(frozen=True)
class InitAckChunk(InitChunk):
    TYPE: ClassVar[ChunkType] = ChunkType.INIT_ACK

    @classmethod
    def parse(cls, flags: int, body: bytes) -> InitAckChunk:
        chunk = super().parse(flags, body)
        assert isinstance(chunk, InitAckChunk)
        if chunk.param(ParamType.STATE_COOKIE) is None:
            raise ValueError("INIT-ACK: no state cookie")
        return chunk

    @property
    def cookie(self) -> bytes:
        return self.param(ParamType.STATE_COOKIE) or b""


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
        dups = tuple(_U32.unpack_from(body, off + 4 * i)[0] for i in range(ndups))
        return cls(cum, rwnd, gaps, dups)

    def __bytes__(self) -> bytes:
        body = _SACK.pack(self.cumulative_tsn, self.a_rwnd, len(self.gaps), len(self.duplicates))
        body += b"".join(_GAP.pack(s, e) for s, e in self.gaps)
        body += b"".join(_U32.pack(d) for d in self.duplicates)
        return _chunk(self.TYPE, 0, body)


@dataclass(frozen=True)
class HeartbeatChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.HEARTBEAT
    params: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> HeartbeatChunk:
        params = tuple(parse_params(body, cls.TYPE.name))
        if not any(t == ParamType.HEARTBEAT_INFO for t, _ in params):
            raise ValueError(f"{cls.TYPE.name.replace('_', '-')}: no heartbeat info")
        return cls(params)

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, 0, encode_params(list(self.params)))


@dataclass(frozen=True)
class HeartbeatAckChunk(HeartbeatChunk):
    TYPE: ClassVar[ChunkType] = ChunkType.HEARTBEAT_ACK


@dataclass(frozen=True)
class AbortChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.ABORT
    causes: tuple[Param, ...] = ()
    reflected: bool = False  # the T bit

    @classmethod
    def parse(cls, flags: int, body: bytes) -> AbortChunk:
        return cls(tuple(parse_params(body, cls.TYPE.name)), bool(flags & FLAG_T))

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, FLAG_T if self.reflected else 0, encode_params(list(self.causes)))


@dataclass(frozen=True)
class ErrorChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.ERROR
    causes: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ErrorChunk:
        return cls(tuple(parse_params(body, cls.TYPE.name)))

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, 0, encode_params(list(self.causes)))


@dataclass(frozen=True)
class ShutdownChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.SHUTDOWN
    cumulative_tsn: int

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ShutdownChunk:
        if len(body) != 4:
            raise ValueError(f"SHUTDOWN: value of {len(body)} bytes, not 4")
        return cls(_U32.unpack(body)[0])

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, 0, _U32.pack(self.cumulative_tsn))


@dataclass(frozen=True)
class _Empty:
    TYPE: ClassVar[ChunkType]

    @classmethod
    def parse(cls, flags: int, body: bytes) -> Self:
        if body:
            raise ValueError(f"{cls.TYPE.name.replace('_', '-')}: unexpected {len(body)}-byte value")
        return cls()

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, 0, b"")


@dataclass(frozen=True)
class ShutdownAckChunk(_Empty):
    TYPE: ClassVar[ChunkType] = ChunkType.SHUTDOWN_ACK


@dataclass(frozen=True)
class CookieAckChunk(_Empty):
    TYPE: ClassVar[ChunkType] = ChunkType.COOKIE_ACK


@dataclass(frozen=True)
class ShutdownCompleteChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.SHUTDOWN_COMPLETE
    reflected: bool = False

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ShutdownCompleteChunk:
        if body:
            raise ValueError(f"SHUTDOWN-COMPLETE: unexpected {len(body)}-byte value")
        return cls(bool(flags & FLAG_T))

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, FLAG_T if self.reflected else 0, b"")


@dataclass(frozen=True)
class CookieEchoChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.COOKIE_ECHO
    cookie: bytes

    @classmethod
    def parse(cls, flags: int, body: bytes) -> CookieEchoChunk:
        if not body:
            raise ValueError("COOKIE-ECHO: empty cookie")
        return cls(bytes(body))

    def __bytes__(self) -> bytes:
        return _chunk(self.TYPE, 0, self.cookie)


@dataclass(frozen=True)
class ForwardTsnChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.FORWARD_TSN
    new_cumulative_tsn: int
    streams: tuple[tuple[int, int], ...] = ()  # (stream, ssn) of ordered streams skipped to

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ForwardTsnChunk:
        if len(body) < 4 or len(body) % 4:
            raise ValueError(f"FORWARD-TSN: value of {len(body)} bytes is not 4 + 4n")
        cum = _U32.unpack_from(body)[0]
        streams = tuple(_FWD.unpack_from(body, off) for off in range(4, len(body), 4))
        return cls(cum, streams)

    def __bytes__(self) -> bytes:
        body = _U32.pack(self.new_cumulative_tsn) + b"".join(_FWD.pack(s, n) for s, n in self.streams)
        return _chunk(self.TYPE, 0, body)


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
        return _chunk(self.TYPE, 0, encode_params(list(self.params)))


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
        return _chunk(self.type, self.flags, self.body)


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
        type_, flags, length = _HDR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"chunk type {type_}: length {length} does not fit the {end - offset} bytes left")
        body = bytes(data[offset + 4 : offset + length])
        parser = _PARSERS.get(type_)
        chunks.append(parser(flags, body) if parser is not None else UnknownChunk(type_, flags, body))
        offset += length + _pad(length)
    return chunks
