"""PublishedTrack fan-out and keyframe handling, RtxCache; packets go out through real CONNECTED
transports and are read back, unprotected, by raw clients."""

from __future__ import annotations

import struct

import pytest

from sfu.counters import MediaCounters
from sfu.packet.rtp import RtpPacket, get_extension
from sfu.routing.downtrack import DownTrack
from sfu.routing.rtx_cache import RTX_CACHE_FIRST_SLOTS, RTX_CACHE_SLOTS, RTX_SLOT_BYTES, RtxCache
from sfu.routing.track import (
    KEYFRAME_REQUEST_INTERVAL_MS,
    PublishedTrack,
    TrackCodec,
    extension_ids,
)
from sfu.transport.peer import CloseReason
from tests.sfu.routing.harness import (
    OPUS_FRAME,
    VP8_CONTINUATION,
    VP8_DELTA,
    VP8_KEY,
    Link,
    rtp_bytes,
)

VP8 = TrackCodec("VP8", 90_000, 96)
OPUS = TrackCodec("opus", 48_000, 111)
PUB_SSRC = 0xA1B2C3D4
T0 = 100_000


class KeyframeRequests:
    """Stands in for the publisher side (PublisherSink.request_keyframe): records the SSRCs."""

    def __init__(self) -> None:
        self.ssrcs: list[int] = []

    def __call__(self, ssrc: int) -> None:
        self.ssrcs.append(ssrc)


def video_track(counters: MediaCounters, requests: KeyframeRequests | None = None) -> PublishedTrack:
    return PublishedTrack(
        kind="video",
        ssrc=PUB_SSRC,
        codecs=[VP8],
        mid="0",
        owner="alice",
        counters=counters,
        request_keyframe=requests or KeyframeRequests(),
    )


def audio_track(counters: MediaCounters) -> PublishedTrack:
    return PublishedTrack(
        kind="audio",
        ssrc=PUB_SSRC + 1,
        codecs=[OPUS],
        mid="1",
        owner="alice",
        counters=counters,
        request_keyframe=KeyframeRequests(),
    )


def downtrack(link: Link, kind: str = "video", ssrc: int = 0x5EB5C0DE) -> DownTrack:
    return DownTrack(
        peer=link.peer,
        kind=kind,
        mid="0" if kind == "video" else "1",
        ssrc=ssrc,
        out_payload_types={"VP8": 100} if kind == "video" else {"opus": 109},
        out_ext_ids={},
        counters=link.counters,
    )


def push(track: PublishedTrack, seq: int, payload: bytes, now_ms: int, pt: int | None = None) -> None:
    pt = track.codec.payload_type if pt is None else pt
    data = rtp_bytes(seq, seq * 3000, ssrc=track.ssrc, pt=pt, payload=payload)
    track.on_rtp(memoryview(data), len(data), now_ms)


async def received(link: Link, count: int) -> list[RtpPacket]:
    out = [RtpPacket.parse(await link.client.recv_rtp()) for _ in range(count)]
    assert await link.client.nothing_arrives(0.1)
    return out


# -- RtxCache -----------------------------------------------------------------------------------------


def test_rtx_cache_returns_what_was_put() -> None:
    cache = RtxCache()
    data = bytes(range(200))
    cache.put(memoryview(data), len(data), 4242)
    hit = cache.get(4242)
    assert hit is not None
    buf, length = hit
    assert length == 200 and bytes(buf[:length]) == data
    assert cache.get(4243) is None


@pytest.mark.parametrize(
    ("puts", "present", "absent"),
    [
        (range(0, RTX_CACHE_SLOTS), [0, RTX_CACHE_SLOTS - 1], [RTX_CACHE_SLOTS]),
        (range(0, RTX_CACHE_SLOTS + 10), [10, RTX_CACHE_SLOTS + 9], [0, 9]),  # the oldest 10 overwritten
        (range(65530, 65536 + 6), [65535, 0, 5], [65529]),  # wraps (stored as 16-bit seqs)
        (range(65536 - RTX_CACHE_SLOTS, 65536 + RTX_CACHE_SLOTS), list(range(0, RTX_CACHE_SLOTS)), [65535, 65536 - RTX_CACHE_SLOTS]),
    ],
    ids=["full", "overwrite", "wrap", "wrap-full-turn"],
)
def test_rtx_cache_slots_and_wrap(puts: range, present: list[int], absent: list[int]) -> None:
    cache = RtxCache()
    for ext in puts:
        seq = ext & 0xFFFF
        data = seq.to_bytes(2, "big") * 10
        cache.put(memoryview(data), len(data), seq)
    for seq in present:
        hit = cache.get(seq)
        assert hit is not None, seq
        assert bytes(hit[0][:2]) == seq.to_bytes(2, "big") and hit[1] == 20
    for seq in absent:
        assert cache.get(seq) is None, seq


def test_rtx_cache_holds_one_slot_until_the_first_packet_then_grows_with_the_rate() -> None:
    idle = RtxCache()
    assert idle.slots == 1 and len(idle.bufs) == 1  # ~1.5 KB for a track that never sends
    data = b"\x07" * 100
    slow, fast = RtxCache(), RtxCache()
    for n in range(2000):  # 30 packets/s and 1000 packets/s, 2000 packets each
        slow.put(memoryview(data), len(data), n, now_ms=n * 1000 // 30)
        fast.put(memoryview(data), len(data), n, now_ms=n)
    assert slow.slots == RTX_CACHE_FIRST_SLOTS  # a second of a slow stream fits in the first slots
    assert fast.slots == RTX_CACHE_SLOTS  # the bound, never more
    assert len(fast.bufs) == RTX_CACHE_SLOTS
    for n in range(2000 - RTX_CACHE_FIRST_SLOTS, 2000):  # the newest packets survive each growth
        assert slow.get(n) is not None and fast.get(n) is not None
    assert fast.get(2000 - RTX_CACHE_SLOTS) is not None and fast.get(2000 - RTX_CACHE_SLOTS - 1) is None


def test_rtx_cache_keeps_its_packets_when_it_grows() -> None:
    cache = RtxCache()
    for seq in range(65500, 65536 + 60):  # grows while the 16-bit sequence wraps
        data = (seq & 0xFFFF).to_bytes(2, "big") * 10
        cache.put(memoryview(data), len(data), seq & 0xFFFF, now_ms=0)
    assert cache.slots >= 128
    for seq in range(65500, 65536 + 60):
        hit = cache.get(seq & 0xFFFF)
        assert hit is not None and bytes(hit[0][:2]) == (seq & 0xFFFF).to_bytes(2, "big"), seq


def test_video_tracks_allocate_their_cache_with_their_first_packets() -> None:
    counters = MediaCounters()
    track = video_track(counters)
    assert track.rtx_cache is not None and track.rtx_cache.slots == 1


def test_rtx_cache_skips_packets_larger_than_a_slot() -> None:
    cache = RtxCache(slots=16)
    small = b"\x01" * 100
    cache.put(memoryview(small), len(small), 3)
    big = b"\x02" * (RTX_SLOT_BYTES + 1)
    cache.put(memoryview(big), len(big), 3 + 16)  # same slot: must not answer for either wrongly
    assert cache.get(3 + 16) is None
    hit = cache.get(3)
    assert hit is not None and bytes(hit[0][: hit[1]]) == small
    exact = b"\x03" * RTX_SLOT_BYTES
    cache.put(memoryview(exact), len(exact), 4)
    hit = cache.get(4)
    assert hit is not None and hit[1] == RTX_SLOT_BYTES


# -- construction ------------------------------------------------------------------------------------


def test_track_needs_a_codec() -> None:
    with pytest.raises(ValueError, match="at least one codec"):
        PublishedTrack(
            kind="audio", ssrc=1, codecs=[], mid="0", owner="a", counters=MediaCounters(), request_keyframe=print
        )


def test_video_keeps_a_retransmission_cache_and_audio_does_not() -> None:
    counters = MediaCounters()
    assert video_track(counters).rtx_cache is not None
    assert audio_track(counters).rtx_cache is None


# -- forwarding ----------------------------------------------------------------------------------------


async def test_audio_is_forwarded_from_the_first_packet(link: Link) -> None:
    track = audio_track(link.counters)
    dt = downtrack(link, "audio")
    dt.bind(track, T0)
    for i in range(5):
        push(track, 700 + i, OPUS_FRAME, T0 + 20 * i)
    got = await received(link, 5)
    assert [p.header.ssrc for p in got] == [dt.ssrc] * 5
    assert [p.header.payload_type for p in got] == [109] * 5
    assert all(p.payload == OPUS_FRAME for p in got)
    assert link.counters.rtp_in == [5, 0] and link.counters.rtp_out == [5, 0]
    assert link.counters.keyframe_requests == 0
    assert track.stats.packets == 5 and track.stats.extended_max == 704


async def test_video_waits_for_a_keyframe(link: Link) -> None:
    requests = KeyframeRequests()
    track = video_track(link.counters, requests)
    dt = downtrack(link)
    dt.bind(track, T0)
    assert requests.ssrcs == [PUB_SSRC]  # bind asks the publisher for one
    assert dt.waiting_keyframe and track.keyframe_pending
    for seq, payload in ((1, VP8_DELTA), (2, VP8_CONTINUATION), (3, VP8_DELTA)):
        push(track, seq, payload, T0 + seq)
    assert await link.client.nothing_arrives(0.1)
    assert link.counters.rtp_in[1] == 3 and link.counters.rtp_out[1] == 0
    push(track, 4, VP8_KEY, T0 + 4)
    push(track, 5, VP8_CONTINUATION, T0 + 5)
    push(track, 6, VP8_DELTA, T0 + 6)
    got = await received(link, 3)
    assert [p.payload for p in got] == [VP8_KEY, VP8_CONTINUATION, VP8_DELTA]
    assert not dt.waiting_keyframe and not track.keyframe_pending
    # the first packet out gets the downtrack's base; the rest follow it
    seqs = [p.header.sequence_number for p in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(3)]


async def test_a_keyframe_of_another_payload_type_does_not_count(link: Link) -> None:
    track = video_track(link.counters)
    dt = downtrack(link)
    dt.bind(track, T0)
    push(track, 1, VP8_KEY, T0, pt=97)  # not a VP8 payload type of this track
    assert dt.waiting_keyframe and track.keyframe_pending
    push(track, 2, VP8_KEY, T0 + 1)
    got = await received(link, 1)
    assert got[0].header.payload_type == 100


async def test_fan_out_to_two_subscribers(link: Link, second_link: Link) -> None:
    track = video_track(link.counters)
    dts = [downtrack(link, ssrc=0x1111), downtrack(second_link, ssrc=0x2222)]
    for dt in dts:
        dt.bind(track, T0)
    assert track.downtracks == dts
    push(track, 10, VP8_KEY, T0)
    for i in range(1, 4):
        push(track, 10 + i, VP8_DELTA, T0 + i)
    for lk, dt in ((link, dts[0]), (second_link, dts[1])):
        got = await received(lk, 4)
        assert {p.header.ssrc for p in got} == {dt.ssrc}
        assert [p.payload for p in got] == [VP8_KEY] + [VP8_DELTA] * 3
    assert link.counters.rtp_out[1] == 8


async def test_a_late_subscriber_waits_without_stalling_the_first(link: Link, second_link: Link) -> None:
    requests = KeyframeRequests()
    track = video_track(link.counters, requests)
    first = downtrack(link, ssrc=0x1111)
    first.bind(track, T0)
    push(track, 1, VP8_KEY, T0)
    push(track, 2, VP8_DELTA, T0 + 1)
    late = downtrack(second_link, ssrc=0x2222)
    late.bind(track, T0 + 2 * KEYFRAME_REQUEST_INTERVAL_MS)
    assert requests.ssrcs == [PUB_SSRC, PUB_SSRC]
    push(track, 3, VP8_DELTA, T0 + 2 * KEYFRAME_REQUEST_INTERVAL_MS + 1)
    push(track, 4, VP8_KEY, T0 + 2 * KEYFRAME_REQUEST_INTERVAL_MS + 2)
    assert [p.payload for p in await received(link, 4)] == [VP8_KEY, VP8_DELTA, VP8_DELTA, VP8_KEY]
    assert [p.payload for p in await received(second_link, 1)] == [VP8_KEY]


async def test_the_fan_out_group_forwards_as_the_downtracks_would(link: Link, second_link: Link) -> None:
    """In-order packets go through the track's fan-out group; gaps, a pause and NACKs in between
    give what each downtrack alone gives: continuous offsets, counts, retransmissions."""
    track = video_track(link.counters)
    a, b = downtrack(link, ssrc=0x1111), downtrack(second_link, ssrc=0x2222)
    for dt in (a, b):
        dt.bind(track, T0)
    push(track, 100, VP8_KEY, T0)
    for seq in range(101, 106):
        push(track, seq, VP8_DELTA, T0 + seq)
    assert a.fast_track is track and b.fast_track is track  # the group formed
    push(track, 108, VP8_DELTA, T0 + 108)  # a gap: one by one, then the group again
    push(track, 109, VP8_DELTA, T0 + 109)
    b.paused = True
    assert b.fast_track is None
    push(track, 110, VP8_DELTA, T0 + 110)
    b.paused = False
    push(track, 111, VP8_DELTA, T0 + 111)
    assert a.fast_track is track and b.fast_track is track
    sent_a = [100, 101, 102, 103, 104, 105, 108, 109, 110, 111]
    sent_b = [s for s in sent_a if s != 110]
    for lk, dt, seqs in ((link, a, sent_a), (second_link, b, sent_b)):
        got = await received(lk, len(seqs))
        assert {p.header.ssrc for p in got} == {dt.ssrc}
        assert [p.header.payload_type for p in got] == [100] * len(seqs)
        first = got[0].header
        assert [(p.header.sequence_number - first.sequence_number) & 0xFFFF for p in got] == [s - 100 for s in seqs]
        assert [(p.header.timestamp - first.timestamp) & 0xFFFFFFFF for p in got] == [(s - 100) * 3000 for s in seqs]
        assert dt.packets_sent == len(seqs)
        assert dt.octets_sent == sum(len(p.payload) for p in got)
        assert dt.ts.last_out == got[-1].header.timestamp
        assert dt.seq.last_out == got[-1].header.sequence_number
    assert link.counters.rtp_out[1] == len(sent_a) + len(sent_b)
    # a NACK after group forwarding: the munger knows the packets the group sent
    out_104 = (a.seq.last_out - 7) & 0xFFFF
    assert a.seq.unmap(out_104) == 104
    assert a.retransmit([out_104], T0 + 200) == 1
    raw = await link.client.recv()  # the client has it already (SRTP replay): read the clear header
    assert struct.unpack_from("!H", raw, 2)[0] == out_104


async def test_a_group_dissolving_within_a_batch_keeps_the_order(link: Link, second_link: Link) -> None:
    """Issue 11, defect 17: in one receive batch a packet went one by one (into the subscriber's
    own lane), the next through the group (a later lane), and after the group dissolved (here: a
    peer's address changed, as in an ICE restart) the third into the subscriber's own lane again;
    the ring sends lane by lane, so the third overtook the second."""
    track = audio_track(link.counters)
    a, b = downtrack(link, "audio", ssrc=0x1111), downtrack(second_link, "audio", ssrc=0x2222)
    for dt in (a, b):
        dt.bind(track, T0)
    ring = link.port.out_ring
    ring.auto_flush = False  # as inside a reader wakeup: packets wait for the flush
    push(track, 100, OPUS_FRAME, T0)  # one by one: the group forms after it
    push(track, 101, OPUS_FRAME, T0 + 20)
    assert a.fast_track is track and b.fast_track is track
    ring.generation += 1  # what PeerTransport does when a peer moves to another address
    push(track, 102, OPUS_FRAME, T0 + 40)
    push(track, 103, OPUS_FRAME, T0 + 60)  # the group again
    ring.auto_flush = True
    link.port.flush()
    for lk in (link, second_link):
        got = await received(lk, 4)
        first = got[0].header.sequence_number
        assert [(p.header.sequence_number - first) & 0xFFFF for p in got] == [0, 1, 2, 3]


async def test_a_closed_subscriber_leaves_the_fan_out_group(link: Link, second_link: Link) -> None:
    track = audio_track(link.counters)
    a, b = downtrack(link, "audio", ssrc=0x1111), downtrack(second_link, "audio", ssrc=0x2222)
    for dt in (a, b):
        dt.bind(track, T0)
    for seq in range(1, 4):
        push(track, seq, OPUS_FRAME, T0 + seq)
    assert b.fast_track is track
    second_link.peer.close(CloseReason.LEFT, send_alert=False)
    for seq in range(4, 7):
        push(track, seq, OPUS_FRAME, T0 + seq)
    assert len(await received(link, 6)) == 6
    assert len(await received(second_link, 3)) == 3
    assert b.fast_track is None and a.fast_track is track
    assert (a.packets_sent, b.packets_sent) == (6, 3)
    assert link.counters.rtp_out[0] == 9 and sum(link.counters.srtp_errors) == 0


def test_attach_and_detach_are_idempotent(link: Link) -> None:
    track = video_track(link.counters)
    a, b = downtrack(link, ssrc=1), downtrack(link, ssrc=2)
    track.attach(a)
    track.attach(a)
    track.attach(b)
    assert track.downtracks == [a, b]
    track.detach(a)
    track.detach(a)
    assert track.downtracks == [b]
    assert track.describe()["subscribers"] == 1


def test_close_unbinds_and_lets_go_of_the_publisher_and_the_cache(link: Link) -> None:
    requests = KeyframeRequests()
    track = video_track(link.counters, requests)
    dt = downtrack(link)
    dt.bind(track, T0)
    switching = downtrack(link, ssrc=3)
    track.add_switcher(switching, T0)
    switching.pending_source = track
    assert track.rtx_cache is not None and requests.ssrcs
    track.close()
    assert dt.source is None and track.downtracks == [] and track.switching == []
    assert switching.pending_source is None
    assert track.rtx_cache is None and track.group is None
    before = len(requests.ssrcs)
    track.request_keyframe(T0 + 10 * KEYFRAME_REQUEST_INTERVAL_MS)
    assert len(requests.ssrcs) == before, "a closed track still calls its publisher"
    push(track, 1, VP8_KEY, T0 + 1)  # a late packet is harmless
    assert dt.retransmit([dt.seq.fast_delta + 1], T0 + 2) == 0


# -- keyframe request throttling ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "sent"),
    [
        ([0], [True]),
        ([0, 1], [True, False]),
        ([0, KEYFRAME_REQUEST_INTERVAL_MS - 1], [True, False]),
        ([0, KEYFRAME_REQUEST_INTERVAL_MS], [True, True]),
        ([0, 100, 200, 600, 700, 1100], [True, False, False, True, False, True]),
    ],
)
def test_keyframe_requests_are_throttled(times: list[int], sent: list[bool]) -> None:
    counters = MediaCounters()
    requests = KeyframeRequests()
    track = video_track(counters, requests)
    assert [track.request_keyframe(T0 + t) for t in times] == sent
    assert len(requests.ssrcs) == sent.count(True) == counters.keyframe_requests


def test_a_request_nobody_waits_on_is_not_owed_and_marks_nothing() -> None:
    """``wait=False`` (a recording): throttled like the others, not deferred, and ``on_rtp`` is
    set looking for the keyframe by it (a video track looks only until its first keyframe, for its
    picture size: no per-packet check for a stream that never sends one after that)."""
    counters = MediaCounters()
    requests = KeyframeRequests()
    track = video_track(counters, requests)
    track.keyframe_pending = False  # its first keyframe came
    assert track.request_keyframe(T0, wait=False) is True
    assert track.request_keyframe(T0 + 100, wait=False) is False  # throttled, and not owed
    assert not track.keyframe_pending and not track._keyframe_deferred
    assert track.request_keyframe(T0 + KEYFRAME_REQUEST_INTERVAL_MS, wait=False) is True
    assert requests.ssrcs == [PUB_SSRC, PUB_SSRC] and counters.keyframe_requests == 2
    assert audio_track(counters).request_keyframe(T0, wait=False) is False


def test_audio_never_requests_keyframes() -> None:
    counters = MediaCounters()
    track = audio_track(counters)
    assert track.request_keyframe(T0) is False
    assert counters.keyframe_requests == 0 and not track.keyframe_pending


async def test_a_throttled_request_is_sent_by_a_later_packet(link: Link) -> None:
    requests = KeyframeRequests()
    track = video_track(link.counters, requests)
    dt = downtrack(link)
    dt.bind(track, T0)  # request 1 at T0
    assert track.request_keyframe(T0 + 100) is False  # e.g. a subscriber's PLI: deferred
    push(track, 1, VP8_DELTA, T0 + 200)
    push(track, 2, VP8_DELTA, T0 + KEYFRAME_REQUEST_INTERVAL_MS - 1)
    assert len(requests.ssrcs) == 1
    push(track, 3, VP8_DELTA, T0 + KEYFRAME_REQUEST_INTERVAL_MS)  # the interval has passed
    assert len(requests.ssrcs) == 2
    push(track, 4, VP8_DELTA, T0 + KEYFRAME_REQUEST_INTERVAL_MS + 1)
    push(track, 5, VP8_DELTA, T0 + 3 * KEYFRAME_REQUEST_INTERVAL_MS)  # owed nothing: no more
    assert len(requests.ssrcs) == 2
    assert link.counters.keyframe_requests == 2
    push(track, 6, VP8_KEY, T0 + 3 * KEYFRAME_REQUEST_INTERVAL_MS + 1)
    assert [p.payload for p in await received(link, 1)] == [VP8_KEY]


async def test_a_keyframe_settles_a_deferred_request(link: Link) -> None:
    requests = KeyframeRequests()
    track = video_track(link.counters, requests)
    downtrack(link).bind(track, T0)
    track.request_keyframe(T0 + 10)  # deferred
    push(track, 1, VP8_KEY, T0 + 20)  # the keyframe came anyway
    push(track, 2, VP8_DELTA, T0 + 10 * KEYFRAME_REQUEST_INTERVAL_MS)
    assert len(requests.ssrcs) == 1
    await received(link, 2)


def _with_ext(profile: int, body: bytes, cc: int = 0) -> bytes:
    body += bytes(-len(body) % 4)
    return (
        struct.pack("!BBHII", 0x90 | cc, 96, 1, 2, 3)
        + bytes(4 * cc)
        + struct.pack("!HH", profile, len(body) // 4)
        + body
        + b"payload"
    )


EXT_ID_CASES = [
    ("one-byte, two elements", _with_ext(0xBEDE, bytes([0x10, 0xAA, 0x31, 1, 2])), (1 << 1) | (1 << 3)),
    ("one-byte, trailing padding", _with_ext(0xBEDE, bytes([0x20, 7])), 1 << 2),
    ("one-byte after CSRCs", _with_ext(0xBEDE, bytes([0xE0, 7]), cc=2), 1 << 14),
    ("one-byte, padding between elements", _with_ext(0xBEDE, bytes([0x10, 1, 0, 0, 0, 0x20, 1])), -1),
    ("one-byte, reserved id 15", _with_ext(0xBEDE, bytes([0xF0, 1])), -1),
    ("one-byte, empty block", _with_ext(0xBEDE, b""), -1),
    ("two-byte, padding between", _with_ext(0x1000, bytes([5, 1, 9, 0, 200, 0])), (1 << 5) | (1 << 200)),
    ("two-byte, element past the end", _with_ext(0x1000, bytes([5, 9, 1, 2])), -1),
    ("other profile", _with_ext(0x1234, bytes(4)), -1),
]


@pytest.mark.parametrize(("name", "packet", "mask"), EXT_ID_CASES, ids=[c[0] for c in EXT_ID_CASES])
def test_extension_ids(name: str, packet: bytes, mask: int) -> None:
    assert extension_ids(memoryview(packet), len(packet)) == mask


# -- upstream loss recovery (NACKs to the publisher, late packets) ------------------------------------


class Nacks:
    """Stands in for PublisherSink.send_nack: records (media SSRC, seqs) batches."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []

    def __call__(self, ssrc: int, seqs: list[int]) -> None:
        self.batches.append((ssrc, list(seqs)))


def nacking_track(counters: MediaCounters, nacks: Nacks, *, nack: bool = True) -> PublishedTrack:
    return PublishedTrack(
        kind="video",
        ssrc=PUB_SSRC,
        codecs=[VP8],
        mid="0",
        owner="alice",
        counters=counters,
        request_keyframe=KeyframeRequests(),
        nack=nack,
        rtx_apt={97: 96},
        send_nack=nacks,
    )


def test_gaps_are_nacked_in_batches_and_retried() -> None:
    counters = MediaCounters()
    nacks = Nacks()
    track = nacking_track(counters, nacks)
    push(track, 1, VP8_KEY, T0)
    push(track, 2, VP8_DELTA, T0)
    push(track, 5, VP8_DELTA, T0 + 1)  # 3 and 4 lost: one NACK for both
    push(track, 6, VP8_DELTA, T0 + 2)
    push(track, 8, VP8_DELTA, T0 + 3)  # 7 lost, within the batch interval: waits
    assert nacks.batches == [(PUB_SSRC, [3, 4])]
    push(track, 9, VP8_DELTA, T0 + 10)
    assert nacks.batches[-1] == (PUB_SSRC, [7])
    push(track, 4, VP8_DELTA, T0 + 20)  # plain reordering fills a hole
    push(track, 10, VP8_DELTA, T0 + 101)  # a round trip (default 100 ms) later: 3 again
    assert nacks.batches[-1] == (PUB_SSRC, [3])
    assert counters.nack_out == 3
    assert counters.nack_out_seqs == [3, 1]  # first / retry
    assert counters.recovered == [0, 1]  # rtx / reorder
    assert track.nack is not None and track.nack.holes == [3, 7]


def test_no_nacks_without_nack_negotiated_nor_for_audio() -> None:
    counters = MediaCounters()
    nacks = Nacks()
    track = nacking_track(counters, nacks, nack=False)
    assert track.nack is None
    push(track, 1, VP8_KEY, T0)
    push(track, 5, VP8_DELTA, T0 + 1)
    assert audio_track(counters).nack is None
    assert nacks.batches == [] and counters.nack_out == 0


def test_a_keyframe_makes_older_holes_moot() -> None:
    counters = MediaCounters()
    nacks = Nacks()
    track = nacking_track(counters, nacks)
    push(track, 1, VP8_KEY, T0)
    push(track, 4, VP8_DELTA, T0 + 1)
    track.request_keyframe(T0 + 2)  # a subscriber asked: the track looks for the next keyframe
    push(track, 5, VP8_KEY, T0 + 3)
    assert track.nack is not None and track.nack.holes == []
    assert counters.holes_given_up[4] == 2  # GiveUp.KEYFRAME
    push(track, 6, VP8_DELTA, T0 + 500)
    assert nacks.batches == [(PUB_SSRC, [2, 3])]  # no retry: nothing open


async def test_a_late_packet_takes_its_slot_for_every_subscriber_and_the_cache(
    link: Link, second_link: Link
) -> None:
    """The fan-out group forwards in-order packets; the late one goes one by one with the
    sequence number it would have had; a subscriber's NACK that came before it is answered by
    the packet itself, and a NACK after it from the cache."""
    counters = link.counters
    nacks = Nacks()
    track = nacking_track(counters, nacks)
    a, b = downtrack(link, ssrc=0x1111), downtrack(second_link, ssrc=0x2222)
    for dt in (a, b):
        dt.bind(track, T0)
    push(track, 65530, VP8_KEY, T0)
    for seq in (65531, 65532, 65533, 65535, 0, 1):  # 65534 lost, across the wrap
        push(track, seq, VP8_DELTA, T0 + 1)
    assert a.fast_track is track and b.fast_track is track
    assert nacks.batches == [(PUB_SSRC, [65534])]
    before = [await received(lk, 7) for lk in (link, second_link)]
    out_hole = [(got[4].header.sequence_number - 1) & 0xFFFF for got in before]
    assert [got[3].header.sequence_number for got in before] == [(o - 1) & 0xFFFF for o in out_hole]
    assert a.retransmit([out_hole[0]], T0 + 2) == 0  # the subscriber's NACK: not in the cache yet
    push(track, 65534, VP8_CONTINUATION, T0 + 3)  # the late packet (reordered, or RTX unwrapped)
    push(track, 2, VP8_DELTA, T0 + 4)  # the stream goes on
    push(track, 3, VP8_DELTA, T0 + 5)
    for lk, dt, out in ((link, a, out_hole[0]), (second_link, b, out_hole[1])):
        got = await received(lk, 3)
        assert [p.header.sequence_number for p in got] == [out, (out + 4) & 0xFFFF, (out + 5) & 0xFFFF]
        assert got[0].payload == VP8_CONTINUATION
        assert got[0].header.timestamp == (before[0 if dt is a else 1][0].header.timestamp + 4 * 3000) & 0xFFFFFFFF
    assert counters.drops == [0] * len(counters.drops)
    assert counters.recovered == [0, 1]
    assert a.fast_track is track and b.fast_track is track  # the group formed again
    assert a.retransmit([out_hole[0]], T0 + 6) == 1  # now the cache has it
    raw = await link.client.recv()
    assert struct.unpack_from("!H", raw, 2)[0] == out_hole[0]


def test_a_packet_older_than_the_cache_does_not_evict_a_newer_one() -> None:
    counters = MediaCounters()
    track = nacking_track(counters, Nacks())
    push(track, 0, VP8_KEY, T0)
    push(track, 2, VP8_DELTA, T0)  # 1 lost
    for seq in range(3, RTX_CACHE_SLOTS + 2):
        push(track, seq, VP8_DELTA, T0 + 1)
    assert track.rtx_cache is not None
    assert track.rtx_cache.get(RTX_CACHE_SLOTS + 1) is not None  # the slot 1 maps to
    push(track, 1, VP8_DELTA, T0 + 2)  # far too late for the cache
    assert track.rtx_cache.get(RTX_CACHE_SLOTS + 1) is not None and track.rtx_cache.get(1) is None


def test_on_repair_takes_only_a_packet_of_an_open_hole() -> None:
    counters = MediaCounters()
    nacks = Nacks()
    track = nacking_track(counters, nacks)
    push(track, 10, VP8_KEY, T0)
    push(track, 12, VP8_DELTA, T0)
    dup = rtp_bytes(10, 30000, ssrc=PUB_SSRC, pt=96, payload=VP8_KEY)
    assert track.on_repair(memoryview(dup), len(dup), T0 + 1) is False
    lost = rtp_bytes(11, 33000, ssrc=PUB_SSRC, pt=96, payload=VP8_DELTA)
    assert track.on_repair(memoryview(lost), len(lost), T0 + 3) is True
    assert track.on_repair(memoryview(lost), len(lost), T0 + 4) is False  # filled already
    assert counters.recovered == [1, 0]
    assert track.nack is not None and track.nack.rtt_ms < 100  # answered at the first try: a sample
    assert track.stats.packets == 3


@pytest.mark.parametrize(
    ("packet", "want", "value_at"),
    [
        (_with_ext(0xBEDE, bytes([0x10, 0xAA, 0x31, 1, 2])), 3, 12 + 4 + 3),  # the 2-byte element
        (_with_ext(0xBEDE, bytes([0x10, 0xAA, 0x31, 1, 2])), 1, 0),  # 1 byte long: not a seq
        (_with_ext(0xBEDE, bytes([0x31, 1, 2]), cc=1), 3, 12 + 4 + 4 + 1),
        (_with_ext(0x1000, bytes([5, 1, 9, 0, 7, 2, 1, 2])), 7, 12 + 4 + 6),
        (_with_ext(0x1000, bytes([7, 3, 1, 2, 3])), 7, 0),  # 3 bytes long
        (_with_ext(0xBEDE, bytes([0x10, 0xAA])), 3, 0),  # absent
    ],
)
def test_extension_ids_finds_the_wanted_2_byte_element(packet: bytes, want: int, value_at: int) -> None:
    """What the fan-out group stamps members' transport-wide seqs at; the same place get_extension gives."""
    found = [0]
    assert extension_ids(memoryview(packet), len(packet), want, found) > 0
    assert found[0] == value_at
    if value_at:
        assert get_extension(packet, len(packet), want) == (value_at, 2)
