"""Offer limits (``sfu.signaling.limits``) and the parser's own bounds: pathological offers of up
to 64 KB parse (or are refused) in bounded time, browsers' offers stay within the defaults."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from levelchat.errors import ApiError
from sfu.signaling.limits import OfferLimits
from sfu.signaling.sdp import MAX_SDP_BYTES, parse_sdp
from tests.sfu.signaling.offers import chrome_ssrc_simulcast_offer, fixture, lite_offer, ssrc_bomb

#: a parse of at most 64 KB takes milliseconds; this bound only catches superlinear work
PARSE_BOUND_S = 1.0


def _head_and_video(text: str) -> tuple[str, str]:
    head, sep, rest = text.partition("m=video")
    return head, sep + rest


def _pathological() -> dict[str, str]:
    lite = lite_offer()
    head, video = _head_and_video(lite)
    filler = 62 * 1024
    return {
        "ssrc-lines": ssrc_bomb(2500),
        "ssrc-groups": lite.replace("a=msid:lite video\r\n", "a=msid:lite video\r\n"
                                    + "a=ssrc-group:FID 4369 4370\r\n" * (filler // 28), 1),
        "rtcp-fb-star": lite.replace("a=rtpmap:96", "a=rtcp-fb:* nack\r\n" * (filler // 18) + "a=rtpmap:96", 1),
        "many-fmts": lite.replace("m=video 9 UDP/TLS/RTP/SAVPF 96", "m=video 9 UDP/TLS/RTP/SAVPF " + "96 " * 20000, 1),
        "bundle-mids": lite.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1" + " 0" * 30000, 1),
        "empty-group-lines": lite.replace("a=group:BUNDLE 0 1\r\n", "a=group:BUNDLE 0 1\r\n" + "a=group:LS\r\n" * 5000, 1),
        "group-lines": lite.replace("a=group:BUNDLE 0 1\r\n", "a=group:BUNDLE 0 1\r\n" + "a=group:LS 0 1\r\n" * 4000, 1),
        "rids": lite.replace("a=rtpmap:96", "".join(f"a=rid:r{i} send\r\n" for i in range(3300)) + "a=rtpmap:96", 1),
        "simulcast-line": lite.replace("a=rtpmap:96", "a=simulcast:send " + ";".join(f"r{i}" for i in range(9000)) + "\r\na=rtpmap:96", 1),
        "extmaps": lite.replace("a=rtpmap:96", "".join(f"a=extmap:{1 + i % 14} urn:x{i % 14}\r\n" for i in range(3000)) + "a=rtpmap:96", 1),
        "fmtp-params": lite.replace("a=rtpmap:96", "a=fmtp:96 " + ";".join(f"k{i}=v" for i in range(7000)) + "\r\na=rtpmap:96", 1),
        "sections": head.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE " + " ".join(str(i) for i in range(64)))
        + "".join(video.replace("a=mid:0", f"a=mid:{i}") for i in range(64))[: filler],
        "empty-lines": lite + "\r\n" * 30000,
        "candidates": lite.replace("a=rtpmap:96", "a=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n" * 1400 + "a=rtpmap:96", 1),
    }


@pytest.mark.parametrize("name", sorted(_pathological()))
def test_pathological_offers_parse_in_bounded_time(name: str) -> None:
    text = _pathological()[name]
    assert len(text.encode()) <= MAX_SDP_BYTES, f"{name}: {len(text.encode())} bytes"
    limits = OfferLimits()
    started = time.perf_counter()
    try:
        limits.check_offer(parse_sdp(text))
    except (ValueError, ApiError) as exc:
        assert not isinstance(exc, ApiError) or exc.code == "bad_request"
    elapsed = time.perf_counter() - started
    assert elapsed < PARSE_BOUND_S, f"{name}: {elapsed:.3f} s"


def test_the_ssrc_bomb_is_refused_naming_the_limit() -> None:
    offer = parse_sdp(ssrc_bomb(2500))
    with pytest.raises(ApiError) as info:
        OfferLimits().check_offer(offer)
    err = info.value
    assert err.code == "bad_request" and err.status == 400
    assert "max_ssrcs" in err.detail and "at most 32" in err.detail
    assert err.extra == {"limit": "max_ssrcs", "max": 32, "offered": 2502}  # and the lite offer's own two


def test_browser_offers_fit_the_defaults() -> None:
    limits = OfferLimits()
    for text in (fixture("chrome120"), fixture("firefox"), fixture("gstreamer"), lite_offer(), chrome_ssrc_simulcast_offer()):
        limits.check_offer(parse_sdp(text))
    limits.check_tracks(16)


@pytest.mark.parametrize(
    ("limits", "make", "limit"),
    [
        (OfferLimits(max_ssrcs=6), chrome_ssrc_simulcast_offer, "max_ssrcs"),  # 6 video + 1 audio
        (OfferLimits(max_media_sections=2), lambda: fixture("chrome120"), "max_media_sections"),
    ],
)
def test_each_limit_is_named(limits: OfferLimits, make: Callable[[], str], limit: str) -> None:
    with pytest.raises(ApiError, match=limit) as info:
        limits.check_offer(parse_sdp(make()))
    assert info.value.extra is not None and info.value.extra["limit"] == limit


def test_published_tracks_limit() -> None:
    OfferLimits(max_published_tracks=3).check_tracks(3)
    with pytest.raises(ApiError, match=r"4; at most 3 are accepted \(max_published_tracks\)"):
        OfferLimits(max_published_tracks=3).check_tracks(4)


def test_limits_are_checked() -> None:
    for bad in ({"max_media_sections": 0}, {"max_media_sections": 65}, {"max_ssrcs": 2000}, {"max_published_tracks": 0}):
        with pytest.raises(ValueError):
            OfferLimits(**bad)
