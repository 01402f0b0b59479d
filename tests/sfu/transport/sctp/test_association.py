from __future__ import annotations

from collections.abc import Callable

import pytest

from sfu.transport.sctp.association import (
    AssociationState,
    Closed,
    Connected,
    OutgoingStreamsReset,
    SctpConfig,
    SctpDrop,
    SendOutcome,
    StreamsReset,
)
from sfu.transport.sctp.chunks import (
    CookieEchoChunk,
    DataChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitChunk,
    UnknownChunk,
    parse_chunks,
)
from sfu.transport.sctp.packet import Packet, encode
from tests.sfu.transport.sctp.pair import Pair

PPID_BINARY = 53


def established(**kw: object) -> Pair:
    pair = Pair(**kw)  # type: ignore[arg-type]
    pair.connect()
    assert pair.a.assoc.state is AssociationState.ESTABLISHED
    assert pair.b.assoc.state is AssociationState.ESTABLISHED
    return pair


def has_data(packet: bytes) -> bool:
    return any(isinstance(c, DataChunk) for c in parse_chunks(packet[12:]))


def drop_first_data() -> Callable[[int, bytes], bool]:
    """A ``drop`` filter that loses the first packet carrying DATA, and nothing else."""
    lost = False

    def drop(_i: int, p: bytes) -> bool:
        nonlocal lost
        if not lost and has_data(p):
            lost = True
            return True
        return False

    return drop


def test_handshake_either_side_and_both() -> None:
    for both in (False, True):
        pair = Pair()
        pair.connect(both=both)
        assert pair.a.events == [Connected()] and pair.b.events == [Connected()]
        assert pair.a.assoc.peer_tag == pair.b.assoc.my_tag and pair.b.assoc.peer_tag == pair.a.assoc.my_tag
        assert sum(pair.a.assoc.stats.drops) == sum(pair.b.assoc.stats.drops) == 0
        assert pair.a.assoc.peer_supports_forward_tsn and pair.a.assoc.peer_supports_reconfig


def test_lost_init_and_cookie_echo_are_retransmitted() -> None:
    pair = Pair()
    pair.a.drop = lambda i, _p: i in (0, 2)  # the first INIT and the first COOKIE-ECHO
    pair.a.assoc.connect(pair.now)
    pair.run(5000)
    assert pair.a.assoc.is_established and pair.b.assoc.is_established
    assert pair.a.assoc.stats.retransmissions == 2


def test_setup_gives_up_after_the_init_retransmissions() -> None:
    pair = Pair(SctpConfig(max_init_retransmissions=2))
    pair.a.drop = lambda _i, _p: True
    pair.a.assoc.connect(pair.now)
    pair.run(20_000)
    assert pair.a.assoc.state is AssociationState.CLOSED
    assert isinstance(pair.a.events[-1], Closed) and "INIT" in pair.a.events[-1].reason.upper()


@pytest.mark.parametrize("size", [1, 1040, 1041, 60_000, 65_536])
def test_fragmentation_and_reassembly(size: int) -> None:
    pair = established()
    data = bytes(i % 253 for i in range(size))
    sent_before = pair.a.sent
    assert pair.a.assoc.send_message(1, PPID_BINARY, data, pair.now) is SendOutcome.QUEUED
    pair.run(1000)
    assert pair.messages(pair.b) == [data]
    assert pair.a.sent - sent_before >= size // 1100
    assert pair.a.assoc.buffered_bytes == 0


@pytest.mark.parametrize("start", [0xFFFFFFFF - 30, 0xFFFFFFFF, 0])
def test_tsn_wraparound(start: int) -> None:
    pair = established(tsn_a=start, tsn_b=start)
    msgs = [bytes([i]) * (500 + 97 * i) for i in range(40)]
    for m in msgs:
        pair.a.assoc.send_message(0, PPID_BINARY, m, pair.now)
        pair.b.assoc.send_message(0, PPID_BINARY, m, pair.now)
    pair.run(2000)
    assert pair.messages(pair.b) == msgs and pair.messages(pair.a) == msgs


LOSS: list[tuple[str, Callable[[int, bytes], bool]]] = [
    ("every third", lambda i, p: i % 3 == 2),
    ("first five data packets", lambda i, p: has_data(p) and i < 8),
    ("a burst", lambda i, p: 4 <= i < 14),
    ("every other", lambda i, p: i % 2 == 1 and i < 200),
]


@pytest.mark.parametrize(("name", "drop"), LOSS, ids=[n for n, _ in LOSS])
def test_reliable_ordered_delivery_under_loss(name: str, drop: Callable[[int, bytes], bool]) -> None:
    pair = established()
    pair.a.drop = drop
    msgs = [f"message {i} ".encode() * (1 + i % 300) for i in range(60)]
    for m in msgs:
        assert pair.a.assoc.send_message(2, 51, m, pair.now) is SendOutcome.QUEUED
    pair.run(60_000)
    assert pair.messages(pair.b) == msgs  # all, in order, exactly once
    assert pair.a.assoc.stats.retransmissions > 0
    assert pair.a.assoc.buffered_bytes == 0


def test_sack_loss_is_repaired_too() -> None:
    pair = established()
    pair.b.drop = lambda i, p: i % 2 == 0
    msgs = [bytes([i]) * 900 for i in range(30)]
    for m in msgs:
        pair.a.assoc.send_message(0, PPID_BINARY, m, pair.now)
    pair.run(30_000)
    assert pair.messages(pair.b) == msgs
    assert pair.a.assoc.buffered_bytes == 0


def test_unordered_messages_do_not_wait_for_a_lost_one() -> None:
    pair = established()
    pair.a.drop = drop_first_data()
    for i in range(3):
        pair.a.assoc.send_message(4, PPID_BINARY, bytes([i]), pair.now, ordered=False)
    pair.deliver()
    assert pair.messages(pair.b) == [b"\x01", b"\x02"]  # before the retransmission
    pair.run(3000)
    assert pair.messages(pair.b) == [b"\x01", b"\x02", b"\x00"]


@pytest.mark.parametrize("ordered", [True, False])
def test_partial_reliability_forward_tsn(ordered: bool) -> None:
    pair = established()
    pair.a.drop = drop_first_data()
    lossy = [bytes([i]) * 3000 for i in range(3)]  # three chunks each
    for m in lossy:
        pair.a.assoc.send_message(6, PPID_BINARY, m, pair.now, ordered=ordered, max_retransmits=0)
    pair.run(5000)
    got = pair.messages(pair.b)
    assert lossy[0] not in got  # its first packet was lost, never retransmitted
    assert sorted(got) == sorted(lossy[1:])
    assert pair.a.assoc.stats.abandoned == 1
    # the peer's cumulative TSN moved past the abandoned message: the stream goes on
    pair.a.assoc.send_message(6, PPID_BINARY, b"after", pair.now, ordered=ordered, max_retransmits=0)
    pair.run(1000)
    assert pair.messages(pair.b)[-1] == b"after"
    assert pair.a.assoc.buffered_bytes == 0
    assert pair.b.assoc._held == {}


def test_lifetime_expiry_abandons_queued_messages() -> None:
    pair = established()
    pair.a.drop = lambda _i, _p: True  # nothing gets through for a while
    pair.a.assoc.send_message(1, PPID_BINARY, b"x" * 500, pair.now, ordered=False, lifetime_ms=300)
    pair.run(2000)
    pair.a.drop = None
    pair.run(3000)
    assert pair.messages(pair.b) == []
    assert pair.a.assoc.stats.abandoned == 1 and pair.a.assoc.buffered_bytes == 0


def test_heartbeat_is_answered() -> None:
    pair = established()
    packet = encode(5000, 5000, pair.b.assoc.my_tag, bytes(HeartbeatChunk(((1, b"ping"),))))
    pair.a.wire.clear()
    pair.b.assoc.feed(packet, pair.now)
    answer = Packet.parse(pair.b.wire.pop())
    assert answer.chunks == (HeartbeatAckChunk(((1, b"ping"),)),)


def bad_inputs(pair: Pair) -> list[tuple[bytes, SctpDrop]]:
    tag = pair.b.assoc.my_tag
    data = bytes(DataChunk(12345, 0, 0, 51, b"x"))
    good = encode(5000, 5000, tag, data)
    return [
        (b"\x00\x01", SctpDrop.MALFORMED),
        (good[:8] + b"\x00\x00\x00\x00" + good[12:], SctpDrop.BAD_CHECKSUM),
        (encode(5000, 5001, tag, data), SctpDrop.BAD_PORT),
        (encode(4999, 5000, tag, data), SctpDrop.BAD_PORT),
        (encode(5000, 5000, tag ^ 1, data), SctpDrop.BAD_TAG),
        (encode(5000, 5000, tag, bytes(InitChunk(9, 1500, 1, 1, 1))), SctpDrop.BAD_TAG),
        (encode(5000, 5000, 0, bytes(InitChunk(9, 1500, 1, 1, 1)) + data), SctpDrop.BAD_TAG),
        (encode(5000, 5000, tag, bytes(CookieEchoChunk(b"forged" * 10))), SctpDrop.BAD_COOKIE),
        (encode(5000, 5000, tag, b"\x00\x00\x00\x05\x00\x00\x00\x00"), SctpDrop.MALFORMED),
        (encode(5000, 5000, tag, bytes(UnknownChunk(0x3F, 0, b"zz"))), SctpDrop.UNKNOWN_CHUNK),
        (encode(5000, 5000, tag, b"\x01" * 16), SctpDrop.MALFORMED),
    ]


def test_bad_input_is_dropped_and_counted_by_reason() -> None:
    pair = established()
    for raw, reason in bad_inputs(pair):
        before = list(pair.b.assoc.stats.drops)
        assert pair.b.assoc.feed(raw, pair.now) == []
        assert pair.b.assoc.stats.drops[reason] == before[reason] + 1, reason
    assert pair.b.assoc.is_established
    pair.b.wire.clear()
    pair.a.assoc.send_message(0, PPID_BINARY, b"still fine", pair.now)
    pair.run(500)
    assert pair.messages(pair.b) == [b"still fine"]


def test_random_garbage_never_raises() -> None:
    import random

    rng = random.Random(7)
    pair = established()
    for _ in range(2000):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.5 and len(raw) >= 16:  # valid header and CRC, garbage chunks
            raw = encode(5000, 5000, pair.b.assoc.my_tag, raw[12:])
        pair.b.assoc.feed(raw, pair.now)
    assert pair.b.assoc.is_established or pair.b.assoc.state is AssociationState.CLOSED


def test_oversized_message_is_discarded_and_the_stream_goes_on() -> None:
    pair = established(a=SctpConfig(remote_max_message_size=0), b=SctpConfig(max_message_size=4096))
    pair.a.assoc.send_message(1, PPID_BINARY, b"z" * 5000, pair.now)
    pair.a.assoc.send_message(1, PPID_BINARY, b"next", pair.now)
    pair.run(1000)
    assert pair.messages(pair.b) == [b"next"]
    assert pair.b.assoc.stats.drops[SctpDrop.MESSAGE_TOO_LARGE] == 1


def test_send_refusals() -> None:
    pair = established(a=SctpConfig(max_buffered_bytes=10_000, remote_max_message_size=8000))
    assoc = pair.a.assoc
    assert assoc.send_message(0, PPID_BINARY, b"x" * 8001, pair.now) is SendOutcome.TOO_LARGE
    pair.a.drop = lambda _i, _p: True  # a receiver that never answers
    assert assoc.send_message(0, PPID_BINARY, b"x" * 6000, pair.now) is SendOutcome.QUEUED
    assert assoc.send_message(0, PPID_BINARY, b"x" * 6000, pair.now) is SendOutcome.BUFFER_FULL
    assert assoc.send_message(1, PPID_BINARY, b"y" * 2000, pair.now, ordered=False, max_retransmits=0) is SendOutcome.QUEUED
    assert assoc.buffered_bytes <= 10_000
    # the lossy one is given up; the reliable one is retried until the association gives up
    pair.run(200_000, step=100)
    assert assoc.state is AssociationState.CLOSED
    assert any(isinstance(e, Closed) and "retransmissions" in e.reason for e in pair.a.events)
    assert assoc.send_message(0, PPID_BINARY, b"x", pair.now) is SendOutcome.NOT_OPEN


def test_receive_side_holds_a_bounded_number_of_chunks() -> None:
    pair = established(b=SctpConfig(max_held_chunks=4))
    pair.a.drop = drop_first_data()
    msgs = [bytes([i]) * 100 for i in range(12)]
    for m in msgs:
        pair.a.assoc.send_message(0, PPID_BINARY, m, pair.now)
    pair.run(20_000)
    assert pair.b.assoc.stats.drops[SctpDrop.RECEIVE_WINDOW_FULL] > 0
    assert pair.messages(pair.b) == msgs


def test_stream_reset_both_ways() -> None:
    pair = established()
    pair.a.assoc.send_message(3, PPID_BINARY, b"one", pair.now)
    pair.a.assoc.send_message(3, PPID_BINARY, b"two", pair.now)
    pair.deliver()
    pair.a.assoc.reset_streams([3], pair.now)
    assert pair.a.assoc.send_message(3, PPID_BINARY, b"during", pair.now) is SendOutcome.STREAM_RESETTING
    pair.deliver()
    assert StreamsReset((3,)) in pair.b.events
    assert OutgoingStreamsReset((3,)) in pair.a.events
    # the stream starts again at SSN 0 on both sides
    pair.a.assoc.send_message(3, PPID_BINARY, b"again", pair.now)
    pair.run(500)
    assert pair.messages(pair.b) == [b"one", b"two", b"again"]


@pytest.mark.parametrize("before", [0, 1, 3])
def test_stream_reset_waits_for_data_in_flight(before: int) -> None:
    """The late message is the stream's SSN ``before``: it is delivered before the reset, which
    then takes the stream back to SSN 0 (a reset done first would strand SSN >= 1 forever)."""
    pair = established()
    earlier = [f"m{i}".encode() for i in range(before)]
    for m in earlier:
        pair.a.assoc.send_message(5, PPID_BINARY, m, pair.now)
    pair.deliver()
    pair.a.drop = drop_first_data()
    pair.a.assoc.send_message(5, PPID_BINARY, b"late", pair.now)
    pair.a.assoc.reset_streams([5], pair.now)
    pair.deliver()
    assert not any(isinstance(e, StreamsReset) for e in pair.b.events)  # in progress
    pair.run(5000)
    assert pair.messages(pair.b) == [*earlier, b"late"]
    assert StreamsReset((5,)) in pair.b.events and OutgoingStreamsReset((5,)) in pair.a.events
    assert pair.b.assoc._held == {}
    pair.a.assoc.send_message(5, PPID_BINARY, b"after", pair.now)  # SSN 0 again on both sides
    pair.run(500)
    assert pair.messages(pair.b)[-1] == b"after"


def test_shutdown_and_abort() -> None:
    pair = established()
    pair.a.assoc.send_message(0, PPID_BINARY, b"last words", pair.now)
    pair.a.assoc.shutdown(pair.now)
    pair.run(1000)
    assert pair.messages(pair.b) == [b"last words"]
    assert pair.a.events[-1] == Closed("shutdown") and pair.b.events[-1] == Closed("shutdown")
    assert pair.a.assoc.feed(b"\x00" * 20, pair.now) == []
    assert pair.a.assoc.stats.drops[SctpDrop.CLOSED] == 1

    pair = established()
    pair.a.assoc.abort()
    pair.deliver()
    assert pair.b.assoc.state is AssociationState.CLOSED
    assert pair.b.events[-1] == Closed("aborted by the peer")
