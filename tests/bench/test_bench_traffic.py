"""The sinks over real UDP sockets on 127.0.0.1: RTCP and STUN sharing the socket are skipped."""

from __future__ import annotations

import socket
import struct

import pylibsrtp
import pytest

from bench.packet import BenchPacket
from bench.srtpkit import Key
from bench.traffic import SinkConfig, SinkLink, Sinks, SourceConfig, open_udp

_SR = struct.pack("!BBHIQIII", 0x80, 200, 6, 0x1234, 0, 0, 0, 0)  # an empty RTCP sender report
_STUN_RESPONSE = bytes.fromhex("0101000c2112a442") + bytes(12) + bytes(12)


def _sender(key: Key) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=bytes(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    return pylibsrtp.Session(policy)


@pytest.mark.timeout(20)
def test_sink_skips_rtcp_and_stun_between_rtp() -> None:
    key = Key.random()
    sinks = Sinks(SinkConfig(expect=3, seconds=5.0, idle_ms=2000, verify_every=1), [SinkLink(open_udp(), key)])
    port = sinks.ports[0]
    tx = _sender(key)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packets = [tx.protect(bytes(BenchPacket(ssrc=7, seq=s, send_ns=0, size=1200))) for s in range(3)]
        for data in (packets[0], tx.protect_rtcp(_SR), packets[1], _STUN_RESPONSE, packets[2]):
            out.sendto(data, ("127.0.0.1", port))
        report = sinks.run()
    finally:
        out.close()
        sinks.close()
    assert report["stop_reason"] == "expected"
    per = report["sinks"][0]
    assert (per["received"], per["verified"], per["gaps"], per["late"], per["skipped"]) == (3, 3, 0, 0, 2)
    assert report["corrupt"] == report["rejected"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "count"),
        ({"pps": -1.0}, "pps"),
        ({"size": 29, "vp8": True}, "size"),
        ({"batch": 0}, "batch"),
        ({"keyframe_s": 0.0}, "keyframe_s"),
    ],
)
def test_source_config_bounds(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"count": 10, "pps": 0.0, "seconds": 1.0}
    with pytest.raises(ValueError, match=message):
        SourceConfig(**(base | kwargs))  # type: ignore[arg-type]
