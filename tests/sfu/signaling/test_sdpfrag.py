from __future__ import annotations

import pytest

from sfu.signaling.sdpfrag import MAX_FRAGMENT_BYTES, IceFragment, build_fragment

PWD = "p" * 22
CHROME_RESTART = (
    "a=ice-options:trickle ice2\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=mid:0\r\n"
    "a=ice-ufrag:Nw3b\r\n"
    f"a=ice-pwd:{PWD}\r\n"
    "a=candidate:1 1 udp 2113937151 127.0.0.1 53421 typ host generation 0 ufrag Nw3b network-cost 999\r\n"
    "a=end-of-candidates\r\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CHROME_RESTART, IceFragment("Nw3b", PWD, ("0",), (
            "candidate:1 1 udp 2113937151 127.0.0.1 53421 typ host generation 0 ufrag Nw3b network-cost 999",), True)),
        # session-level credentials, no media line, LF line ends
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\n", IceFragment("abcd", PWD)),
        ("a=end-of-candidates\r\n", IceFragment(end_of_candidates=True)),
        ("", IceFragment()),
        # the same credentials at both levels are one ICE session
        (f"a=ice-ufrag:abcd\r\na=ice-pwd:{PWD}\r\nm=audio 9 RTP/AVP 0\r\na=mid:a1\r\na=ice-ufrag:abcd\r\n",
         IceFragment("abcd", PWD, ("a1",))),
    ],
)
def test_parse(text: str, expected: IceFragment) -> None:
    assert IceFragment.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=ice-ufrag:abc\r\n", "line 1: a=ice-ufrag must be 4 to 256 ice-chars"),
        ("a=ice-ufrag:ab;d\r\n", "a=ice-ufrag must be"),
        ("a=end-of-candidates\r\na=ice-pwd:short\r\n", "line 2: a=ice-pwd must be 22 to 256"),
        (f"a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\na=ice-pwd:{PWD}\r\n", "more than one"),
        ("a=candidate:1 1 udp 1 127.0.0.1 9\r\n", "a=candidate needs"),
        ("a=mid:\r\n", "a=mid must be"),
        ("m=video\r\n", "not a media line"),
        ("v=0\r\n", "does not belong"),
        ("a=fingerprint:sha-256 AA:BB\r\n", "does not belong"),
        ("a=end-of-candidates\r\n" * (MAX_FRAGMENT_BYTES // 10), "larger than"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IceFragment.parse(text)


def test_build_round_trips() -> None:
    text = build_fragment("node", "n" * 24, "audio", "1", [("127.0.0.1", 7882), ("::1", 7883)])
    assert text.endswith("\r\n") and text.startswith("a=ice-lite\r\n")
    frag = IceFragment.parse(text)
    assert frag == IceFragment("node", "n" * 24, ("1",), (
        f"candidate:1 1 udp {(126 << 24) | (65535 << 8) | 255} 127.0.0.1 7882 typ host",
        f"candidate:2 1 udp {(126 << 24) | (65534 << 8) | 255} ::1 7883 typ host",
    ), True)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" in text
    with pytest.raises(ValueError):
        build_fragment("node", "n" * 24, "video", "0", [("localhost", 1)])
