"""The SCTP chunk wire format every chunk type shares (RFC 9260 3.2): type codes, the 4-byte chunk
header with its padding, and type-length-value parameters.  ``chunks`` builds on it."""

from __future__ import annotations

import enum
from struct import Struct

CHUNK_HEADER = Struct("!BBH")
U32 = Struct("!I")
_PARAM = Struct("!HH")

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


def padding(n: int) -> int:
    return (4 - n % 4) % 4


def encode_chunk(type_: int, flags: int, body: bytes) -> bytes:
    """The whole chunk: header, ``body`` (the chunk value), padding to four bytes."""
    length = 4 + len(body)
    if length > 0xFFFF:
        raise ValueError(f"chunk: {length} bytes do not fit the 16-bit length")
    return CHUNK_HEADER.pack(type_, flags, length) + body + b"\x00" * padding(length)


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
        offset += length + padding(length)
    return params


def encode_params(params: list[Param]) -> bytes:
    out = b""
    for ptype, value in params:
        length = 4 + len(value)
        out += _PARAM.pack(ptype, length) + value + b"\x00" * padding(length)
    return out
