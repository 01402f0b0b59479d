"""RTP header parsing, hot-path helpers and copy_rewrite, cross-checked against aiortc."""

from __future__ import annotations

import os
import random
import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap
from aiortc.rtp import RtpPacket as AioRtpPacket

from sfu.packet.rtp import (
    ONE_BYTE_PROFILE,
    TWO_BYTE_PROFILE,
    RtpHeader,
    RtpPacket,
    copy_rewrite,
    get_extension,
    header_length,
    identity_ext_map,
    is_identity_for,
    make_ext_map,
    padding_length,
    patch_header,
    payload_length,
    payload_offset,
)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"


def aio_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
        )
    )
    return m


PUB_IDS = {MID: 1, ABS_SEND_TIME: 2, AUDIO_LEVEL: 3, TWCC: 4, RID: 10}


def aio_packet(**kw: object) -> tuple[AioRtpPacket, bytes]:
    p = AioRtpPacket(
        payload_type=96,
        marker=1,
        sequence_number=65535,
        timestamp=0xFFFFFFF0,
        ssrc=0xDEADBEEF,
        payload=b"payload!",
    )
    p.extensions.mid = "0"
    p.extensions.abs_send_time = 0x123456
    p.extensions.audio_level = (True, 42)
    p.extensions.transport_sequence_number = 777
    p.extensions.rtp_stream_id = "hi"
    for k, v in kw.items():
        setattr(p, k, v)
    return p, p.serialize(aio_map(PUB_IDS))


def build(
    *,
    ext: list[tuple[int, bytes]] | None = None,
    profile: int | None = None,
    csrcs: tuple[int, ...] = (),
    padding: int = 0,
    payload: bytes = b"\x10\x20\x30",
    marker: bool = True,
) -> bytes:
    header = RtpHeader(
        payload_type=100,
        sequence_number=1234,
        timestamp=90000,
        ssrc=0x11223344,
        marker=marker,
        csrcs=list(csrcs),
        extension_profile=profile,
        extensions=list(ext or []),
        padding_size=padding,
    )
    return bytes(RtpPacket(header, payload))


# --------------------------------------------------------------------------- parse


def test_parse_aiortc_packet_with_one_byte_extensions() -> None:
    aio, data = aio_packet()
    h, off = RtpHeader.parse_with_offset(data)
    assert (h.payload_type, h.sequence_number, h.timestamp, h.ssrc, h.marker) == (
        96,
        65535,
        0xFFFFFFF0,
        0xDEADBEEF,
        True,
    )
    assert h.extension_profile == ONE_BYTE_PROFILE
    assert h.extension(1) == b"0"
    assert h.extension(2) == bytes.fromhex("123456")
    assert h.extension(3) == bytes([0x80 | 42])
    assert h.extension(4) == struct.pack("!H", 777)
    assert h.extension(10) == b"hi"
    assert data[off:] == b"payload!"
    assert header_length(data, len(data)) == off == payload_offset(data, len(data))
    assert payload_length(data, len(data)) == len(b"payload!")


def test_parse_aiortc_packet_with_csrc_and_padding() -> None:
    aio = AioRtpPacket(payload_type=0, sequence_number=5, timestamp=6, ssrc=7, payload=b"abc")
    aio.csrc = [1, 2, 3]
    aio.padding_size = 9
    data = aio.serialize()
    pkt = RtpPacket.parse(data)
    assert pkt.header.csrcs == [1, 2, 3]
    assert pkt.header.padding_size == 9
    assert pkt.header.extension_profile is None
    assert pkt.payload == b"abc"
    assert padding_length(data, len(data)) == 9
    assert payload_length(data, len(data)) == 3


ROUND_TRIPS = [
    ("plain", {}),
    ("csrcs", {"csrcs": (1, 0xFFFFFFFF)}),
    ("padding", {"padding": 4}),
    ("one-byte", {"ext": [(1, b"a"), (14, bytes(16))]}),
    ("auto two-byte (id 15)", {"ext": [(15, b"ab"), (1, b"x")]}),
    ("two-byte empty value", {"ext": [(200, b""), (3, b"xyz")], "profile": TWO_BYTE_PROFILE}),
    ("two-byte appbits", {"ext": [(5, bytes(255))], "profile": TWO_BYTE_PROFILE | 0x7}),
    ("empty one-byte block", {"ext": [], "profile": ONE_BYTE_PROFILE}),
    ("everything", {"ext": [(2, b"zz")], "csrcs": (9,), "padding": 255, "payload": bytes(range(200))}),
    ("no payload", {"payload": b""}),
]


@pytest.mark.parametrize(("name", "kw"), ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_round_trip_and_aiortc_agrees(name: str, kw: dict[str, object]) -> None:
    data = build(**kw)  # type: ignore[arg-type]
    pkt = RtpPacket.parse(data)
    assert bytes(RtpPacket.parse(bytes(pkt))) == bytes(pkt)
    assert bytes(pkt.header) == data[: header_length(data, len(data))]
    aio = AioRtpPacket.parse(data)
    assert aio.payload == pkt.payload == kw.get("payload", b"\x10\x20\x30")
    assert aio.padding_size == pkt.header.padding_size
    assert aio.csrc == pkt.header.csrcs
    assert (aio.sequence_number, aio.timestamp, aio.ssrc, aio.payload_type) == (1234, 90000, 0x11223344, 100)


def test_raw_extension_profile_round_trip() -> None:
    h = RtpHeader(payload_type=1, extension_profile=0xABCD, extension_raw=b"12345678")
    data = bytes(h) + b"p"
    back = RtpHeader.parse(data)
    assert back.extension_profile == 0xABCD and back.extension_raw == b"12345678" and back.extensions == []


def test_one_byte_id_15_stops_processing_and_id_0_is_padding() -> None:
    body = bytes([0x00, 0x0F, 0x10, 0xAA, 0xF3, 0x20, 0xBB, 0x00])  # pad, id0-pad, id1, id15-stop, ...
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", ONE_BYTE_PROFILE, 2) + body + b"p"
    h = RtpHeader.parse(data)
    assert h.extensions == [(1, b"\xaa")]
    assert get_extension(data, len(data), 1) == (19, 1)
    assert get_extension(data, len(data), 2) is None


def _fixed(b0: int = 0x80, b1: int = 96) -> bytes:
    return struct.pack("!BBHII", b0, b1, 1, 2, 3)


PARSE_ERRORS = [
    ("empty", b"", "too short: 0 bytes"),
    ("11 bytes", _fixed()[:11], "too short: 11 bytes"),
    ("version 1", _fixed(b0=0x40), "version must be 2, got 1"),
    ("version 0", _fixed(b0=0x00), "version must be 2, got 0"),
    ("csrc overrun", _fixed(b0=0x82) + bytes(4), "CSRC list of 2 entries overruns"),
    ("ext header overrun", _fixed(b0=0x90) + b"\xbe\xde", "extension header at 12 overruns"),
    (
        "ext block overrun",
        _fixed(b0=0x90) + b"\xbe\xde\x00\x02" + bytes(4),
        "block of 8 bytes at 16 overruns",
    ),
    (
        "one-byte element overrun",
        _fixed(b0=0x90) + b"\xbe\xde\x00\x01" + bytes([0x13, 1, 2, 3]),
        "id 1 \\(4 bytes at 1\\) overruns its 4-byte block",
    ),
    (
        "two-byte element overrun",
        _fixed(b0=0x90) + b"\x10\x00\x00\x01" + bytes([7, 5, 1, 2]),
        "two-byte header extension id 7 \\(5 bytes at 2\\) overruns",
    ),
    (
        "two-byte missing length",
        _fixed(b0=0x90) + b"\x10\x00\x00\x01" + bytes([0, 0, 0, 7]),
        "id 7 at 3 has no length byte",
    ),
    ("padding zero", _fixed(b0=0xA0) + b"ab\x00", "padding length is 0"),
    ("padding overrun", _fixed(b0=0xA0) + b"ab\x04", "padding of 4 bytes overruns the 3-byte payload"),
]


@pytest.mark.parametrize(("name", "data", "message"), PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(("name", "data", "message"), PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_hot_helpers_reject_what_parse_rejects(name: str, data: bytes, message: str) -> None:
    buf = bytearray(1500)
    buf[: len(data)] = data
    out = bytearray(1500)
    assert copy_rewrite(buf, len(data), out, ssrc=1, seq=1, ts=1, pt=1, ext_map=identity_ext_map([1])) == -1
    hl = header_length(buf, len(data))
    if "padding" in name:
        assert hl >= 0
        assert padding_length(buf, len(data)) == -1 == payload_length(buf, len(data))
    elif "element" in name or "length" in name:
        assert hl >= 0  # elements are not inspected by header_length...
        assert get_extension(buf, len(data), 7) is None  # ...but never read out of bounds
    else:
        assert hl == -1 and payload_length(buf, len(data)) == -1


def test_serialize_errors() -> None:
    with pytest.raises(ValueError, match="payload type 128"):
        bytes(RtpHeader(payload_type=128))
    with pytest.raises(ValueError, match="at most 15 CSRCs"):
        bytes(RtpHeader(csrcs=list(range(16))))
    with pytest.raises(ValueError, match="does not fit the one-byte form"):
        bytes(RtpHeader(extension_profile=ONE_BYTE_PROFILE, extensions=[(15, b"a")]))
    with pytest.raises(ValueError, match="does not fit the one-byte form"):
        bytes(RtpHeader(extension_profile=ONE_BYTE_PROFILE, extensions=[(1, bytes(17))]))
    with pytest.raises(ValueError, match="not 32-bit aligned"):
        bytes(RtpHeader(extension_profile=0x1234, extension_raw=b"abc"))


# --------------------------------------------------------------------------- hot-path helpers


def test_get_extension_offsets_allow_in_place_update() -> None:
    _, data = aio_packet()
    buf = bytearray(1500)
    buf[: len(data)] = data
    loc = get_extension(buf, len(data), 4)
    assert loc is not None
    off, size = loc
    assert size == 2 and struct.unpack_from("!H", buf, off)[0] == 777
    struct.pack_into("!H", buf, off, 4242)
    aio = AioRtpPacket.parse(bytes(buf[: len(data)]), aio_map(PUB_IDS))
    assert aio.extensions.transport_sequence_number == 4242
    assert aio.extensions.mid == "0"
    assert get_extension(buf, len(data), 9) is None
    assert get_extension(build(), len(build()), 1) is None  # no X bit


def test_get_extension_two_byte() -> None:
    data = build(ext=[(1, b""), (77, b"seventy")], profile=TWO_BYTE_PROFILE)
    loc = get_extension(data, len(data), 77)
    assert loc is not None
    assert data[loc[0] : loc[0] + loc[1]] == b"seventy"
    assert get_extension(data, len(data), 1) == (18, 0)


def test_helpers_respect_length_not_buffer_size() -> None:
    data = build(ext=[(1, b"abc")], padding=3)
    buf = bytearray(1500)
    buf[: len(data)] = data
    n = len(data)
    assert header_length(buf, n) == header_length(data, n)
    assert payload_length(buf, n) == 3
    assert padding_length(buf, n) == 3
    assert header_length(buf, 1501) == -1  # length beyond the buffer
    assert header_length(buf, 11) == -1


# --------------------------------------------------------------------------- copy_rewrite


def rewrite(
    data: bytes, ext_map: list[int] | None, dst_size: int = 1500, two_byte_ok: bool = True
) -> tuple[int, bytearray]:
    src = bytearray(1500)
    src[: len(data)] = data
    dst = bytearray(b"\xee" * dst_size)
    n = copy_rewrite(
        memoryview(src),
        len(data),
        dst,
        ssrc=0xCAFEBABE,
        seq=0x1FFFF,
        ts=0x1_0000_0005,
        pt=111,
        ext_map=ext_map,
        two_byte_ok=two_byte_ok,
    )
    assert len(dst) == dst_size  # never resized
    return n, dst


def check_fields(out: bytes, marker: bool = True) -> RtpPacket:
    pkt = RtpPacket.parse(out)
    h = pkt.header
    assert (h.ssrc, h.sequence_number, h.timestamp, h.payload_type, h.marker) == (
        0xCAFEBABE,
        0xFFFF,
        5,
        111,
        marker,
    )
    return pkt


def test_copy_rewrite_without_extensions_keeps_marker_csrcs_padding() -> None:
    for marker in (True, False):
        data = build(csrcs=(5, 6), padding=7, marker=marker)
        n, dst = rewrite(data, identity_ext_map([1]))
        assert n == len(data)
        pkt = check_fields(bytes(dst[:n]), marker=marker)
        assert pkt.header.csrcs == [5, 6] and pkt.header.padding_size == 7 and pkt.payload == b"\x10\x20\x30"
        assert dst[n] == 0xEE  # nothing written past the packet


def test_copy_rewrite_identity_is_verbatim() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, identity_ext_map([1, 2, 3, 4, 10]))
    assert n == len(data)
    assert dst[12:n] == data[12:]
    n2, dst2 = rewrite(data, None)
    assert dst2[:n2] == dst[:n]


def test_copy_rewrite_remaps_and_drops_and_aiortc_parses_it() -> None:
    _, data = aio_packet()
    # subscriber negotiated mid=5, abs-send-time=1, twcc=2; no audio level, no rid.
    ext_map = make_ext_map({1: 5, 2: 1, 4: 2})
    n, dst = rewrite(data, ext_map)
    out = bytes(dst[:n])
    pkt = check_fields(out)
    assert pkt.header.extension_profile == ONE_BYTE_PROFILE
    assert pkt.header.extensions == [(5, b"0"), (1, bytes.fromhex("123456")), (2, struct.pack("!H", 777))]
    assert pkt.payload == b"payload!"
    aio = AioRtpPacket.parse(out, aio_map({MID: 5, ABS_SEND_TIME: 1, TWCC: 2}))
    assert aio.extensions.mid == "0"
    assert aio.extensions.abs_send_time == 0x123456
    assert aio.extensions.transport_sequence_number == 777
    assert aio.extensions.audio_level is None
    assert aio.extensions.rtp_stream_id is None
    assert (aio.ssrc, aio.sequence_number, aio.timestamp, aio.payload_type, aio.marker) == (
        0xCAFEBABE,
        0xFFFF,
        5,
        111,
        1,
    )
    assert aio.payload == b"payload!"


def test_copy_rewrite_all_dropped_clears_x_bit() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, make_ext_map({}))
    out = bytes(dst[:n])
    assert out[0] & 0x10 == 0
    assert n == 12 + len(b"payload!")
    pkt = check_fields(out)
    assert pkt.header.extension_profile is None and pkt.payload == b"payload!"
    assert AioRtpPacket.parse(out).payload == b"payload!"


def test_copy_rewrite_to_high_id_switches_to_two_byte() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, make_ext_map({1: 1, 4: 20}))
    pkt = check_fields(bytes(dst[:n]))
    assert pkt.header.extension_profile == TWO_BYTE_PROFILE
    assert pkt.header.extensions == [(1, b"0"), (20, struct.pack("!H", 777))]
    aio = AioRtpPacket.parse(bytes(dst[:n]), aio_map({MID: 1, TWCC: 20}))
    assert aio.extensions.transport_sequence_number == 777 and aio.extensions.mid == "0"


def test_copy_rewrite_high_id_dropped_when_two_byte_not_allowed() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, make_ext_map({1: 1, 4: 20}), two_byte_ok=False)
    pkt = check_fields(bytes(dst[:n]))
    assert pkt.header.extension_profile == ONE_BYTE_PROFILE
    assert pkt.header.extensions == [(1, b"0")]


TWO_BYTE_CASES = [
    # (elements, ext_map, two_byte_ok, expected profile, expected elements)
    (
        "fits one-byte after remap",
        [(30, b"ab"), (40, b"c")],
        {30: 3, 40: 4},
        True,
        ONE_BYTE_PROFILE,
        [(3, b"ab"), (4, b"c")],
    ),
    (
        "empty value keeps two-byte",
        [(30, b""), (40, b"c")],
        {30: 3, 40: 4},
        True,
        TWO_BYTE_PROFILE | 5,
        [(3, b""), (4, b"c")],
    ),
    (
        "empty value dropped without two-byte",
        [(30, b""), (40, b"c")],
        {30: 3, 40: 4},
        False,
        ONE_BYTE_PROFILE,
        [(4, b"c")],
    ),
    (
        "long value dropped without two-byte",
        [(30, bytes(17)), (40, b"c")],
        {30: 3, 40: 4},
        False,
        ONE_BYTE_PROFILE,
        [(4, b"c")],
    ),
    ("identity two-byte not allowed converts", [(3, b"ab")], {3: 3}, False, ONE_BYTE_PROFILE, [(3, b"ab")]),
    ("identity two-byte allowed is verbatim", [(3, b"ab")], {3: 3}, True, TWO_BYTE_PROFILE | 5, [(3, b"ab")]),
    ("nothing kept", [(30, b"ab")], {}, True, None, []),
]


@pytest.mark.parametrize(
    ("name", "elements", "mapping", "two_ok", "profile", "expected"),
    TWO_BYTE_CASES,
    ids=[c[0] for c in TWO_BYTE_CASES],
)
def test_copy_rewrite_two_byte_input(
    name: str,
    elements: list[tuple[int, bytes]],
    mapping: dict[int, int],
    two_ok: bool,
    profile: int | None,
    expected: list[tuple[int, bytes]],
) -> None:
    data = build(ext=elements, profile=TWO_BYTE_PROFILE | 5, padding=2, csrcs=(99,))
    n, dst = rewrite(data, make_ext_map(mapping), two_byte_ok=two_ok)
    assert n > 0
    pkt = check_fields(bytes(dst[:n]))
    assert pkt.header.extension_profile == profile
    assert pkt.header.extensions == expected
    assert pkt.header.csrcs == [99] and pkt.header.padding_size == 2 and pkt.payload == b"\x10\x20\x30"
    AioRtpPacket.parse(bytes(dst[:n]))  # aiortc accepts it too


def test_copy_rewrite_unknown_profile() -> None:
    data = bytes(
        RtpPacket(RtpHeader(payload_type=9, extension_profile=0x4242, extension_raw=bytes(8)), b"pp")
    )
    n, dst = rewrite(data, make_ext_map({1: 1}))
    assert RtpPacket.parse(bytes(dst[:n])).header.extension_profile is None
    n, dst = rewrite(data, None)
    assert RtpPacket.parse(bytes(dst[:n])).header.extension_raw == bytes(8)


def test_copy_rewrite_refuses_a_too_small_destination() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, None, dst_size=len(data) - 1)
    assert n == -1
    n, dst = rewrite(data, make_ext_map({1: 1, 2: 2, 3: 3, 4: 20, 10: 10}), dst_size=len(data) + 3)
    assert n == -1
    n, dst = rewrite(data, make_ext_map({1: 1}), dst_size=len(data))
    assert n > 0


def test_copy_rewrite_short_ext_map_drops_ids_past_its_end() -> None:
    _, data = aio_packet()
    n, dst = rewrite(data, [0, 1, 2])  # ids 1 and 2 kept, 3, 4, 10 past the end
    assert RtpPacket.parse(bytes(dst[:n])).header.extensions == [(1, b"0"), (2, bytes.fromhex("123456"))]


# --------------------------------------------------------------------------- fuzz-ish


def _valid_samples() -> list[bytes]:
    samples = [build(**kw) for _, kw in ROUND_TRIPS]  # type: ignore[arg-type]
    samples.append(aio_packet()[1])
    return samples


def _check_one(data: bytes, ext_map: list[int], dst: bytearray) -> None:
    n = len(data)
    try:
        pkt_or_none: tuple[RtpHeader, int] | None = RtpHeader.parse_with_offset(data)
    except ValueError:
        pkt_or_none = None
    hl = header_length(data, n)
    pl = payload_length(data, n)
    assert -1 <= hl <= n and -1 <= pl <= n
    for ext_id in (1, 2, 3, 15, 200):
        loc = get_extension(data, n, ext_id)
        assert loc is None or 0 <= loc[0] <= loc[0] + loc[1] <= n
    out = copy_rewrite(data, n, dst, ssrc=1, seq=2, ts=3, pt=4, ext_map=ext_map)
    assert out == -1 or 12 <= out <= len(dst)
    if pkt_or_none is not None:
        header, off = pkt_or_none
        assert hl == off and pl == n - off - header.padding_size
        assert out > 0
        back = RtpPacket.parse(bytes(dst[:out]))
        assert back.payload == data[off : n - header.padding_size]
        assert back.header.padding_size == header.padding_size
        assert back.header.csrcs == header.csrcs
        assert back.header.marker == header.marker
    if out > 0:
        RtpPacket.parse(bytes(dst[:out]))  # whatever copy_rewrite accepted, it emits parseable


def test_fuzz_random_bytes_and_truncations() -> None:
    rng = random.Random(3550)
    dst = bytearray(1500)
    maps = [
        make_ext_map({1: 3, 2: 2, 3: 20, 4: 1, 30: 2}),
        identity_ext_map([1, 2, 3, 4, 10, 14]),
        make_ext_map({}),
    ]
    samples = _valid_samples()
    for sample in samples:
        for cut in range(len(sample) + 1):
            for m in maps:
                _check_one(sample[:cut], m, dst)
    for _ in range(4000):
        base = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):  # flip a few bytes
            base[rng.randrange(len(base))] = rng.randrange(256)
        _check_one(bytes(base), rng.choice(maps), dst)
    for _ in range(2000):
        data = bytes([0x80 | rng.randrange(64)]) + os.urandom(rng.randrange(0, 60))
        _check_one(data, rng.choice(maps), dst)


def test_is_identity_for() -> None:
    m = make_ext_map({1: 1, 2: 2, 3: 5})
    assert is_identity_for(m, [1, 2])
    assert not is_identity_for(m, [1, 3])
    assert not is_identity_for(m, [4])
    assert not is_identity_for([0, 1], [1, 2])  # 2 is past the end: dropped


def test_patch_header_after_one_rewrite() -> None:
    _, data = aio_packet()
    n, shared = rewrite(data, make_ext_map({1: 5, 4: 2}))
    for sub in range(3):
        out = bytearray(shared[:n])
        patch_header(out, ssrc=100 + sub, seq=65536 + sub, ts=-1, pt=97)
        pkt = RtpPacket.parse(bytes(out))
        h = pkt.header
        assert (h.ssrc, h.sequence_number, h.timestamp, h.payload_type, h.marker) == (
            100 + sub,
            sub,
            0xFFFFFFFF,
            97,
            True,
        )
        assert h.extensions == [(5, b"0"), (2, struct.pack("!H", 777))] and pkt.payload == b"payload!"
