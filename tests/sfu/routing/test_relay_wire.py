"""Relay keys, relay SSRCs and the relay's room messages: pure units."""

from __future__ import annotations

import random

import pytest

from sfu.routing.relay_parts import SsrcAllocator
from sfu.routing.relay_wire import RelayMessage, RelayOp, RelayTrack
from sfu.routing.track import TrackCodec
from sfu.transport.relay import relay_keys
from sfu.transport.srtp import SrtpContext, SrtpProfile

SECRET = bytes(range(32))
GCM = SrtpProfile.AEAD_AES_128_GCM


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_the_two_ends_derive_mirror_keys(profile: SrtpProfile) -> None:
    a = relay_keys(profile, SECRET, "w0-w1", "w0", "w1")
    b = relay_keys(profile, SECRET, "w0-w1", "w1", "w0")
    assert (a.local_key, a.local_salt) == (b.remote_key, b.remote_salt)
    assert (a.remote_key, a.remote_salt) == (b.local_key, b.local_salt)
    assert a.local_key != a.remote_key
    # a's protect is b's unprotect
    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9]) + b"payload"
    protected = SrtpContext.outbound(a).protect_rtp_bytes(packet)
    assert protected is not None and SrtpContext.inbound(b).unprotect_rtp_bytes(protected) == packet


def test_keys_differ_per_relay_and_per_secret() -> None:
    base = relay_keys(GCM, SECRET, "w0-w1", "w0", "w1")
    assert relay_keys(GCM, SECRET, "w0-w1#2", "w0", "w1").local_key != base.local_key
    assert relay_keys(GCM, bytes(32), "w0-w1", "w0", "w1").local_key != base.local_key
    assert relay_keys(GCM, SECRET, "w0-w1", "w0", "w1") == base  # deterministic


@pytest.mark.parametrize(
    ("secret", "relay", "local", "remote", "error"),
    [
        (bytes(31), "r", "a", "b", "32 bytes"),
        (SECRET, "", "a", "b", "relay id"),
        (SECRET, "r", "", "b", "local label"),
        (SECRET, "r", "a", "a>b", "remote label"),
        (SECRET, "r", "a", "a", "different labels"),
        (SECRET, "r" * 65, "a", "b", "relay id"),
    ],
)
def test_bad_key_inputs_are_refused(secret: bytes, relay: str, local: str, remote: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        relay_keys(GCM, secret, relay, local, remote)


def test_relay_ssrcs_are_unique_and_freed() -> None:
    alloc = SsrcAllocator(random.Random(7))
    taken = {alloc.take() for _ in range(1000)}
    assert len(taken) == 1000 and 0 not in taken
    one = next(iter(taken))
    alloc.free(one)
    assert one not in alloc.used and len(alloc.used) == 999


TRACK = RelayTrack(
    ssrc=0xDEADBEEF, sid="TR_1", kind="video", mid="1",
    codecs=(TrackCodec("VP8", 90_000, 96), TrackCodec("H264", 90_000, 102, ("h264/42e01f/1",))),
    ext_ids={"urn:ietf:params:rtp-hdrext:sdes:mid": 4}, muted=True,
)


@pytest.mark.parametrize(
    "msg",
    [
        RelayMessage(RelayOp.JOIN, "r", "alice", sid="PA_1", kind="rtc", name="Alice", metadata=None),
        RelayMessage(RelayOp.PUBLISH, "r", "alice", track=TRACK),
        RelayMessage(RelayOp.UNPUBLISH, "r", "alice", ssrc=7),
        RelayMessage(RelayOp.MUTE, "r", "alice", ssrc=7, muted=True),
        RelayMessage(RelayOp.LEAVE, "r", "alice"),
        RelayMessage(RelayOp.DATA, "r", "alice", data={"payload": "aGk="}),
        RelayMessage(RelayOp.NEED, "*", "*", ssrcs=(1, 0xFFFFFFFF)),
    ],
)
def test_messages_round_trip(msg: RelayMessage) -> None:
    assert RelayMessage.parse(msg.to_json()) == msg


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ([], "JSON object"),
        ({"op": "nope", "room": "r", "identity": "a"}, "op: one of"),
        ({"op": "leave", "identity": "a"}, "room"),
        ({"op": "leave", "room": "r", "identity": ""}, "identity"),
        ({"op": "leave", "room": "r", "identity": "a" * 300}, "at most 256"),
        ({"op": "join", "room": "r", "identity": "a", "kind": "rtc"}, "sid"),
        ({"op": "unpublish", "room": "r", "identity": "a", "ssrc": 0}, "ssrc"),
        ({"op": "unpublish", "room": "r", "identity": "a", "ssrc": True}, "ssrc"),
        ({"op": "mute", "room": "r", "identity": "a", "ssrc": 1, "muted": "yes"}, "muted"),
        ({"op": "publish", "room": "r", "identity": "a"}, "track: an object"),
        ({"op": "publish", "room": "r", "identity": "a", "track": {**TRACK.to_json(), "kind": "text"}}, "audio or video"),
        ({"op": "publish", "room": "r", "identity": "a", "track": {**TRACK.to_json(), "codecs": []}}, "1 to 16 codecs"),
        (
            {"op": "publish", "room": "r", "identity": "a", "track": {**TRACK.to_json(), "ext_ids": {"u": 0}}},
            "id from 1 to 255",
        ),
        (
            {"op": "publish", "room": "r", "identity": "a",
             "track": {**TRACK.to_json(), "codecs": [{"name": "VP8", "clock_rate": 90000, "pt": 128}]}},
            "pt",
        ),
        ({"op": "data", "room": "r", "identity": "a", "data": "x"}, "data: an object"),
        ({"op": "need", "room": "*", "identity": "*", "ssrcs": [0]}, "ssrcs"),
        ({"op": "need", "room": "*", "identity": "*", "ssrcs": "1"}, "ssrcs"),
        ({"op": "need", "room": "*", "identity": "*", "ssrcs": list(range(1, 5000))}, "up to 4096"),
    ],
)
def test_bad_messages_are_refused_precisely(obj: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RelayMessage.parse(obj)
