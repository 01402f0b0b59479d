"""SCTP control chunks (RFC 9260): setting up, checking and ending an association.

INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK, HEARTBEAT, HEARTBEAT-ACK, ABORT, ERROR, SHUTDOWN,
SHUTDOWN-ACK, SHUTDOWN-COMPLETE.  Import them from ``chunks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from typing import ClassVar, Self

from sfu.transport.sctp.wire import (
    FLAG_T,
    U32,
    ChunkType,
    Param,
    ParamType,
    encode_chunk,
    encode_params,
    parse_params,
)

_INIT = Struct("!IIHHI")


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
        return encode_chunk(self.TYPE, 0, head + encode_params(list(self.params)))


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
        return encode_chunk(self.TYPE, 0, encode_params(list(self.params)))


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
        return encode_chunk(self.TYPE, FLAG_T if self.reflected else 0, encode_params(list(self.causes)))


@dataclass(frozen=True)
class ErrorChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.ERROR
    causes: tuple[Param, ...] = ()

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ErrorChunk:
        return cls(tuple(parse_params(body, cls.TYPE.name)))

    def __bytes__(self) -> bytes:
        return encode_chunk(self.TYPE, 0, encode_params(list(self.causes)))


@dataclass(frozen=True)
class ShutdownChunk:
    TYPE: ClassVar[ChunkType] = ChunkType.SHUTDOWN
    cumulative_tsn: int

    @classmethod
    def parse(cls, flags: int, body: bytes) -> ShutdownChunk:
        if len(body) != 4:
            raise ValueError(f"SHUTDOWN: value of {len(body)} bytes, not 4")
        return cls(U32.unpack(body)[0])

    def __bytes__(self) -> bytes:
        return encode_chunk(self.TYPE, 0, U32.pack(self.cumulative_tsn))


@dataclass(frozen=True)
class _Empty:
    TYPE: ClassVar[ChunkType]

    @classmethod
    def parse(cls, flags: int, body: bytes) -> Self:
        if body:
            raise ValueError(f"{cls.TYPE.name.replace('_', '-')}: unexpected {len(body)}-byte value")
        return cls()

    def __bytes__(self) -> bytes:
        return encode_chunk(self.TYPE, 0, b"")


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
        return encode_chunk(self.TYPE, FLAG_T if self.reflected else 0, b"")


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
        return encode_chunk(self.TYPE, 0, self.cookie)
