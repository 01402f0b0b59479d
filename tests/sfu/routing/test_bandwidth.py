"""remb_packet: the node's bitrate cap for a participant's video tracks that take REMB."""

from __future__ import annotations

from sfu.counters import MediaCounters
from sfu.packet import rtcp
from sfu.routing.bandwidth import remb_packet, send_remb
from sfu.routing.participant import NODE_RTCP_SSRC, Participant, ParticipantKind
from sfu.routing.track import PublishedTrack, TrackCodec


def _track(kind: str, ssrc: int, remb: bool) -> PublishedTrack:
    codec = TrackCodec("VP8", 90000, 96) if kind == "video" else TrackCodec("opus", 48000, 111)
    t = PublishedTrack(kind=kind, ssrc=ssrc, codecs=[codec], mid="0", owner="p", counters=MediaCounters(),
                       request_keyframe=lambda ssrc: None)
    t.remb = remb
    return t


def _participant(*tracks: PublishedTrack) -> Participant:
    p = Participant(identity="p", room_id="room-1", kind=ParticipantKind.RTC)
    p.tracks = {t.ssrc: t for t in tracks}
    return p


def test_remb_lists_the_known_video_ssrcs_that_take_it() -> None:
    p = _participant(_track("video", 7, True), _track("video", 3, True), _track("video", -1, True),
                     _track("video", 9, False), _track("audio", 5, True))
    packet = remb_packet(p, 3_000_000)
    assert packet is not None
    (remb,) = rtcp.parse_compound(packet)
    assert remb == rtcp.Remb(NODE_RTCP_SSRC, 3_000_000, [3, 7])


def test_layers_not_learnt_yet_get_a_remb_without_ssrcs() -> None:
    (remb,) = rtcp.parse_compound(remb_packet(_participant(_track("video", -1, True)), 500_000) or b"")
    assert isinstance(remb, rtcp.Remb) and remb.ssrcs == [] and remb.bitrate == 500_000


def test_nothing_without_a_video_track_that_takes_remb() -> None:
    assert remb_packet(_participant(_track("video", 7, False), _track("audio", 5, True)), 1_000_000) is None
    assert remb_packet(_participant(), 1_000_000) is None


def test_send_needs_a_connected_publisher_transport() -> None:
    assert not send_remb(_participant(_track("video", 7, True)), 1_000_000)
