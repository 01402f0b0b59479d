"""The worker relay's pure parts: the front's setup, room policies and track descriptions as JSON."""

from __future__ import annotations

import pytest

from sfu.routing.rooms import RoomPolicy
from sfu.signaling import sdp
from sfu.signaling.codecs import CodecParams, MediaKind
from sfu.workers.relay_json import RelaySetup, channel_proof, describe, parse_policy, policy_json, undescribe

SETUP = {
    "relay_id": "w0-w1-1", "secret": "ab" * 32, "local": "w0", "remote": "w1",
    "peer_host": "127.0.0.1", "peer_port": 7883, "peer_socket": "/tmp/x/worker-1.sock", "dial": True,
}


def test_setup_parses() -> None:
    s = RelaySetup.parse(SETUP)
    assert (s.relay_id, s.secret, s.peer_port, s.dial) == ("w0-w1-1", bytes([0xAB]) * 32, 7883, True)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"secret": "zz"}, "secret: hex"),
        ({"secret": "ab" * 31}, "32 bytes"),
        ({"peer_port": 0}, "peer_port"),
        ({"peer_port": "7883"}, "peer_port"),
        ({"local": ""}, "local"),
        ({"peer_socket": None}, "peer_socket"),
    ],
)
def test_bad_setups_are_refused(change: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RelaySetup.parse({**SETUP, **change})


def test_channel_proof_is_per_relay_and_secret() -> None:
    a = channel_proof(b"k" * 32, "w0-w1-1")
    assert a == channel_proof(b"k" * 32, "w0-w1-1")
    assert a != channel_proof(b"k" * 32, "w0-w1-2") and a != channel_proof(b"j" * 32, "w0-w1-1")


def test_policy_round_trip_and_bad_policies() -> None:
    p = RoomPolicy(max_participants=7, codecs=("opus", "VP8"), empty_timeout_s=30, recording=True)
    assert parse_policy(policy_json(p)) == p
    for bad, error in (
        (None, "an object"),
        ({**policy_json(p), "max_participants": 0}, "max_participants"),
        ({**policy_json(p), "codecs": "opus"}, "codecs"),
        ({**policy_json(p), "empty_timeout_s": -1}, "empty_timeout_s"),
        ({**policy_json(p), "recording": 1}, "recording"),
    ):
        with pytest.raises(ValueError, match=error):
            parse_policy(bad)


def test_description_round_trip() -> None:
    d = sdp.TrackDescription(
        "TR_1", MediaKind.VIDEO, "alice",
        (
            CodecParams(96, "VP8", 90000, None, {}, ("nack", "nack pli", "goog-remb"), 97),
            CodecParams(97, "rtx", 90000, None, {"apt": "96"}),
        ),
        {"urn:ietf:params:rtp-hdrext:sdes:mid": 4},
    )
    assert undescribe(describe(d)) == d
    with pytest.raises(ValueError, match="track description"):
        undescribe({"track_id": "x"})
