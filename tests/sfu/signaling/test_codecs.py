from __future__ import annotations

import pytest

from sfu.signaling.codecs import (
    CodecParams,
    CodecPolicy,
    H264Profile,
    H264ProfileLevel,
    MediaKind,
    PolicyEntry,
    codecs_match,
    find_match,
)


def h264(pt: int, plid: str | None, mode: str | None = "1", rtx: int | None = None) -> CodecParams:
    fmtp = {"level-asymmetry-allowed": "1"}
    if mode is not None:
        fmtp["packetization-mode"] = mode
    if plid is not None:
        fmtp["profile-level-id"] = plid
    return CodecParams(pt, "H264", 90000, None, fmtp, ("nack", "nack pli", "transport-cc"), rtx)


def video(pt: int, name: str, rtx: int | None = None, **fmtp: str) -> CodecParams:
    return CodecParams(
        pt, name, 90000, None, {k.replace("_", "-"): v for k, v in fmtp.items()}, ("nack",), rtx
    )


def rtx(pt: int, apt: int) -> CodecParams:
    return CodecParams(pt, "rtx", 90000, None, {"apt": str(apt)})


OPUS = CodecParams(111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"}, ("transport-cc",))
RED = CodecParams(63, "red", 48000, 2, {"111/111": ""})


@pytest.mark.parametrize(
    ("plid", "profile", "level"),
    [
        ("42e01f", H264Profile.CONSTRAINED_BASELINE, 31),
        ("42E01F", H264Profile.CONSTRAINED_BASELINE, 31),
        ("42c01f", H264Profile.CONSTRAINED_BASELINE, 31),
        ("42001f", H264Profile.BASELINE, 31),
        ("42801f", H264Profile.BASELINE, 31),
        ("4de01f", H264Profile.CONSTRAINED_BASELINE, 31),
        ("4d001f", H264Profile.MAIN, 31),
        ("58c01f", H264Profile.CONSTRAINED_BASELINE, 31),
        ("58801f", H264Profile.BASELINE, 31),
        ("64001f", H264Profile.HIGH, 31),
        ("640c1f", H264Profile.CONSTRAINED_HIGH, 31),
        ("640034", H264Profile.HIGH, 52),
        ("f4001f", H264Profile.PREDICTIVE_HIGH_444, 31),
        ("42f00b", H264Profile.CONSTRAINED_BASELINE, 9),  # level 1b: level_idc 11 + constraint_set3
        ("42e00b", H264Profile.CONSTRAINED_BASELINE, 11),
    ],
)
def test_h264_profile_level_id_parse(plid: str, profile: H264Profile, level: int) -> None:
    parsed = H264ProfileLevel.parse(plid)
    assert parsed.profile is profile
    assert parsed.level == level


@pytest.mark.parametrize(
    ("plid", "message"),
    [
        ("42e01", "is not 6 hex digits"),
        ("42e0zz", "is not 6 hex digits"),
        ("42e0ff", "unknown level_idc 255"),
        ("ff001f", "names no profile"),
        ("4d081f", "names no profile"),  # reserved constraint bit set: no pattern
    ],
)
def test_h264_profile_level_id_refused(plid: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        H264ProfileLevel.parse(plid)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (h264(1, "42e01f"), h264(2, "42e01f"), True),
        (h264(1, "42e01f"), h264(2, "42001f"), True),  # constrained baseline ~ baseline, as Chrome forwards
        (h264(1, "42e01f"), h264(2, "42e034"), True),  # level never blocks
        (h264(1, "42e01f"), h264(2, "42e00b"), True),
        (h264(1, None), h264(2, "42e01f"), True),  # absent = 42e01f
        (h264(1, "42e01f"), h264(2, "4d001f"), False),
        (h264(1, "4d001f"), h264(2, "4de01f"), False),  # main vs constrained baseline signalled via 4d
        (h264(1, "64001f"), h264(2, "640c1f"), False),
        (h264(1, "42e01f", "1"), h264(2, "42e01f", "0"), False),
        (h264(1, "42e01f", None), h264(2, "42e01f", "0"), True),  # absent packetization-mode = 0
        (h264(1, "42e01f"), h264(2, "zzzzzz"), False),
        (video(1, "VP9"), video(2, "VP9", profile_id="0"), True),
        (video(1, "VP9", profile_id="0"), video(2, "VP9", profile_id="2"), False),
        (video(1, "AV1"), video(2, "AV1", profile="0"), True),
        (video(1, "AV1", profile="1"), video(2, "AV1", profile="0"), False),
        (video(1, "vp8"), video(2, "VP8"), True),
        (video(1, "VP8"), video(2, "VP9"), False),
        (OPUS, CodecParams(96, "OPUS", 48000, 2), True),
        (OPUS, CodecParams(96, "opus", 48000, 1), False),
        (OPUS, CodecParams(96, "opus", 16000, 2), False),
        (CodecParams(0, "PCMU", 8000), CodecParams(0, "PCMU", 8000, 1), True),
    ],
)
def test_codecs_match(a: CodecParams, b: CodecParams, expected: bool) -> None:
    assert codecs_match(a, b) is expected
    assert codecs_match(b, a) is expected


def test_find_match_prefers_the_same_h264_profile() -> None:
    offered = [h264(99, "42001f"), h264(101, "42e01f")]
    found = find_match(h264(7, "42e01f"), offered)
    assert found is not None and found.pt == 101
    found = find_match(h264(7, "42001f"), offered)
    assert found is not None and found.pt == 99
    assert find_match(h264(7, "4d001f"), offered) is None
    assert find_match(h264(7, "42e01f"), [rtx(5, 7)]) is None


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "at least one codec"),
        ("opus", "must be a list"),
        (["rtx"], "follows its primary codec"),
        (["opus", "red"], "follows its primary codec"),
        (["telephone-event"], "follows its primary codec"),
        (["speex"], "unknown codec 'speex'"),
        (["H264/zz"], "is not 6 hex digits"),
        (["VP8/1"], "only H264/<profile-level-id>"),
        (["VP9/9"], "only H264/<profile-level-id>"),
        (["opus", "OPUS"], "listed twice"),
        ([3], "is not a string"),
    ],
)
def test_policy_refuses_bad_lists(names: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodecPolicy.parse(names)  # type: ignore[arg-type]


def test_policy_names_are_case_insensitive_and_canonical() -> None:
    policy = CodecPolicy.parse(["OPUS", "vp8", "h264/42E01F", "vp9/2", "av1"])
    assert policy.allowed_names(MediaKind.AUDIO) == ["opus"]
    assert policy.allowed_names(MediaKind.VIDEO) == ["VP8", "H264/constrained-baseline", "VP9/2", "AV1"]
    assert CodecPolicy.default().allowed_names(MediaKind.VIDEO) == ["VP8", "VP9", "H264", "AV1"]


OFFERED_VIDEO = [
    video(96, "VP8", 97),
    rtx(97, 96),
    video(98, "VP9", 99, profile_id="0"),
    rtx(99, 98),
    video(100, "VP9", 101, profile_id="2"),
    rtx(101, 100),
    h264(102, "42001f", rtx=103),
    rtx(103, 102),
    h264(106, "42e01f", rtx=107),
    rtx(107, 106),
    h264(127, "4d001f", rtx=125),
    rtx(125, 127),
    h264(108, "42e028"),  # level 4.0, no RTX
    video(45, "AV1", 46, profile="0"),
    rtx(46, 45),
    CodecParams(114, "red", 90000),
    CodecParams(116, "ulpfec", 90000),
]


@pytest.mark.parametrize(
    ("names", "expected_pts"),
    [
        (
            ["opus", "VP8", "VP9", "H264", "AV1"],
            [96, 97, 98, 99, 100, 101, 102, 103, 106, 107, 127, 125, 108, 45, 46],
        ),
        (["AV1", "H264", "VP8"], [45, 46, 102, 103, 106, 107, 127, 125, 108, 96, 97]),
        (["VP9/2", "VP8"], [100, 101, 96, 97]),
        (["H264/42e01f"], [102, 103, 106, 107]),  # baseline family, level <= 3.1
        (["H264/42e028", "VP8"], [102, 103, 106, 107, 108, 96, 97]),
        (["H264/4d001f", "H264"], [127, 125, 102, 103, 106, 107, 108]),
        (["opus"], []),
    ],
)
def test_select_orders_by_policy_and_rtx_follows(names: list[str], expected_pts: list[int]) -> None:
    selected = CodecPolicy.parse(names).select(OFFERED_VIDEO)
    assert [c.pt for c in selected] == expected_pts
    for codec in selected:
        assert "transport-cc" not in codec.rtcp_fb
        assert codec.lname not in ("red", "ulpfec")


def test_select_keeps_supported_feedback_only() -> None:
    codec = h264(102, "42e01f")
    codec = CodecParams(
        102, "H264", 90000, None, codec.fmtp, ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    )
    (selected,) = CodecPolicy.parse(["H264"]).select([codec])
    assert selected.rtcp_fb == ("goog-remb", "ccm fir", "nack", "nack pli")


@pytest.mark.parametrize(
    ("names", "red", "red_first", "offered", "expected"),
    [
        (["opus"], True, False, [OPUS, RED], ["opus", "red"]),
        (["opus"], True, True, [OPUS, RED], ["red", "opus"]),
        (["opus"], False, False, [OPUS, RED], ["opus"]),
        (
            ["PCMU", "opus"],
            True,
            False,
            [RED, CodecParams(0, "PCMU", 8000)],
            ["PCMU"],
        ),  # RED without its opus
        (
            ["PCMU"],
            True,
            False,
            [CodecParams(0, "PCMU", 8000), CodecParams(63, "red", 48000, 2, {"0/0": ""})],
            ["PCMU"],
        ),
        (["opus"], True, False, [OPUS, CodecParams(63, "red", 48000, 2, {"111/112": ""})], ["opus"]),
        (["opus"], True, False, [OPUS, CodecParams(63, "red", 48000, 2, {})], ["opus"]),
        (
            ["opus"],
            True,
            False,
            [OPUS, RED, CodecParams(13, "CN", 8000), CodecParams(110, "telephone-event", 48000)],
            ["opus", "red"],
        ),
    ],
)
def test_red_follows_opus(
    names: list[str], red: bool, red_first: bool, offered: list[CodecParams], expected: list[str]
) -> None:
    base = CodecPolicy.parse(names, red=red)
    policy = CodecPolicy(base.entries, red=red, red_first=red_first)
    assert [c.name for c in policy.select(offered)] == expected


@pytest.mark.parametrize(
    ("entry", "codec", "admitted"),
    [
        ("opus", OPUS, True),
        ("opus", CodecParams(96, "opus", 48000, 1), False),
        ("H264/42e01f", h264(1, "42e01f"), True),
        ("H264/42e01f", h264(1, "42001f"), True),
        ("H264/42e01f", h264(1, "42e00b"), True),
        ("H264/42e01f", h264(1, "42e028"), False),
        ("H264/42e01f", h264(1, "640c1f"), False),
        ("VP9/2", video(1, "VP9", profile_id="2"), True),
        ("VP9/0", video(1, "VP9"), True),
        ("VP9/2", video(1, "VP9"), False),
        ("AV1/1", video(1, "AV1", profile="0"), False),
        ("VP8", CodecParams(1, "VP8", 48000), False),
    ],
)
def test_policy_entry_admits(entry: str, codec: CodecParams, admitted: bool) -> None:
    assert PolicyEntry.parse(entry).admits(codec) is admitted


def test_header_extensions_for_kind() -> None:
    offered = {
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
        "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay": 5,
        "urn:3gpp:video-orientation": 13,
        "urn:ietf:params:rtp-hdrext:toffset": 14,
    }
    policy = CodecPolicy.default()
    assert policy.header_extensions_for(MediaKind.AUDIO, offered) == {
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
        "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
    }
    assert policy.header_extensions_for(MediaKind.VIDEO, offered) == {
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
        "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
        "urn:3gpp:video-orientation": 13,
    }


def test_codec_text_forms() -> None:
    assert (
        h264(102, "42e01f").fmtp_value()
        == "102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    )
    assert RED.fmtp_value() == "63 111/111"
    assert RED.red_primaries() == (111,)
    assert OPUS.rtpmap_value() == "111 opus/48000/2"
    assert CodecParams(0, "PCMU", 8000).fmtp_value() is None
    assert rtx(97, 96).apt == 96
    assert CodecParams(97, "rtx", 90000, None, {"apt": "x"}).apt is None


def test_with_transport_cc_keeps_it_for_publishers() -> None:
    """The publisher side's policy keeps transport-cc feedback and the transport-wide-cc
    extension, for audio and video; the policy itself (subscribers) still drops them."""
    twcc = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    codec = CodecParams(
        102, "H264", 90000, None, h264(102, "42e01f").fmtp, ("goog-remb", "transport-cc", "nack", "nack pli")
    )
    policy = CodecPolicy.parse(["opus", "H264"])
    publish = policy.with_transport_cc()
    assert publish.select([codec])[0].rtcp_fb == ("goog-remb", "transport-cc", "nack", "nack pli")
    assert publish.select([OPUS])[0].rtcp_fb == ("transport-cc",)
    assert policy.select([codec])[0].rtcp_fb == ("goog-remb", "nack", "nack pli")
    offered = {twcc: 3, "urn:ietf:params:rtp-hdrext:sdes:mid": 4}
    for kind in (MediaKind.AUDIO, MediaKind.VIDEO):
        assert publish.header_extensions_for(kind, offered) == offered
        assert policy.header_extensions_for(kind, offered) == {"urn:ietf:params:rtp-hdrext:sdes:mid": 4}
    assert publish.entries == policy.entries and publish.red == policy.red
