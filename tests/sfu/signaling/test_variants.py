"""Codec variants (issue 11, defect 16): one subscriber payload type per variant, never per codec
name; and a=extmap directions answered as RFC 8285 §6 says."""

from __future__ import annotations

import pytest

from sfu.routing.track import TrackCodec
from sfu.signaling.codecs import CodecParams, CodecPolicy, codecs_match, variant_keys
from sfu.signaling.sdp import (
    Direction,
    LocalParams,
    OutgoingTrack,
    SubscribeTrack,
    TrackDescription,
    apply_answer,
    build_answer,
    build_offer,
    negotiate_publish,
    negotiate_subscribe,
    parse_sdp,
)
from tests.e2e.variant_offers import CHROMIUM_VIDEO, FIREFOX_H264, FIREFOX_VP9, Variant, variant_offer

FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))
LOCAL = LocalParams(ice_ufrag="n0de", ice_pwd="s3cretPasswordForIce+/x", fingerprint=FINGERPRINT)
UFRAG, PWD = "cl1e", "clientPasswordForIce+/xy"


def _codec(name: str, fmtp: str = "", pt: int = 100) -> CodecParams:
    params = dict(p.split("=", 1) for p in fmtp.split(";") if p)
    return CodecParams(pt, name, 90000, None, params)


@pytest.mark.parametrize(
    ("name", "fmtp", "keys"),
    [
        ("H264", "profile-level-id=42e01f;packetization-mode=1", ("h264/42e0/1", "h264/baseline/1")),
        (
            "H264",
            "profile-level-id=42e034;packetization-mode=1",
            ("h264/42e0/1", "h264/baseline/1"),
        ),  # level ignored
        ("H264", "profile-level-id=42001f;packetization-mode=1", ("h264/4200/1", "h264/baseline/1")),
        ("H264", "profile-level-id=42e01f", ("h264/42e0/0", "h264/baseline/0")),  # mode absent = 0
        ("H264", "", ("h264/42e0/0", "h264/baseline/0")),  # profile-level-id absent = 42e01f
        ("H264", "profile-level-id=4D001F;packetization-mode=1", ("h264/4d00/1", "h264/main/1")),
        ("H264", "profile-level-id=640c1f;packetization-mode=1", ("h264/640c/1", "h264/constrained-high/1")),
        ("H264", "profile-level-id=zz;packetization-mode=1", ("h264/zz/1",)),  # unusable: no family
        ("VP9", "", ("vp9/0",)),
        ("VP9", "max-fs=12288;max-fr=60", ("vp9/0",)),
        ("VP9", "profile-id=2", ("vp9/2",)),
        ("AV1", "level-idx=5;profile=0;tier=0", ("av1/0",)),
        ("AV1", "profile=1", ("av1/1",)),
        ("H265", "", ("h265/1",)),
        ("H265", "profile-id=2;level-id=93", ("h265/2",)),
        ("VP8", "", ("vp8",)),
    ],
)
def test_variant_keys(name: str, fmtp: str, keys: tuple[str, ...]) -> None:
    assert variant_keys(_codec(name, fmtp)) == keys


def test_every_chromium_video_variant_has_its_own_key() -> None:
    firsts = [variant_keys(_codec(name, fmtp))[0] for _, name, fmtp in CHROMIUM_VIDEO]
    assert len(set(firsts)) == len(firsts)


def test_h265_matches_by_profile() -> None:
    main, main10 = _codec("H265", "profile-id=1"), _codec("H265", "profile-id=2")
    assert codecs_match(main, _codec("H265")) and not codecs_match(main, main10)


def _published(video: list[Variant], codecs: list[str]) -> TrackDescription:
    offer = variant_offer(UFRAG, PWD, FINGERPRINT, video, send=True, video_ssrc=1, audio_ssrc=2)
    neg = negotiate_publish(parse_sdp(offer), CodecPolicy.parse(codecs))
    return TrackDescription.from_publish("v", "pub", neg.tracks[0])


def _forwarded(track: SubscribeTrack, publisher: TrackDescription) -> dict[int, int | None]:
    """Publisher PT -> the PT the forwarder gives it: ``DownTrack.out_pt`` over the track's map."""
    table = track.out_payload_types
    out: dict[int, int | None] = {}
    for c in publisher.codecs:
        keys = TrackCodec(c.name, c.clock_rate, c.pt, variant_keys(c)).keys
        out[c.pt] = next((table[k] for k in keys if k in table), None)
    return out


def _subscribe(publisher: TrackDescription, video: list[Variant]) -> SubscribeTrack:
    offer = parse_sdp(variant_offer(UFRAG, PWD, FINGERPRINT, video, send=False))
    neg = negotiate_subscribe(offer, [OutgoingTrack(publisher, 5)], CodecPolicy.default(), cname="c")
    (track,) = neg.tracks
    return track


def test_whep_h264_variants_keep_their_own_payload_types() -> None:
    firefox = _published(list(FIREFOX_H264), ["opus", "H264"])  # 126 mode 1, 97 mode 0
    track = _subscribe(firefox, list(CHROMIUM_VIDEO))
    assert _forwarded(track, firefox) == {126: 106, 97: 108}
    # Chromium's baseline variants only: each mode still keeps its own payload type
    baseline = [v for v in CHROMIUM_VIDEO if v[0] in (104, 102)]
    assert _forwarded(_subscribe(firefox, baseline), firefox) == {126: 102, 97: 104}


def test_whep_vp9_profile_0_is_not_labelled_profile_2() -> None:
    firefox = _published(list(FIREFOX_VP9), ["opus", "VP9"])
    for order in (CHROMIUM_VIDEO, CHROMIUM_VIDEO[::-1]):
        assert _forwarded(_subscribe(firefox, list(order)), firefox) == {121: 98}


def test_node_offer_maps_each_variant_to_its_own_node_payload_type() -> None:
    firefox = _published(list(FIREFOX_H264), ["opus", "H264"])
    plan = build_offer([OutgoingTrack(firefox, 7)], CodecPolicy.default(), LOCAL, cname="n")
    node_pts = {
        c.fmtp.get("packetization-mode", "0"): c.pt for c in plan.sections[0].codecs if c.name == "H264"
    }
    answer = plan.sdp.replace("a=setup:actpass", "a=setup:active").replace("a=sendonly", "a=recvonly")
    answer = "\r\n".join(
        line for line in answer.split("\r\n") if not line.startswith(("a=ssrc", "a=msid:", "a=ice-lite"))
    )
    (track,) = apply_answer(plan, answer).tracks
    assert _forwarded(track, firefox) == {126: node_pts["1"], 97: node_pts["0"]}
    assert node_pts["1"] != node_pts["0"]


EXTMAPS = (
    "1/sendonly urn:ietf:params:rtp-hdrext:sdes:mid",
    "2/recvonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "3/inactive urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "5/sendrecv urn:3gpp:video-orientation",
)


def test_parser_keeps_extmap_directions() -> None:
    offer = parse_sdp(variant_offer(UFRAG, PWD, FINGERPRINT, list(FIREFOX_VP9), send=False, extmaps=EXTMAPS))
    assert offer.media[0].header_extension_directions == {
        "urn:ietf:params:rtp-hdrext:sdes:mid": Direction.SENDONLY,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": Direction.RECVONLY,
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level": Direction.INACTIVE,
        "urn:3gpp:video-orientation": Direction.SENDRECV,
    }


def _extmap_lines(answer: str, kind: str) -> list[str]:
    section = answer.split(f"m={kind} ")[1].split("\r\nm=")[0]
    return [line for line in section.split("\r\n") if line.startswith("a=extmap:")]


def test_whip_answer_turns_extmap_directions_around() -> None:
    text = variant_offer(
        UFRAG, PWD, FINGERPRINT, list(FIREFOX_VP9), send=True, video_ssrc=1, audio_ssrc=2, extmaps=EXTMAPS
    )
    offer = parse_sdp(text)
    neg = negotiate_publish(offer, CodecPolicy.default())
    answer = build_answer(offer, neg, LOCAL)
    assert _extmap_lines(answer, "video") == [
        "a=extmap:1/recvonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:5 urn:3gpp:video-orientation",
    ]
    assert _extmap_lines(answer, "audio") == [
        "a=extmap:1/recvonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3/inactive urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    ]
    video, audio = neg.tracks
    # what the forwarder reads in the publisher's packets: not the inactive one
    assert dict(video.header_extensions) == {
        "urn:ietf:params:rtp-hdrext:sdes:mid": 1,
        "urn:3gpp:video-orientation": 5,
    }
    assert dict(audio.header_extensions) == {"urn:ietf:params:rtp-hdrext:sdes:mid": 1}


def test_whep_answer_turns_extmap_directions_around() -> None:
    firefox = _published(list(FIREFOX_VP9), ["opus", "VP9"])
    text = variant_offer(UFRAG, PWD, FINGERPRINT, list(CHROMIUM_VIDEO), send=False, extmaps=(
        "1/recvonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "2/sendonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "5/inactive urn:3gpp:video-orientation",
    ))  # fmt: skip
    offer = parse_sdp(text)
    neg = negotiate_subscribe(offer, [OutgoingTrack(firefox, 5)], CodecPolicy.default(), cname="c")
    assert _extmap_lines(build_answer(offer, neg, LOCAL), "video") == [
        "a=extmap:1/sendonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:5/inactive urn:3gpp:video-orientation",
    ]
    (track,) = neg.tracks
    # the node writes only the extension it may send
    assert dict(track.header_extensions) == {"urn:ietf:params:rtp-hdrext:sdes:mid": 1}
