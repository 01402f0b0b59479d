"""``foreign_ext_ids``: the ids a WHEP subscriber's offer uses for anything but transport-wide-cc,
over every section (a downtrack leaves a publisher's transport-wide seq in place only outside them)."""

from __future__ import annotations

from sfu.api.sessions import foreign_ext_ids
from sfu.packet.twcc import TWCC_URI
from sfu.signaling.sdp import parse_sdp
from tests.sfu.signaling.test_sdp import chrome_whep_offer


def test_chrome_offer_keeps_its_transport_cc_id_free() -> None:
    ids = foreign_ext_ids(parse_sdp(chrome_whep_offer()))
    assert 3 not in ids  # Chromium's transport-wide-cc id, in both sections
    assert {1, 2, 4, 13, 14} <= ids  # audio level (audio), abs-send-time, mid, orientation, toffset (video)


def test_an_id_used_for_another_extension_in_any_section_is_foreign() -> None:
    """aiortc-like: audio has no id 3, video uses 3 for abs-send-time: 3 is foreign for the audio
    downtrack too (the receiver maps ids across the BUNDLE)."""
    text = chrome_whep_offer()
    text = text.replace(f"a=extmap:3 {TWCC_URI}\r\n", "", 2)
    text = text.replace(
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:13",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:13",
    )
    offer = parse_sdp(text)
    audio, video = offer.media[0], offer.media[1]
    assert 3 not in audio.header_extensions.values() and video.header_extensions[
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    ] == 3
    assert 3 in foreign_ext_ids(offer)
