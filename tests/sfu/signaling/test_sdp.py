from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from unittest import mock

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from levelchat.errors import ApiError
from sfu.signaling.codecs import (
    HDREXT_ABS_SEND_TIME,
    HDREXT_MID,
    HDREXT_RID,
    CodecPolicy,
    MediaKind,
)
from sfu.signaling.sdp import (
    Direction,
    LocalParams,
    OutgoingTrack,
    SectionOutcome,
    Setup,
    TrackDescription,
    apply_answer,
    build_answer,
    build_offer,
    negotiate_publish,
    negotiate_subscribe,
    parse_sdp,
)

HERE = Path(__file__).parent
FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))
LOCAL = LocalParams(
    ice_ufrag="n0de",
    ice_pwd="s3cretPasswordForIce+/x",
    fingerprint=FINGERPRINT,
    candidates=(("127.0.0.1", 7882),),
)
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def chrome_offer() -> str:
    return (HERE / "chrome120_publish_offer.sdp").read_bytes().decode()


def chrome_whep_offer() -> str:
    """The Chrome fixture as a WHEP client makes it: recvonly, no rids, ssrcs or msid."""
    kept = [
        line
        for line in chrome_offer().split("\r\n")
        if not line.startswith(("a=rid:", "a=simulcast:", "a=ssrc:", "a=msid:"))
    ]
    return "\r\n".join(kept).replace("a=sendonly", "a=recvonly")


@pytest.fixture
async def make_pc() -> AsyncIterator[Callable[[], RTCPeerConnection]]:
    """aiortc peers that gather only a loopback host candidate."""
    pcs: list[RTCPeerConnection] = []

    def make() -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)
        return pc

    with mock.patch("aioice.ice.get_host_addresses", return_value=["127.0.0.1"]):
        yield make
        for pc in pcs:
            await pc.close()


async def aiortc_offer(pc: RTCPeerConnection, *sections: tuple[str, str], datachannel: bool = False) -> str:
    for kind, direction in sections:
        pc.addTransceiver(kind, direction=direction)
    if datachannel:
        pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


def lines_of(section_text: str, prefix: str) -> list[str]:
    return [line for line in section_text.split("\r\n") if line.startswith(prefix)]


def answer_sections(answer: str) -> list[str]:
    parts = answer.split("\r\nm=")
    return ["m=" + p for p in parts[1:]]


# --- parsing ---------------------------------------------------------------------------------


async def test_parse_aiortc_offer(make_pc: Callable[[], RTCPeerConnection]) -> None:
    pc = make_pc()
    text = await aiortc_offer(pc, ("audio", "sendonly"), ("video", "sendonly"), datachannel=True)
    desc = parse_sdp(text)
    assert desc.bundle == ("0", "1", "2")
    assert [m.kind for m in desc.media] == [MediaKind.AUDIO, MediaKind.VIDEO, MediaKind.APPLICATION]
    audio, video, app = desc.media
    assert audio.direction is Direction.SENDONLY and audio.rtcp_mux
    assert [(c.pt, c.name, c.clock_rate, c.channels) for c in audio.codecs][:2] == [
        (96, "opus", 48000, 2),
        (9, "G722", 8000, None),
    ]
    vp8 = video.codec(97)
    assert vp8 is not None and vp8.name == "VP8" and vp8.rtx_pt == 98
    assert "nack pli" in vp8.rtcp_fb
    h264 = video.codec(99)
    assert h264 is not None and h264.fmtp["profile-level-id"] == "42001f" and h264.rtx_pt == 100
    assert video.header_extensions == {HDREXT_MID: 1, HDREXT_ABS_SEND_TIME: 3}
    (media_ssrc,) = video.media_ssrcs
    assert video.rtx_ssrc_of(media_ssrc) is not None
    assert video.msid is not None and video.cname is not None
    assert app.is_datachannel and app.sctp_port == 5000 and app.max_message_size == 262144
    ufrag, pwd, fingerprints, setup = desc.transport
    assert ufrag == pc.localDescription.sdp.split("a=ice-ufrag:")[1].split()[0]
    assert len(pwd) >= 22
    assert [f.algorithm for f in fingerprints] == ["sha-256", "sha-384", "sha-512"]
    assert setup is Setup.ACTPASS
    assert audio.candidates >= 1


def test_parse_chrome_offer() -> None:
    desc = parse_sdp(chrome_offer())
    assert desc.extmap_allow_mixed
    assert desc.session_id == "4215775240449105457" and desc.session_version == 2
    audio, video, app = desc.media
    assert audio.rtcp_rsize and audio.msid is not None
    assert [c.name for c in audio.codecs] == [
        "opus",
        "red",
        "G722",
        "PCMU",
        "PCMA",
        "CN",
        "telephone-event",
    ] + ["telephone-event"]
    red = audio.codec(63)
    assert red is not None and red.red_primaries() == (111,)
    assert [r.id for r in video.rids] == ["q", "h", "f"]
    assert video.simulcast is not None and video.simulcast.rids == ("q", "h", "f")
    assert video.header_extensions[HDREXT_RID] == 10
    assert video.media_ssrcs == ()
    assert len(video.primary_codecs) == 11
    av1 = video.codec(45)
    assert (
        av1 is not None and av1.fmtp == {"level-idx": "5", "profile": "0", "tier": "0"} and av1.rtx_pt == 46
    )
    assert video.codec(39) is not None and video.codec(39).rtx_pt == 40  # type: ignore[union-attr]
    assert app.is_datachannel


def _offer_with(replace: Callable[[str], str]) -> str:
    return replace(chrome_offer())


BAD_OFFERS: list[tuple[str, Callable[[str], str], str]] = [
    ("empty", lambda s: "", "SDP is empty"),
    ("no v=0", lambda s: s.replace("v=0\r\n", "", 1), "an SDP starts with 'v=0'"),
    ("garbage line", lambda s: s.replace("s=-", "s-"), r"line 3: 's-' is not '<type>=<value>'"),
    ("no o=", lambda s: re.sub(r"o=[^\r]*\r\n", "", s, count=1), "SDP has no o= line"),
    ("bad kind", lambda s: s.replace("m=application", "m=text"), "media kind 'text' is not audio"),
    ("no mid", lambda s: s.replace("a=mid:1\r\n", ""), r"m-line 1 \(line \d+\): no a=mid"),
    (
        "duplicate mid",
        lambda s: s.replace("a=mid:2", "a=mid:1").replace("BUNDLE 0 1 2", "BUNDLE 0 1"),
        "mid '1' is used by more than one media section",
    ),
    (
        "missing rtpmap",
        lambda s: s.replace("a=rtpmap:45 AV1/90000\r\n", ""),
        "payload type 45 has no a=rtpmap",
    ),
    (
        "pt out of range",
        lambda s: s.replace("111 63 9", "311 63 9"),
        "m= payload type: 311 is outside 0..127",
    ),
    (
        "no bundle",
        lambda s: s.replace("a=group:BUNDLE 0 1 2\r\n", ""),
        "no a=group:BUNDLE; the node requires BUNDLE",
    ),
    (
        "not in bundle",
        lambda s: s.replace("BUNDLE 0 1 2", "BUNDLE 0 1"),
        r"m-line 2 \(mid '2'\) is not in the BUNDLE",
    ),
    (
        "unknown bundle mid",
        lambda s: s.replace("BUNDLE 0 1 2", "BUNDLE 0 1 2 7"),
        "names mid '7', which no media",
    ),
    (
        "two bundles",
        lambda s: s.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 1\r\na=group:BUNDLE 2"),
        "more than one a=group:BUNDLE",
    ),
    ("no rtcp-mux", lambda s: s.replace("a=rtcp-mux\r\n", "", 1), r"m-line 0 \(mid '0'\): no a=rtcp-mux"),
    (
        "sdes srtp",
        lambda s: s.replace("m=audio 9 UDP/TLS/RTP/SAVPF", "m=audio 9 RTP/SAVPF"),
        "protocol RTP/SAVPF is not DTLS-SRTP",
    ),
    (
        "plain rtp",
        lambda s: s.replace("m=video 9 UDP/TLS/RTP/SAVPF", "m=video 9 RTP/AVP"),
        "protocol RTP/AVP is not DTLS",
    ),
    (
        "no fingerprint",
        lambda s: re.sub(r"a=fingerprint:[^\r]*\r\n", "", s),
        r"no a=fingerprint \(the node requires DTLS",
    ),
    ("bad fingerprint", lambda s: s.replace("sha-256 7B:8B", "sha-256 7B8B", 1), "malformed a=fingerprint"),
    ("no ice", lambda s: re.sub(r"a=ice-(ufrag|pwd):[^\r]*\r\n", "", s), "no a=ice-ufrag/a=ice-pwd"),
    (
        "short ufrag",
        lambda s: s.replace("a=ice-ufrag:Xk4B", "a=ice-ufrag:Xk"),
        "a=ice-ufrag must be 4 to 256",
    ),
    ("short pwd", lambda s: s.replace("g7tPqR2vLm9sKd3FhJ8wZx1N", "short"), "a=ice-pwd must be 22 to 256"),
    ("ice-lite offerer", lambda s: s.replace("t=0 0", "t=0 0\r\na=ice-lite"), "the offerer is ICE-lite too"),
    (
        "bad setup",
        lambda s: s.replace("a=setup:actpass", "a=setup:holdconn", 1),
        "a=setup:holdconn is not actpass",
    ),
    (
        "extmap clash",
        lambda s: s.replace("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:2 urn:x"),
        "a=extmap id 2 is used for both",
    ),
    ("extmap id 0", lambda s: s.replace("a=extmap:14 ", "a=extmap:0 "), "a=extmap id: 0 is outside 1..255"),
    ("extmap id 15", lambda s: s.replace("a=extmap:14 ", "a=extmap:15 "), "a=extmap id 15 is reserved"),
    (
        "bad rtpmap",
        lambda s: s.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus"),
        "malformed a=rtpmap:111 opus",
    ),
    ("bad ssrc", lambda s: s.replace("a=ssrc:2716420131 cname", "a=ssrc:x cname", 1), "malformed a=ssrc"),
    (
        "ssrc too big",
        lambda s: s.replace("a=ssrc:2716420131 cname", "a=ssrc:5000000000 cname", 1),
        "a=ssrc: 5000000000 is outside",
    ),
    ("duplicate rid", lambda s: s.replace("a=rid:f send", "a=rid:q send"), "a=rid 'q' is declared twice"),
    ("bad rid", lambda s: s.replace("a=rid:f send", "a=rid:f? send"), r"malformed a=rid:f\? send"),
    (
        "bad simulcast",
        lambda s: s.replace("a=simulcast:send q;h;f", "a=simulcast:sideways q"),
        "malformed a=simulcast",
    ),
    (
        "duplicate pt",
        lambda s: s.replace("111 63 9 0 8", "111 63 9 0 8 111"),
        "a payload type is listed twice",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "message"), BAD_OFFERS, ids=[b[0] for b in BAD_OFFERS])
def test_malformed_sdp_is_refused_precisely(name: str, mutate: Callable[[str], str], message: str) -> None:
    text = _offer_with(mutate)
    assert text != chrome_offer() or name == "empty"
    with pytest.raises(ValueError, match=message):
        parse_sdp(text)


def test_size_limits() -> None:
    base = chrome_offer()
    padded = base + "a=x-pad:" + "x" * (64 * 1024) + "\r\n"
    with pytest.raises(ValueError, match=r"SDP is \d+ bytes; at most 65536 are accepted"):
        parse_sdp(padded)
    head, _, _ = base.partition("m=audio")
    section = "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\n"
    many = head.replace("a=group:BUNDLE 0 1 2\r\n", "") + "".join(section.format(i) for i in range(65))
    with pytest.raises(ValueError, match="more than 64 media sections"):
        parse_sdp(many)
    ok = parse_sdp(
        head.replace("a=group:BUNDLE 0 1 2\r\n", "") + "".join(section.format(i) for i in range(64))
    )
    assert len(ok.media) == 64 and all(m.rejected for m in ok.media)


def test_lf_only_and_crlf_parse_alike() -> None:
    assert parse_sdp(chrome_offer().replace("\r\n", "\n")) == parse_sdp(chrome_offer())


# --- publish -------------------------------------------------------------------------------


def test_publish_chrome_with_default_policy() -> None:
    offer = parse_sdp(chrome_offer())
    neg = negotiate_publish(offer, CodecPolicy.default())
    audio, video, app = neg.sections
    assert [c.name for c in audio.codecs] == ["opus", "red"]
    assert audio.codecs[0].rtcp_fb == ("transport-cc",)  # the node sends publishers transport-cc feedback
    assert audio.direction is Direction.RECVONLY
    assert [c.pt for c in video.codecs] == [
        96,
        97,  # VP8
        98,
        99,
        100,
        101,  # VP9 p0, p2
        102,
        103,
        104,
        105,
        106,
        107,
        108,
        109,
        127,
        125,
        39,
        40,
        112,
        113,  # H264 in offer order
        45,
        46,  # AV1
    ]
    assert all("transport-cc" in c.rtcp_fb for c in video.codecs if c.is_primary)
    assert video.codecs[0].rtcp_fb == ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    assert audio.header_extensions[TWCC] == 3 and video.header_extensions[TWCC] == 3
    assert all(t.header_extensions[TWCC] == 3 for t in neg.tracks)  # the transport reads it there
    assert video.header_extensions == {
        TWCC: 3,
        HDREXT_ABS_SEND_TIME: 2,
        "urn:3gpp:video-orientation": 13,
        HDREXT_MID: 4,
        HDREXT_RID: 10,
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id": 11,
    }
    assert video.simulcast is not None and video.simulcast.value() == "recv q;h;f"
    assert app.outcome is SectionOutcome.ACCEPTED and neg.datachannel
    audio_track, video_track = neg.tracks
    assert audio_track.ssrcs == (2716420131,) and audio_track.cname == "3nMbXg0Tq5vH8yKp"
    assert audio_track.track_id == "5f0e6d3c-8b1a-4c2d-9e3f-0a1b2c3d4e5f"
    assert video_track.rids == ("q", "h", "f") and video_track.rid_ext_id == 10
    assert video_track.repaired_rid_ext_id == 11 and video_track.mid_ext_id == 4
    assert video_track.codec.name == "VP8"


def test_publish_without_transport_cc_drops_it() -> None:
    """``publisher_transport_cc = false``: the answer has neither the extension nor the feedback
    (the publisher then adapts to the node's REMB only), and everything else is as with it."""
    offer = parse_sdp(chrome_offer())
    on = negotiate_publish(offer, CodecPolicy.default())
    off = negotiate_publish(offer, CodecPolicy.default(), transport_cc=False)
    for section in off.sections:
        assert TWCC not in section.header_extensions
        assert all("transport-cc" not in c.rtcp_fb for c in section.codecs)
    audio, video, _app = off.sections
    assert audio.codecs[0].rtcp_fb == ()
    assert video.codecs[0].rtcp_fb == ("goog-remb", "ccm fir", "nack", "nack pli")
    assert [c.pt for s in off.sections for c in s.codecs] == [c.pt for s in on.sections for c in s.codecs]
    answer = build_answer(offer, off, LOCAL)
    assert TWCC not in answer and "transport-cc" not in answer


def test_publish_transport_cc_only_when_offered() -> None:
    """An offer without the extension and feedback (aiortc before 1.x, GStreamer) gets neither;
    one with the extension on audio only gets it there only."""
    text = chrome_offer()
    bare = "\r\n".join(
        line for line in text.split("\r\n") if TWCC not in line and not line.endswith(" transport-cc")
    )
    neg = negotiate_publish(parse_sdp(bare), CodecPolicy.default())
    for section in neg.sections:
        assert TWCC not in section.header_extensions
        assert all("transport-cc" not in c.rtcp_fb for c in section.codecs)
    answer = build_answer(parse_sdp(bare), neg, LOCAL)
    assert TWCC not in answer and "transport-cc" not in answer
    audio_only = text.replace(f"a=extmap:3 {TWCC}\r\n", "", 2).replace(
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n",
        f"a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:3 {TWCC}\r\n",
        1,
    )
    audio, video, _app = negotiate_publish(parse_sdp(audio_only), CodecPolicy.default()).sections
    assert audio.header_extensions.get(TWCC) == 3 and TWCC not in video.header_extensions


def test_publish_chrome_answer_text() -> None:
    offer = parse_sdp(chrome_offer())
    answer = build_answer(offer, negotiate_publish(offer, CodecPolicy.parse(["opus", "H264", "VP8"])), LOCAL)
    assert answer.endswith("\r\n") and "\n" not in answer.replace("\r\n", "")
    head = answer.split("\r\nm=")[0]
    assert "a=ice-lite" in head and "a=group:BUNDLE 0 1 2" in head and "a=extmap-allow-mixed" in head
    audio, video, app = answer_sections(answer)
    assert audio.startswith("m=audio 7882 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 127.0.0.1\r\n")
    assert lines_of(audio, "a=candidate:") == ["a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host"]
    assert "a=end-of-candidates" in audio and "a=candidate" not in video + app
    assert lines_of(audio, "a=setup:") == ["a=setup:passive"]
    assert "a=rtcp-rsize" in audio and "a=rtcp-mux" in audio and "a=recvonly" in audio
    assert lines_of(audio, "a=fmtp:") == ["a=fmtp:111 minptime=10;useinbandfec=1", "a=fmtp:63 111/111"]
    assert video.startswith(
        "m=video 7882 UDP/TLS/RTP/SAVPF 102 103 104 105 106 107 108 109 127 125 39 40 112 113 96 97"
    )
    assert "playout-delay" not in answer
    assert lines_of(audio, "a=rtcp-fb:") == ["a=rtcp-fb:111 transport-cc"]
    assert f"a=extmap:3 {TWCC}" in audio and f"a=extmap:3 {TWCC}" in video
    assert "a=rtcp-fb:102 goog-remb" in video and "a=rtcp-fb:102 transport-cc" in video  # REMB stays
    assert lines_of(video, "a=rid:") == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv"]
    assert lines_of(video, "a=simulcast:") == ["a=simulcast:recv q;h;f"]
    assert lines_of(app, "a=sctp-port:") == ["a=sctp-port:5000"]
    assert app.startswith("m=application 7882 UDP/DTLS/SCTP webrtc-datachannel")
    # aiortc's own parser reads the answer back with the same meaning.
    parsed = aiortc_sdp.SessionDescription.parse(answer)
    assert [m.rtp.muxId for m in parsed.media] == ["0", "1", "2"]
    assert [c.payloadType for c in parsed.media[0].rtp.codecs] == [111, 63]
    assert [m.direction for m in parsed.media[:2]] == ["recvonly", "recvonly"]
    assert [c.mimeType for c in parsed.media[1].rtp.codecs][-2:] == ["video/VP8", "video/rtx"]
    assert len(parsed.media[0].ice_candidates) == 1 and parsed.media[0].ice_candidates_complete
    ice, dtls = parsed.media[0].ice, parsed.media[0].dtls
    assert ice is not None and ice.usernameFragment == "n0de"
    assert dtls is not None and dtls.role == "server"


@pytest.mark.parametrize(
    ("codecs", "expected_video"),
    [
        (
            ["opus", "VP8", "VP9", "H264", "AV1"],
            ["video/VP8", "video/rtx", "video/H264", "video/rtx", "video/H264", "video/rtx"],
        ),
        (["opus", "H264/42e01f"], ["video/H264", "video/rtx", "video/H264", "video/rtx"]),
        (
            ["H264", "opus", "VP8"],
            ["video/H264", "video/rtx", "video/H264", "video/rtx", "video/VP8", "video/rtx"],
        ),
    ],
)
async def test_aiortc_publisher_accepts_answer(
    make_pc: Callable[[], RTCPeerConnection], codecs: list[str], expected_video: list[str]
) -> None:
    pc = make_pc()
    text = await aiortc_offer(pc, ("audio", "sendonly"), ("video", "sendonly"), datachannel=True)
    offer = parse_sdp(text)
    answer = build_answer(offer, negotiate_publish(offer, CodecPolicy.parse(codecs)), LOCAL)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    assert pc.signalingState == "stable"
    audio, video = pc.getTransceivers()
    assert [c.mimeType for c in audio._codecs] == ["audio/opus"]
    assert [c.mimeType for c in video._codecs] == expected_video
    assert audio.currentDirection == "sendonly" and video.currentDirection == "sendonly"
    assert pc.sctp is not None


@pytest.mark.parametrize(
    ("codecs", "kind", "allowed", "detail"),
    [
        (
            ["opus", "AV1"],
            "video",
            ["AV1"],
            "the room allows video codecs AV1, but the video section (mid '1') offers VP8, H264",
        ),
        (["opus", "VP9/2"], "video", ["VP9/2"], "allows video codecs VP9/2"),
        (["opus", "H264/4d001f"], "video", ["H264/main"], "offers VP8, H264"),
        (["opus"], "video", [], "the room allows no video codec, but the offer sends video (mid '1')"),
        (["PCMU", "VP8"], "audio", ["PCMU"], "audio codecs PCMU"),
    ],
)
async def test_publish_refused_when_no_codec_is_allowed(
    make_pc: Callable[[], RTCPeerConnection], codecs: list[str], kind: str, allowed: list[str], detail: str
) -> None:
    text = await aiortc_offer(make_pc(), ("audio", "sendonly"), ("video", "sendonly"))
    text = text.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace(" 9 0 8\r\n", " 9 8\r\n")  # no PCMU offered
    offer = parse_sdp(text)
    with pytest.raises(ApiError) as caught:
        negotiate_publish(offer, CodecPolicy.parse(codecs))
    err = caught.value
    assert err.code == "codec/unsupported" and err.status == 406
    assert detail in err.detail
    assert err.extra["kind"] == kind and err.extra["allowed"] == allowed


async def test_publish_recvonly_inactive_and_rejected_sections(
    make_pc: Callable[[], RTCPeerConnection],
) -> None:
    pc = make_pc()
    text = await aiortc_offer(
        pc, ("audio", "sendonly"), ("video", "recvonly"), ("video", "sendonly"), ("audio", "inactive")
    )
    offer = parse_sdp(text)
    neg = negotiate_publish(offer, CodecPolicy.parse(["opus", "VP8"]))
    outcomes = [(s.mid, s.outcome, s.direction) for s in neg.sections]
    assert outcomes == [
        ("0", SectionOutcome.ACCEPTED, Direction.RECVONLY),
        ("1", SectionOutcome.INACTIVE, Direction.INACTIVE),
        ("2", SectionOutcome.ACCEPTED, Direction.RECVONLY),
        ("3", SectionOutcome.INACTIVE, Direction.INACTIVE),
    ]
    assert [t.mid for t in neg.tracks] == ["0", "2"]
    answer = build_answer(offer, neg, LOCAL)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    directions = [t.currentDirection for t in pc.getTransceivers()]
    assert directions == ["sendonly", "inactive", "sendonly", "inactive"]

    # A section the offerer itself rejected, and one with no allowed codec, come back with port 0.
    text2 = re.sub(r"m=video \d+ UDP/TLS/RTP/SAVPF", "m=video 0 UDP/TLS/RTP/SAVPF", text, count=1)
    text2 = text2.replace("a=group:BUNDLE 0 1 2 3", "a=group:BUNDLE 0 2 3")
    offer2 = parse_sdp(text2)
    neg2 = negotiate_publish(offer2, CodecPolicy.parse(["PCMA", "VP8"]))
    assert [s.outcome for s in neg2.sections] == [
        SectionOutcome.ACCEPTED,
        SectionOutcome.REJECTED,
        SectionOutcome.ACCEPTED,
        SectionOutcome.INACTIVE,
    ]
    answer2 = build_answer(offer2, neg2, LOCAL)
    sections = answer_sections(answer2)
    assert sections[1].startswith("m=video 0 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n")
    assert "a=group:BUNDLE 0 2 3\r\n" in answer2
    assert sections[0].startswith("m=audio 7882 UDP/TLS/RTP/SAVPF 8\r\n")


@pytest.mark.parametrize(
    ("offered", "preferred", "answered", "aiortc_role"),
    [
        ("actpass", Setup.PASSIVE, "passive", "client"),
        ("actpass", Setup.ACTIVE, "active", "server"),
        ("active", Setup.PASSIVE, "passive", None),
        ("active", Setup.ACTIVE, "passive", None),
        ("passive", Setup.PASSIVE, "active", None),
    ],
)
async def test_dtls_setup_is_answered_by_role(
    make_pc: Callable[[], RTCPeerConnection],
    offered: str,
    preferred: Setup,
    answered: str,
    aiortc_role: str | None,
) -> None:
    pc = make_pc()
    text = await aiortc_offer(pc, ("audio", "sendonly"))
    offer = parse_sdp(text.replace("a=setup:actpass", f"a=setup:{offered}"))
    local = LocalParams(
        LOCAL.ice_ufrag, LOCAL.ice_pwd, LOCAL.fingerprint, LOCAL.candidates, dtls_role=preferred
    )
    answer = build_answer(offer, negotiate_publish(offer, CodecPolicy.default()), local)
    assert lines_of(answer, "a=setup:") == [f"a=setup:{answered}"]
    if aiortc_role is not None:  # aiortc offers actpass only; check it takes the opposite role
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert pc.getTransceivers()[0].sender.transport._role == aiortc_role


def test_simulcast_needs_the_rid_extension() -> None:
    text = chrome_offer().replace("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", "")
    offer = parse_sdp(text)
    neg = negotiate_publish(offer, CodecPolicy.default())
    assert neg.sections[1].simulcast is None and neg.tracks[1].rids == ()
    assert "a=simulcast" not in build_answer(offer, neg, LOCAL)


def test_simulcast_answers_only_declared_rids_and_keeps_paused() -> None:
    text = chrome_offer().replace("a=simulcast:send q;h;f", "a=simulcast:send q;~h;f,x")
    neg = negotiate_publish(parse_sdp(text), CodecPolicy.default())
    assert neg.sections[1].simulcast is not None
    assert neg.sections[1].simulcast.value() == "recv q;~h;f"


def test_simulcast_layers_are_capped() -> None:
    rids = [f"r{i}" for i in range(6)]
    text = chrome_offer().replace(
        "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n", "".join(f"a=rid:{r} send\r\n" for r in rids)
    )
    text = text.replace("a=simulcast:send q;h;f", "a=simulcast:send " + ";".join(rids))
    offer = parse_sdp(text)
    assert len(offer.media[1].rids) == 6
    neg = negotiate_publish(offer, CodecPolicy.default())
    assert neg.tracks[1].rids == ("r0", "r1", "r2", "r3")
    assert lines_of(build_answer(offer, neg, LOCAL), "a=rid:") == [f"a=rid:r{i} recv" for i in range(4)]


# --- subscribe (WHEP) --------------------------------------------------------------------------


def chrome_published() -> tuple[TrackDescription, TrackDescription]:
    neg = negotiate_publish(parse_sdp(chrome_offer()), CodecPolicy.default())
    audio, video = neg.tracks
    return (
        TrackDescription.from_publish("TRa", "alice", audio),
        TrackDescription.from_publish("TRv", "alice", video),
    )


async def test_aiortc_subscriber_gets_chrome_tracks(make_pc: Callable[[], RTCPeerConnection]) -> None:
    pc = make_pc()
    seen: list[str] = []
    pc.on("track", lambda track: seen.append(track.kind))
    text = await aiortc_offer(pc, ("audio", "recvonly"), ("video", "recvonly"))
    offer = parse_sdp(text)
    audio_pub, video_pub = chrome_published()
    tracks = [OutgoingTrack(audio_pub, 1111), OutgoingTrack(video_pub, 2222, 2223)]
    neg = negotiate_subscribe(offer, tracks, CodecPolicy.default(), cname="levelchat")
    audio, video = neg.tracks
    assert audio.pt_map == {111: 96}  # Chrome opus 111 -> aiortc opus 96
    assert audio.header_extension_map == {4: 1, 1: 2}  # mid 4->1, audio-level 1->2
    # VP8 is sent; H264 is mapped too (exact profiles: 42001f -> 99, 42e01f -> 101) should
    # the publisher switch.  Chrome's packetization-mode=0 variants have no aiortc match.
    assert video.pt_map == {96: 97, 97: 98, 102: 99, 103: 100, 106: 101, 107: 102}
    assert video.mappings[0].name == "VP8"
    assert video.rtx_ssrc == 2223 and video.ssrc == 2222
    assert video.header_extension_map == {2: 3, 4: 1}  # abs-send-time, mid
    assert neg.refused == ()
    answer = build_answer(offer, neg, LOCAL)
    _, vsec = answer_sections(answer)
    assert lines_of(vsec, "a=ssrc-group:") == ["a=ssrc-group:FID 2222 2223"]
    assert "a=ssrc:2222 cname:levelchat" in vsec and "a=ssrc:2223 msid:alice TRv" in vsec
    assert "a=msid:alice TRv" in vsec and "a=sendonly" in vsec
    assert HDREXT_RID not in vsec
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    assert sorted(seen) == ["audio", "video"]
    a_tr, v_tr = pc.getTransceivers()
    assert [c.mimeType for c in v_tr._codecs] == ["video/VP8", "video/rtx"] + ["video/H264", "video/rtx"] * 2
    assert [c.payloadType for c in v_tr._codecs] == [97, 98, 99, 100, 101, 102]
    assert a_tr.currentDirection == "recvonly" and v_tr.currentDirection == "recvonly"


@pytest.mark.parametrize(
    ("publisher_codecs", "sent", "subscriber_pt", "subscriber_rtx"),
    [
        (
            ["H264/42e01f"],
            "42001f",
            102,
            103,
        ),  # first offered is baseline pm1 -> exact profile at the subscriber
        (["H264/4d001f"], "4d001f", 127, 125),
        (["VP9/2"], "profile-id=2", 100, 101),
        (["AV1"], "profile=0", 45, 46),
    ],
)
def test_chrome_whep_subscriber_profiles(
    publisher_codecs: list[str], sent: str, subscriber_pt: int, subscriber_rtx: int
) -> None:
    pub_neg = negotiate_publish(parse_sdp(chrome_offer()), CodecPolicy.parse(["opus", *publisher_codecs]))
    video_pub = TrackDescription.from_publish("v", "s", pub_neg.tracks[1])
    assert sent in (video_pub.codec.fmtp_value() or "")
    offer = parse_sdp(chrome_whep_offer())
    neg = negotiate_subscribe(offer, [OutgoingTrack(video_pub, 5, 6)], CodecPolicy.default(), cname="c")
    (track,) = neg.tracks
    assert track.mid == "1"
    assert track.mappings[0].subscriber_pt == subscriber_pt
    assert track.mappings[0].subscriber_rtx_pt == subscriber_rtx
    assert [s.outcome for s in neg.sections] == [
        SectionOutcome.INACTIVE,
        SectionOutcome.ACCEPTED,
        SectionOutcome.ACCEPTED,
    ]
    answer = build_answer(offer, neg, LOCAL)
    assert f"m=video 7882 UDP/TLS/RTP/SAVPF {subscriber_pt} {subscriber_rtx}" in answer
    assert "a=inactive" in answer_sections(answer)[0]


def test_h264_constrained_baseline_publisher_to_baseline_only_subscriber() -> None:
    pub_neg = negotiate_publish(parse_sdp(chrome_offer()), CodecPolicy.parse(["opus", "H264/42e01f"]))
    cb = next(c for c in pub_neg.tracks[1].codecs if c.fmtp.get("profile-level-id") == "42e01f")
    track = TrackDescription("v", MediaKind.VIDEO, "s", (cb,))
    whep = chrome_whep_offer()
    for pt in (106, 107, 108, 109):  # drop every 42e01f payload type: only 42001f stays
        whep = re.sub(rf"a=(rtpmap|fmtp|rtcp-fb):{pt} [^\r]*\r\n", "", whep).replace(f" {pt} ", " ")
    neg = negotiate_subscribe(parse_sdp(whep), [OutgoingTrack(track, 5)], CodecPolicy.default(), cname="c")
    assert neg.tracks[0].pt_map == {106: 102}
    assert neg.tracks[0].rtx_ssrc is None  # no RTX SSRC given: RTX is not negotiated
    assert [c.pt for c in neg.tracks[0].codecs] == [102]


async def test_subscribe_partial_refusal(make_pc: Callable[[], RTCPeerConnection]) -> None:
    pc = make_pc()
    text = await aiortc_offer(pc, ("audio", "recvonly"), ("video", "recvonly"))
    offer = parse_sdp(text)
    vp9_pub = negotiate_publish(parse_sdp(chrome_offer()), CodecPolicy.parse(["opus", "VP9"]))
    audio_pub = TrackDescription.from_publish("a1", "bob", vp9_pub.tracks[0])
    video_pub = TrackDescription.from_publish("v1", "bob", vp9_pub.tracks[1])
    neg = negotiate_subscribe(
        offer,
        [OutgoingTrack(audio_pub, 10), OutgoingTrack(video_pub, 20, 21)],
        CodecPolicy.default(),
        cname="c",
    )
    assert [t.track_id for t in neg.tracks] == ["a1"]
    (refusal,) = neg.refused
    assert refusal.track_id == "v1" and refusal.code == "codec/unsupported"
    assert "VP9/90000 profile-id=0" in refusal.detail and "offered: VP8, H264" in refusal.detail
    assert [s.outcome for s in neg.sections] == [SectionOutcome.ACCEPTED, SectionOutcome.INACTIVE]
    answer = build_answer(offer, neg, LOCAL)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    assert [t.currentDirection for t in pc.getTransceivers()] == ["recvonly", "inactive"]

    with pytest.raises(ApiError) as caught:
        negotiate_subscribe(offer, [OutgoingTrack(video_pub, 20, 21)], CodecPolicy.default(), cname="c")
    assert caught.value.code == "codec/unsupported" and caught.value.status == 406
    assert caught.value.extra == {"refused": ["v1"]}


async def test_subscribe_without_tracks_answers_inactive(make_pc: Callable[[], RTCPeerConnection]) -> None:
    pc = make_pc()
    offer = parse_sdp(await aiortc_offer(pc, ("audio", "recvonly"), ("video", "recvonly")))
    neg = negotiate_subscribe(offer, [], CodecPolicy.default(), cname="c")
    assert neg.tracks == () and neg.refused == ()
    assert all(s.outcome is SectionOutcome.INACTIVE for s in neg.sections)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=build_answer(offer, neg, LOCAL), type="answer"))
    assert [t.currentDirection for t in pc.getTransceivers()] == ["inactive", "inactive"]


def test_subscribe_red_is_mapped_when_both_sides_have_it() -> None:
    audio_pub, _ = chrome_published()
    assert [c.name for c in audio_pub.codecs] == ["opus", "red"]
    whep = chrome_whep_offer().replace("111 63 9", "109 62 9").replace("a=rtpmap:111", "a=rtpmap:109")
    whep = whep.replace("a=fmtp:111", "a=fmtp:109").replace("a=rtcp-fb:111", "a=rtcp-fb:109")
    whep = whep.replace("a=rtpmap:63", "a=rtpmap:62").replace("a=fmtp:63 111/111", "a=fmtp:62 109/109")
    neg = negotiate_subscribe(
        parse_sdp(whep), [OutgoingTrack(audio_pub, 1)], CodecPolicy.default(), cname="c"
    )
    assert neg.tracks[0].pt_map == {111: 109, 63: 62}
    assert [c.pt for c in neg.sections[0].codecs] == [109, 62]


# --- server offer -------------------------------------------------------------------------------


async def test_build_offer_and_apply_aiortc_answer(make_pc: Callable[[], RTCPeerConnection]) -> None:
    audio_pub, video_pub = chrome_published()
    pub2 = negotiate_publish(parse_sdp(chrome_offer()), CodecPolicy.parse(["opus", "H264", "VP8"]))
    h264_pub = TrackDescription.from_publish("TRh", "carol", pub2.tracks[1])
    tracks = [
        OutgoingTrack(audio_pub, 100),
        OutgoingTrack(video_pub, 200, 201),
        OutgoingTrack(h264_pub, 300, 301),
    ]
    plan = build_offer(tracks, CodecPolicy.default(), LOCAL, cname="node")
    desc_lines = plan.sdp.split("\r\n")
    assert "a=setup:actpass" in desc_lines and "a=ice-lite" in desc_lines
    # One PT means one codec across the bundle: VP8 is shared by both video sections.
    vp8_pts = {c.pt for s in plan.sections for c in s.codecs if c.name == "VP8"}
    assert len(vp8_pts) == 1
    pc = make_pc()
    seen: list[str] = []
    pc.on("track", lambda track: seen.append(track.kind))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=plan.sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    assert sorted(seen) == ["audio", "video", "video"]
    neg = apply_answer(plan, pc.localDescription.sdp)
    assert [t.track_id for t in neg.tracks] == ["TRa", "TRv", "TRh"]
    audio, video, h264 = neg.tracks
    node_opus = plan.sections[0].codecs[0].pt
    assert audio.pt_map == {111: node_opus}
    assert video.mappings[0].publisher_pt == 96 and video.mappings[0].subscriber_rtx_pt is not None
    assert video.rtx_ssrc == 201
    assert h264.mappings[0].name == "H264" and h264.mappings[0].publisher_pt == 102
    assert set(video.header_extension_map) == {2, 4} and set(audio.header_extension_map) == {1, 4}
    assert neg.refused == ()


def test_apply_answer_refuses_foreign_payload_types() -> None:
    audio_pub, _ = chrome_published()
    plan = build_offer([OutgoingTrack(audio_pub, 1)], CodecPolicy.default(), LOCAL, cname="n")
    fake = chrome_whep_offer()  # a "reply" that renumbers: not an answer to our offer
    fake = fake.replace("BUNDLE 0 1 2", "BUNDLE 0").replace("a=setup:actpass", "a=setup:active")
    fake = fake.split("m=video")[0]
    with pytest.raises(ValueError, match="payload type 111 was not offered"):
        apply_answer(plan, fake)


def test_local_params_are_checked() -> None:
    with pytest.raises(ValueError, match="ice_ufrag"):
        LocalParams("ab", LOCAL.ice_pwd, FINGERPRINT)
    with pytest.raises(ValueError, match="fingerprint"):
        LocalParams(LOCAL.ice_ufrag, LOCAL.ice_pwd, "AB:CD")
    with pytest.raises(ValueError, match="dtls_role"):
        LocalParams(LOCAL.ice_ufrag, LOCAL.ice_pwd, FINGERPRINT, dtls_role=Setup.ACTPASS)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        LocalParams(LOCAL.ice_ufrag, LOCAL.ice_pwd, FINGERPRINT, candidates=(("nope", 1),))
    six = LocalParams(LOCAL.ice_ufrag, LOCAL.ice_pwd, FINGERPRINT, candidates=(("::1", 7882),))
    offer = parse_sdp(chrome_offer())
    answer = build_answer(offer, negotiate_publish(offer, CodecPolicy.default()), six)
    assert "c=IN IP6 ::1" in answer and "a=candidate:1 1 udp 2130706431 ::1 7882 typ host" in answer


# --- transport-wide congestion control with subscribers (issue 12) ---------------------------


def test_whep_answer_negotiates_transport_cc_with_the_subscriber() -> None:
    """A subscriber that offers transport-cc gets it in every section, beside goog-remb, at its own
    id (whatever the publisher's leg negotiated), and its id reaches the forwarder."""
    audio_pub, video_pub = chrome_published()
    offer = parse_sdp(chrome_whep_offer())
    offered_id = offer.media[1].header_extensions[TWCC]
    neg = negotiate_subscribe(
        offer, [OutgoingTrack(audio_pub, 1), OutgoingTrack(video_pub, 2, 3)], CodecPolicy.default(), cname="c"
    )
    audio, video = neg.tracks
    assert audio.header_extensions[TWCC] == video.header_extensions[TWCC] == offered_id
    assert "transport-cc" in audio.codecs[0].rtcp_fb
    assert {"transport-cc", "goog-remb"} <= set(video.codecs[0].rtcp_fb)
    answer = build_answer(offer, neg, LOCAL)
    asec, vsec, _ = answer_sections(answer)
    assert f"a=extmap:{offered_id} {TWCC}" in asec and f"a=extmap:{offered_id} {TWCC}" in vsec
    pt = video.codecs[0].pt
    assert f"a=rtcp-fb:{pt} transport-cc" in vsec and f"a=rtcp-fb:{pt} goog-remb" in vsec


def test_whep_answer_without_transport_cc_offered_has_none() -> None:
    audio_pub, video_pub = chrome_published()
    text = chrome_whep_offer()
    text = "\r\n".join(line for line in text.split("\r\n") if TWCC not in line and "transport-cc" not in line)
    offer = parse_sdp(text)
    neg = negotiate_subscribe(offer, [OutgoingTrack(video_pub, 2, 3)], CodecPolicy.default(), cname="c")
    (video,) = neg.tracks
    assert TWCC not in video.header_extensions
    answer = build_answer(offer, neg, LOCAL)
    assert TWCC not in answer and "transport-cc" not in answer and "goog-remb" in answer


def test_node_offer_to_a_subscriber_carries_transport_cc() -> None:
    audio_pub, video_pub = chrome_published()
    plan = build_offer([OutgoingTrack(audio_pub, 100), OutgoingTrack(video_pub, 200, 201)], CodecPolicy.default(), LOCAL, cname="n")
    audio, video = answer_sections(plan.sdp)
    ids = {plan.sections[0].header_extensions[TWCC], plan.sections[1].header_extensions[TWCC]}
    assert len(ids) == 1  # one id across the bundle
    for section, codecs in ((audio, plan.sections[0].codecs), (video, plan.sections[1].codecs)):
        assert f"a=extmap:{next(iter(ids))} {TWCC}" in section
        primary = next(c for c in codecs if c.is_primary)
        assert f"a=rtcp-fb:{primary.pt} transport-cc" in section
    vp8 = next(c for c in plan.sections[1].codecs if c.name == "VP8")
    assert "goog-remb" in vp8.rtcp_fb
