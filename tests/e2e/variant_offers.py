"""Hand-written offers whose video section lists several variants of one codec, as browsers make
them (Chromium: H264 in four profiles by two packetization modes, VP9 profiles 0 and 2; Firefox:
other payload type numbers), for the tests of payload types per codec variant."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

#: (payload type, codec, fmtp) of a video section
Variant = tuple[int, str, str]

#: Chromium's video codecs (its payload type numbers, RTX left out), preferred first
CHROMIUM_VIDEO: tuple[Variant, ...] = (
    (96, "VP8", ""),
    (98, "VP9", "profile-id=0"),
    (100, "VP9", "profile-id=2"),
    (102, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    (104, "H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
    (106, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    (108, "H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
    (127, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
    (39, "H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f"),
    (45, "AV1", "level-idx=5;profile=0;tier=0"),
    (112, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
)
#: Firefox's H264 (constrained baseline, packetization-mode 1 first) and VP9 (no profile-id: 0)
FIREFOX_H264: tuple[Variant, ...] = (
    (126, "H264", "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1"),
    (97, "H264", "profile-level-id=42e01f;level-asymmetry-allowed=1"),
)
FIREFOX_VP9: tuple[Variant, ...] = ((121, "VP9", "max-fs=12288;max-fr=60"),)
OPUS_PT = 111


def variant_offer(
    ufrag: str,
    pwd: str,
    fingerprint: str,
    video: Sequence[Variant],
    *,
    send: bool,
    video_ssrc: int = 0,
    audio_ssrc: int = 0,
    extmaps: Sequence[str] = (),
) -> str:
    """A BUNDLE offer: a video section with ``video`` (nack and PLI on each) and an opus audio
    section, sendonly with those SSRCs or recvonly; ``extmaps`` (``"1/sendonly urn:..."``) go
    on both sections."""
    direction = "sendonly" if send else "recvonly"
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
    ]
    sections = (
        ("video", video, video_ssrc),
        ("audio", [(OPUS_PT, "opus", "minptime=10;useinbandfec=1")], audio_ssrc),
    )
    for mid, (kind, codecs, ssrc) in enumerate(sections):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {' '.join(str(pt) for pt, _, _ in codecs)}",
            "c=IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            f"a=fingerprint:sha-256 {fingerprint}",
            "a=setup:active",
            f"a=mid:{mid}",
            *[f"a=extmap:{e}" for e in extmaps],
            f"a={direction}",
            "a=rtcp-mux",
        ]
        for pt, name, fmtp in codecs:
            clock = "48000/2" if name == "opus" else "90000"
            lines.append(f"a=rtpmap:{pt} {name}/{clock}")
            if kind == "video":
                lines += [f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
            if fmtp:
                lines.append(f"a=fmtp:{pt} {fmtp}")
        if send:
            lines += [f"a=ssrc:{ssrc} cname:variants", f"a=msid:variants {kind}"]
    return "\r\n".join(lines) + "\r\n"
