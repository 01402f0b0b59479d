"""Transport-wide cc: the sequence number extension and the RTCP transport-cc feedback message."""

from __future__ import annotations

import os
import random
import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap
from aiortc.rtp import RtpPacket as AioRtpPacket

from sfu.packet.rtcp import Pli, ReceiverReport, TransportCC, compound, parse_compound
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.packet.twcc import (
    TWCC_URI,
    PacketStatus,
    TransportFeedback,
    decode_chunk,
    encode_chunks,
    insert_seq,
    read_seq,
    seq_element,
    size_bound,
    write_seq,
)

# --------------------------------------------------------------------------- header extension


def aio_map(ext_id: int) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=ext_id, uri=TWCC_URI)]))
    return m


@pytest.mark.parametrize("seq", [0, 1, 0x1234, 65535])
def test_read_seq_of_an_aiortc_packet_and_aiortc_reads_ours(seq: int) -> None:
    aio = AioRtpPacket(payload_type=96, sequence_number=7, timestamp=1, ssrc=2, payload=b"x" * 10)
    aio.extensions.transport_sequence_number = seq
    data = bytearray(aio.serialize(aio_map(5)))
    assert read_seq(data, len(data), 5) == seq
    assert read_seq(data, len(data), 4) == -1  # another id
    assert write_seq(data, len(data), 5, (seq + 1) & 0xFFFF)
    back = AioRtpPacket.parse(bytes(data), aio_map(5))
    assert back.extensions.transport_sequence_number == (seq + 1) & 0xFFFF
    assert back.payload == b"x" * 10


def test_seq_element_in_one_and_two_byte_blocks() -> None:
    for extra in ([], [(2, b"a" * 20)]):  # a 20-byte element forces the two-byte form
        header = RtpHeader(payload_type=96, extensions=[(1, b"m"), seq_element(3, 0x10002), *extra])
        data = bytearray(bytes(RtpPacket(header, b"payload")))
        assert read_seq(data, len(data), 3) == 2  # masked to 16 bits
        assert write_seq(data, len(data), 3, 0xBEEF)
        assert RtpPacket.parse(data).header.extension(3) == b"\xbe\xef"
        assert RtpPacket.parse(data).payload == b"payload"


def test_read_and_write_refuse_what_is_not_a_2_byte_element() -> None:
    header = RtpHeader(payload_type=96, extensions=[(3, b"\x01"), (4, b"\x01\x02\x03")])
    data = bytearray(bytes(RtpPacket(header, b"p")))
    before = bytes(data)
    for ext_id in (3, 4, 5):
        assert read_seq(data, len(data), ext_id) == -1
        assert not write_seq(data, len(data), ext_id, 9)
    assert bytes(data) == before
    no_ext = bytes(RtpPacket(RtpHeader(payload_type=96), b"p"))
    assert read_seq(no_ext, len(no_ext), 3) == -1
    good = bytes(RtpPacket(RtpHeader(payload_type=96, extensions=[seq_element(3, 5)]), b""))
    assert read_seq(good, len(good) - 1, 3) == -1  # truncated block
    assert read_seq(good, len(good) + 5, 3) == -1  # length past the buffer
    with pytest.raises(ValueError, match="out of the one-byte range"):
        seq_element(15, 1)


# --------------------------------------------------------------------------- chunks (draft 3.1.3, 3.1.4)

DRAFT_SV1 = [0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]


def test_draft_chunk_examples() -> None:
    assert decode_chunk(0x00DD) == [0] * 221  # run length example 1: 221 x not received
    assert decode_chunk(0x6018) == [3] * 24  # run length example 2: symbol 3, run of 24
    assert decode_chunk(0x9F1C) == DRAFT_SV1  # status vector example 1 (one-bit)
    assert decode_chunk(0xCD50) == [0, 3, 1, 1, 1, 0, 0]  # status vector example 2 (two-bit)
    assert encode_chunks([0] * 221) == [0x00DD]
    assert encode_chunks(DRAFT_SV1) == [0x9F1C]
    assert encode_chunks([0, 2, 1, 1, 1, 0, 0]) == [0xC950]  # two-bit: a large delta forbids one-bit
    with pytest.raises(ValueError, match="16-bit"):
        decode_chunk(0x10000)


@pytest.mark.parametrize(
    "symbols",
    [
        [1],
        [0, 1],
        [1] * 8191,
        [1] * 8192,  # a run longer than 13 bits takes two chunks
        [0] * 20000,
        [1, 0] * 10,
        [2, 1, 0, 2, 1, 0, 2, 1],
        [1] * 6 + [0] * 7 + [2] * 7 + [1, 2],
    ],
)
def test_encode_chunks_round_trip_and_bound(symbols: list[int]) -> None:
    chunks = encode_chunks(symbols)
    decoded: list[int] = []
    for c in chunks:
        decoded.extend(decode_chunk(c))
    assert decoded[: len(symbols)] == symbols
    assert 2 * len(chunks) <= 2 * -(-len(symbols) // 7)


# --------------------------------------------------------------------------- feedback message

# base 65534 (wraps), received small, lost, received -4 ticks (reordered), 255 (small), 256 (large)
# header 8fcd0006, SSRCs 1 and 2, base fffe, count 5, reference 000001, fb count 07, two-bit chunk
# d260 (01 00 10 01 10), deltas 01, fffc, ff, 0100
VECTOR = bytes.fromhex("8fcd00060000000100000002fffe000500000107d26001fffcff0100")
VECTOR_FB = TransportFeedback(1, 2, 65534, 1, 7, [1, None, -4, 255, 256])

# a one-packet message as Chrome sends it: P bit with one byte of padding
CHROME = bytes.fromhex("afcd0005fa17fa1743032fa0009900013de8021720019401")


def test_byte_exact_vector() -> None:
    assert bytes(VECTOR_FB) == VECTOR
    assert TransportFeedback.parse(VECTOR) == VECTOR_FB
    assert VECTOR_FB.statuses() == [
        PacketStatus(65534, True, 64_250),
        PacketStatus(65535, False, None),
        PacketStatus(0, True, 63_250),
        PacketStatus(1, True, 127_000),
        PacketStatus(2, True, 191_000),
    ]
    assert [s.arrival_us for s in VECTOR_FB.statuses(reference_us=0)] == [250, None, -750, 63_000, 127_000]


def test_chrome_packet_with_rtcp_padding() -> None:
    assert len(CHROME) == 24
    fb = TransportFeedback.parse(CHROME)
    assert fb == TransportFeedback(0xFA17FA17, 0x43032FA0, 153, 4057090, 23, [148])
    assert fb.statuses() == [PacketStatus(153, True, 4057090 * 64_000 + 37_000)]
    # ours: no P bit, zero padding to 32 bits
    assert bytes(fb) == bytes.fromhex("8fcd0005fa17fa1743032fa0009900013de80217200194" + "00")


# Messages from other implementations' test suites (pion/webrtc-rs, libwebrtc captures with the
# P bit and RTCP padding): (bytes, expected message, our own serialization of it).
KNOWN: list[tuple[str, str, TransportFeedback, str]] = [
    (
        "seven small deltas, run length chunk, 3 bytes of RTCP padding",
        "afcd0007fa17fa17193dd8bb0004000710636e0120074c2424100c0c10000003",
        TransportFeedback(0xFA17FA17, 0x193DD8BB, 4, 1074030, 1, [76, 36, 36, 16, 12, 12, 16]),
        "8fcd0007fa17fa17193dd8bb0004000710636e0120074c2424100c0c10000000",
    ),
    (
        "two-bit vector then a run of 48 past the status count of 9",
        "afcd00079b74f61f9371dcbc853c000963f916b3d55200309baa6aaa7b010901",
        TransportFeedback(
            0x9B74F61F, 0x9371DCBC, 34108, 6551830, 179, [155, 170, 106, 170, 123, None, 265, None, None]
        ),
        "8fcd00079b74f61f9371dcbc853c000963f916b3d55200029baa6aaa7b010900",
    ),
    (
        "large deltas in a run length chunk, no padding",
        "8fcd0007fa17fa17193dd8bb0174000645b15a40400220041ffe1f9ad000d000",
        TransportFeedback(0xFA17FA17, 0x193DD8BB, 372, 4567386, 64, [8190, 8090, 208, 0, 208, 0]),
        "8fcd0007fa17fa17193dd8bb0174000645b15a40e9541ffe1f9ad000d0000000",
    ),
]


@pytest.mark.parametrize(("name", "data", "fb", "ours"), KNOWN, ids=[c[0] for c in KNOWN])
def test_known_messages(name: str, data: str, fb: TransportFeedback, ours: str) -> None:
    assert TransportFeedback.parse(bytes.fromhex(data)) == fb
    assert bytes(fb).hex() == ours
    assert TransportFeedback.parse(bytes(fb)) == fb


ROUND_TRIPS: list[tuple[str, TransportFeedback]] = [
    ("one received", TransportFeedback(1, 2, 0, 0, 0, [0])),
    ("one lost", TransportFeedback(1, 2, 10, 0, 0, [None])),
    ("seq wrap", TransportFeedback(1, 2, 65530, 5, 1, [1, 2, 3, None, 4, 5, 6, 7, 8, 9])),
    ("reference max", TransportFeedback(1, 2, 0, (1 << 24) - 1, 255, [255, 0])),
    ("large extremes", TransportFeedback(1, 2, 7, 3, 9, [-32768, 32767, -1, 256])),
    ("mixed tail", TransportFeedback(1, 2, 7, 3, 9, [1] * 6 + [None] * 7 + [300] * 7 + [2, -2])),
    ("long loss run", TransportFeedback(1, 2, 100, 3, 9, [5, *([None] * 9000), 7])),
    ("max count", TransportFeedback(1, 2, 100, 3, 9, [None] * 65534 + [1])),
    ("one-bit vectors", TransportFeedback(1, 2, 1, 1, 1, [4, None] * 50)),
]


@pytest.mark.parametrize(("name", "fb"), ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_round_trip(name: str, fb: TransportFeedback) -> None:
    data = bytes(fb)
    assert len(data) % 4 == 0
    assert struct.unpack_from("!H", data, 2)[0] * 4 + 4 == len(data)
    assert len(data) <= size_bound(
        fb.status_count, sum(0 if d is None else 1 if 0 <= d <= 255 else 2 for d in fb.deltas)
    )
    back = TransportFeedback.parse(data)
    assert back == fb
    assert bytes(back) == data
    statuses = back.statuses()
    assert [s.seq for s in statuses] == [(fb.base_seq + k) & 0xFFFF for k in range(fb.status_count)]
    assert [s.received for s in statuses] == [d is not None for d in fb.deltas]


def test_random_round_trips() -> None:
    rng = random.Random(1215)
    for _ in range(300):
        n = rng.randrange(1, 200)
        deltas: list[int | None] = []
        for _ in range(n):
            r = rng.random()
            deltas.append(
                None if r < 0.3 else rng.randrange(256) if r < 0.8 else rng.randrange(-32768, 32768)
            )
        fb = TransportFeedback(
            rng.getrandbits(32),
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(24),
            rng.getrandbits(8),
            deltas,
        )
        assert TransportFeedback.parse(bytes(fb)) == fb


def test_compound_parser_keeps_it_opaque_and_it_decodes() -> None:
    rr = ReceiverReport(9)
    data = compound([rr, VECTOR_FB.to_transport_cc(), Pli(1, 2)])
    packets = parse_compound(data)
    assert packets[0] == rr and packets[2] == Pli(1, 2)
    assert isinstance(packets[1], TransportCC)
    assert TransportFeedback.from_transport_cc(packets[1]) == VECTOR_FB


def fci(base: int, count: int, ref: int, fb: int, rest: str) -> bytes:
    return struct.pack("!HHI", base, count, (ref << 8) | fb) + bytes.fromhex(rest)


PARSE_ERRORS: list[tuple[str, bytes, str]] = [
    ("short", bytes(7), "shorter than its 8-byte header"),
    ("zero count", fci(0, 0, 0, 0, "2001"), "status count is 0"),
    ("no chunks", fci(0, 1, 0, 0, ""), "chunks end at byte 8 after 0 of 1"),
    ("chunks short", fci(0, 300, 0, 0, "20ff"), "after 255 of 300"),
    ("run of 0", fci(0, 1, 0, 0, "2000"), "run of 0"),
    ("small delta missing", fci(0, 2, 0, 0, "2002" + "01"), "small delta of status 1 overruns"),
    ("large delta missing", fci(0, 1, 0, 0, "4001" + "01"), "large delta of status 0 overruns"),
    ("reserved symbol", fci(0, 2, 0, 0, "6002"), "status 0 uses the reserved symbol 3"),
    ("reserved in vector", fci(0, 7, 0, 0, "cd50" + "010203"), "status 1 uses the reserved symbol 3"),
    ("trailing bytes", fci(0, 1, 0, 0, "2001" + "05" + "00000000"), "4 bytes after its receive deltas"),
]


@pytest.mark.parametrize(("name", "data", "message"), PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransportFeedback.parse_fci(1, 2, data)


def test_parse_accepts_zero_padding_and_ignores_symbols_past_the_count() -> None:
    fb = TransportFeedback.parse_fci(1, 2, fci(0, 3, 0, 0, "b800" + "010203" + "00"))  # one-bit 1,1,1,0..
    assert fb.deltas == [1, 2, 3]
    fb = TransportFeedback.parse_fci(1, 2, fci(0, 2, 0, 0, "d400" + "0102" + "0000"))  # two-bit: 01 01 00..
    assert fb.deltas == [1, 2]


def test_max_count_bounds_what_a_small_message_claims() -> None:
    claim = fci(0, 65535, 0, 0, "1fff" * 8 + "0007")  # 26 bytes, 65,535 statuses
    assert TransportFeedback.parse_fci(1, 2, claim).deltas == [None] * 65535
    with pytest.raises(ValueError, match="status count 65535 is over the limit of 4096"):
        TransportFeedback.parse_fci(1, 2, claim, max_count=4096)
    data = bytes(TransportCC(1, 2, claim + bytes(2)))
    with pytest.raises(ValueError, match="over the limit of 10"):
        TransportFeedback.parse(data, max_count=10)
    assert TransportFeedback.parse(bytes(VECTOR_FB), max_count=5) == VECTOR_FB


def test_parse_refuses_other_packets() -> None:
    with pytest.raises(ValueError, match="expected one RTCP transport-cc packet, got Pli"):
        TransportFeedback.parse(bytes(Pli(1, 2)))
    with pytest.raises(ValueError, match="got ReceiverReport, TransportCC"):
        TransportFeedback.parse(bytes(ReceiverReport(1)) + VECTOR)


BUILD_ERRORS: list[tuple[str, TransportFeedback, str]] = [
    ("empty", TransportFeedback(1, 2, 0, 0, 0, []), "status count 0 out of range"),
    ("too many", TransportFeedback(1, 2, 0, 0, 0, [None] * 65536), "status count 65536 out of range"),
    ("base", TransportFeedback(1, 2, 65536, 0, 0, [1]), "base sequence number 65536"),
    ("reference", TransportFeedback(1, 2, 0, 1 << 24, 0, [1]), "reference time 16777216"),
    ("negative reference", TransportFeedback(1, 2, 0, -1, 0, [1]), "reference time -1"),
    ("fb count", TransportFeedback(1, 2, 0, 0, 256, [1]), "feedback packet count 256"),
    ("delta high", TransportFeedback(1, 2, 0, 0, 0, [32768]), "delta of 32768 ticks"),
    ("delta low", TransportFeedback(1, 2, 0, 0, 0, [-32769]), "delta of -32769 ticks"),
]


@pytest.mark.parametrize(("name", "fb", "message"), BUILD_ERRORS, ids=[c[0] for c in BUILD_ERRORS])
def test_build_errors(name: str, fb: TransportFeedback, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bytes(fb)


def test_fuzz_only_value_errors() -> None:
    rng = random.Random(205)
    parsed = 0
    for k in range(20000):
        if k % 2:
            body = os.urandom(rng.randrange(0, 48))
        else:  # a plausible header so that the chunk and delta walk is reached
            body = fci(
                rng.getrandbits(16), rng.randrange(0, 40), 0, 0, os.urandom(rng.randrange(0, 40)).hex()
            )
        try:
            fb = TransportFeedback.parse_fci(1, 2, body)
        except ValueError:
            continue
        parsed += 1
        assert fb.statuses()[0].seq == fb.base_seq
        assert TransportFeedback.parse_fci(1, 2, fb.fci()) == fb
    assert parsed > 100  # the fuzz reaches valid messages too
    for _ in range(3000):
        data = bytes([0x80 | rng.randrange(32), 205]) + os.urandom(rng.randrange(0, 60))
        try:
            TransportFeedback.parse(data)
        except ValueError:
            pass


# --------------------------------------------------------------------------- insert_seq


def _with_room(packet: bytes, room: int = 8) -> bytearray:
    return bytearray(packet) + bytearray(room)


@pytest.mark.parametrize(
    ("extensions", "profile", "csrcs", "padding", "want"),
    [
        pytest.param([], None, [], 0, [(5, b"\x12\x34")], id="no-block"),
        pytest.param([], None, [7, 8], 0, [(5, b"\x12\x34")], id="no-block-csrcs"),
        pytest.param([], None, [], 4, [(5, b"\x12\x34")], id="no-block-padding"),
        pytest.param([(3, b"\x01\x02\x03")], None, [], 0, [(3, b"\x01\x02\x03"), (5, b"\x12\x34")], id="one-byte"),
        pytest.param([(5, b"\xff\xff"), (3, b"\x01")], None, [], 0, [(5, b"\x12\x34"), (3, b"\x01")], id="overwrite"),
        pytest.param([(3, b"\x01\x02")], 0x1000, [], 0, [(3, b"\x01\x02"), (5, b"\x12\x34")], id="two-byte"),
        pytest.param([(3, b"")], 0x1000, [3], 2, [(3, b""), (5, b"\x12\x34")], id="two-byte-empty-csrc-padding"),
    ],
)
def test_insert_seq_adds_or_overwrites_the_element(
    extensions: list[tuple[int, bytes]], profile: int | None, csrcs: list[int], padding: int, want: list[tuple[int, bytes]]
) -> None:
    header = RtpHeader(payload_type=96, sequence_number=9, timestamp=1234, ssrc=0xCAFE, marker=True,
                       csrcs=list(csrcs), extensions=list(extensions), padding_size=padding)
    if profile is not None:
        header.extension_profile = profile
    payload = bytes(range(40))
    packet = bytes(RtpPacket(header, payload))
    buf = _with_room(packet)
    n = insert_seq(buf, len(packet), 5, 0x1234)
    assert n >= len(packet)
    got = RtpPacket.parse(bytes(buf[:n]))
    assert got.header.extensions == want
    assert got.payload == payload and got.header.padding_size == padding
    assert got.header.csrcs == csrcs and got.header.marker and got.header.sequence_number == 9
    assert read_seq(buf, n, 5) == 0x1234
    # memoryview of a bigger buffer (the send path's out_view): the same bytes
    mem = bytearray(2048)
    mem[: len(packet)] = packet
    view = memoryview(mem)
    assert insert_seq(view, len(packet), 5, 0x1234) == n and bytes(view[:n]) == bytes(buf[:n])


@pytest.mark.parametrize(
    "case",
    ["no-room", "bad-id", "other-profile", "wrong-size", "truncated", "not-rtp"],
)
def test_insert_seq_refuses_leaving_the_packet_as_it_was(case: str) -> None:
    header = RtpHeader(payload_type=96, sequence_number=9, timestamp=1, ssrc=2, extensions=[(5, b"\x01")] if case == "wrong-size" else [])
    packet = bytearray(bytes(RtpPacket(header, bytes(20))))
    ext_id = 5
    length = len(packet)
    buf = packet + bytearray(8)
    if case == "no-room":
        buf = bytearray(packet)
    elif case == "bad-id":
        ext_id = 15
    elif case == "other-profile":
        buf = bytearray(packet[:12]) + bytearray(b"\xab\xcd\x00\x01\x00\x00\x00\x00") + packet[12:] + bytearray(8)
        buf[0] |= 0x10
        length += 8
    elif case == "truncated":
        buf[0] |= 0x10  # X bit and no block
        length = 14
    elif case == "not-rtp":
        buf[0] = 0x40
    before = bytes(buf)
    assert insert_seq(buf, length, ext_id, 7) == -1
    assert bytes(buf) == before


def test_insert_seq_on_random_packets_never_raises() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        size = rng.randint(0, 80)
        data = bytearray(rng.getrandbits(8) for _ in range(size))
        if size and rng.random() < 0.7:
            data[0] = 0x80 | (data[0] & 0x3F)
        buf = data + bytearray(8)
        n = insert_seq(buf, size, rng.randint(1, 14), rng.getrandbits(16))
        assert n == -1 or size <= n <= size + 8
