"""``quality()`` of the participants API from a real track's receive statistics and a real
transport's state and consent time."""

from __future__ import annotations

from sfu import clock
from sfu.api.participants import QUALITY_LOST_MS, quality
from sfu.counters import MediaCounters
from sfu.routing.participant import Participant, ParticipantKind
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.dtls import DtlsRole
from sfu.transport.peer import CloseReason, TransportState
from tests.sfu.routing.harness import RawClient, connect, new_peer, open_port


def _track(counters: MediaCounters) -> PublishedTrack:
    return PublishedTrack(
        kind="audio", ssrc=1234, codecs=[TrackCodec("opus", 48_000, 111)], mid="0", owner="alice",
        counters=counters, request_keyframe=lambda _ssrc: None,
    )


def _receive(track: PublishedTrack, seqs: range, skip_every: int = 0) -> None:
    for seq in seqs:
        if skip_every and seq % skip_every == 0:
            continue
        track.stats.sequence(seq)
        track.stats.packets += 1


async def test_quality_follows_loss_and_transport() -> None:
    port = open_port()
    client = RawClient()
    try:
        p = Participant(identity="alice", room_id="r", kind=ParticipantKind.WHIP)
        assert quality(p, clock.now_ms()) == "excellent"  # nothing to judge yet
        track = _track(port.counters)
        p.tracks[track.ssrc] = track
        _receive(track, range(1, 1001))
        assert quality(p, clock.now_ms()) == "excellent"
        track2 = _track(port.counters)
        p.tracks[track2.ssrc + 1] = track2
        _receive(track2, range(1, 1001), skip_every=20)  # 5 % lost
        assert quality(p, clock.now_ms()) == "good"
        _receive(track2, range(1001, 2001), skip_every=3)  # a third lost since
        assert quality(p, clock.now_ms()) == "poor"

        peer = new_peer(port, client)
        p.publisher = peer
        await connect(peer, client, port, DtlsRole.SERVER)  # real ICE and DTLS over loopback
        assert peer.state is TransportState.CONNECTED
        now = peer.last_consent_ms
        assert quality(p, now) == "poor"
        assert quality(p, now + QUALITY_LOST_MS + 1) == "lost"  # silent too long
        peer.close(CloseReason.LEFT)
        assert quality(p, now) == "lost"
    finally:
        client.close()
        port.close()
