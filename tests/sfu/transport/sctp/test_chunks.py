from __future__ import annotations

import pytest

from sfu.transport.sctp.chunks import (
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    parse_chunks,
)
from sfu.transport.sctp.packet import Packet, has_valid_checksum

ROUND_TRIP = [
    DataChunk(0xFFFFFFFF, 3, 65535, 51, b"hello", unordered=True, begin=True, end=False),
    DataChunk(7, 0, 0, 53, b"x" * 1001),
    InitChunk(0xDEADBEEF, 131072, 1024, 1024, 42, ((0xC000, b""), (0x8008, bytes([192, 130])))),
    InitAckChunk(5, 1500, 1, 1, 0, ((7, b"cookie!"),)),
    SackChunk(100, 65536, ((2, 3), (5, 5)), (99,)),
    HeartbeatChunk(((1, b"info"),)),
    HeartbeatAckChunk(((1, b"info"),)),
    AbortChunk(((1, b"\x00\x00\x00\x00"),), reflected=True),
    ShutdownChunk(77),
    ShutdownAckChunk(),
    ShutdownCompleteChunk(reflected=True),
    CookieEchoChunk(b"\x01\x02\x03"),
    CookieAckChunk(),
    ForwardTsnChunk(0x10, ((1, 4), (2, 65535))),
    ReconfigChunk((OutgoingResetRequest(1, 2, 3, (0, 1)).param(),)),
    ReconfigChunk((ReconfigResponse(9, 1).param(),)),
    UnknownChunk(0xC1, 0, b"abc"),
]


@pytest.mark.parametrize("chunk", ROUND_TRIP, ids=lambda c: type(c).__name__)
def test_round_trip(chunk: object) -> None:
    raw = bytes(chunk)  # type: ignore[call-overload]
    assert len(raw) % 4 == 0
    assert parse_chunks(raw) == [chunk]


BAD = [
    (b"\x00\x03\x00\x10" + b"\x00" * 12, "DATA: no user data"),
    (b"\x00\x03\x00\x0c" + b"\x00" * 8, "shorter than its 12-byte header"),
    (b"\x01\x00\x00\x14" + b"\x00" * 16, "initiate tag is 0"),
    (b"\x01\x00\x00\x14" + b"\x00\x00\x00\x01" + b"\x00" * 4 + b"\x00\x00\x00\x01" + b"\x00" * 4, "zero streams"),
    (bytes(InitChunk(1, 1, 1, 1, 1)).replace(b"\x01", b"\x02", 1), "no state cookie"),
    (b"\x03\x00\x00\x14" + b"\x00" * 8 + b"\x00\x02\x00\x00" + b"\x00" * 4, "do not fill"),
    (b"\x03\x00\x00\x14" + b"\x00" * 8 + b"\x00\x01\x00\x00" + b"\x00\x03\x00\x02", "bad gap block"),
    (b"\x00\x03\x00\x40" + b"\x00" * 12, "does not fit"),
    (b"\x00\x03", "trailing bytes"),
    (b"", "no chunks"),
    (b"\x04\x00\x00\x08\x00\x02\x00\x04", "no heartbeat info"),
    (b"\xc0\x00\x00\x06\x00\x00\x00\x00", r"not 4 \+ 4n"),
    (b"\x82\x00\x00\x04", "1 or 2 expected"),
    (b"\x82\x00\x00\x0c\x00\x10\x00\x08\x00\x00\x00\x00", "response of 4 bytes"),
    (b"\x07\x00\x00\x06\x00\x00\x00\x00", "not 4"),
    (b"\x0b\x00\x00\x08\x00\x00\x00\x00", "unexpected 4-byte value"),
    (b"\x0a\x00\x00\x04", "empty cookie"),
    (b"\x06\x00\x00\x06\x00\x01\x00\x00", "trailing bytes are not a parameter"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_malformed_chunks_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_chunks(raw)


def test_unknown_chunk_action_bits() -> None:
    assert UnknownChunk(0x40, 0).skip is False  # 01: stop and report
    assert UnknownChunk(0x80, 0).skip is True  # 10: skip
    assert UnknownChunk(0xC0, 0).skip is True


def test_packet_checksum_and_header() -> None:
    packet = Packet(5000, 5000, 0x1234, (DataChunk(1, 0, 0, 51, b"hi"), SackChunk(0, 1000)))
    raw = bytes(packet)
    assert has_valid_checksum(raw)
    assert Packet.parse(raw) == packet
    corrupt = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(ValueError, match="bad CRC32c"):
        Packet.parse(corrupt)
    with pytest.raises(ValueError, match="shorter than a header"):
        Packet.parse(raw[:12])


def test_checksum_matches_rfc_3309_vector() -> None:
    # CRC32c of 32 zero bytes (RFC 3720 B.4): 0x8a9136aa, stored little-endian by SCTP
    import google_crc32c

    assert google_crc32c.value(b"\x00" * 32) == 0x8A9136AA
