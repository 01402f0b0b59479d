from __future__ import annotations

import pytest

from sfu.transport.sctp.association import SctpDrop
from sfu.transport.sctp.channels import (
    ChannelClosed,
    ChannelEvent,
    ChannelMessage,
    ChannelOpened,
    ChannelState,
    DataChannels,
)
from sfu.transport.sctp.dcep import ChannelType, DataChannelOpen, Ppid
from tests.sfu.transport.sctp.pair import Pair

OPEN_CASES = [
    (DataChannelOpen(ChannelType.RELIABLE, 0, 0, "_reliable"), True, None, None),
    (DataChannelOpen(ChannelType.PARTIAL_RELIABLE_REXMIT_UNORDERED, 256, 0, "_lossy", "p"), False, 0, None),
    (DataChannelOpen(ChannelType.PARTIAL_RELIABLE_TIMED, 0, 1500, "\u2603"), True, None, 1500),
    (DataChannelOpen(ChannelType.RELIABLE_UNORDERED, 0, 0, ""), False, None, None),
]


@pytest.mark.parametrize(("msg", "ordered", "rexmit", "lifetime"), OPEN_CASES)
def test_dcep_open_round_trip(msg: DataChannelOpen, ordered: bool, rexmit: int | None, lifetime: int | None) -> None:
    assert DataChannelOpen.parse(bytes(msg)) == msg
    assert (msg.ordered, msg.max_retransmits, msg.lifetime_ms) == (ordered, rexmit, lifetime)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x03\x00", "shorter than 12"),
        (b"\x02" + b"\x00" * 11, "message type 2"),
        (b"\x03\x07" + b"\x00" * 10, "unknown channel type"),
        (b"\x03\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00ab", "do not fill"),
        (b"\x03\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\xff", "not UTF-8"),
    ],
)
def test_dcep_open_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        DataChannelOpen.parse(raw)


class Channels:
    def __init__(self) -> None:
        self.pair = Pair()
        self.pair.connect()
        self.a = DataChannels(self.pair.a.assoc, dtls_client=True)
        self.b = DataChannels(self.pair.b.assoc, dtls_client=False)
        self.a_events: list[ChannelEvent] = []
        self.b_events: list[ChannelEvent] = []

    def pump(self, ms: int = 200) -> None:
        self.pair.run(ms)
        for side, channels, out in ((self.pair.a, self.a, self.a_events), (self.pair.b, self.b, self.b_events)):
            events, side.events = side.events, []
            out.extend(channels.on_events(events, self.pair.now))
        self.pair.run(ms)  # what the channel layer sent in answer (ACKs, resets)
        for side, channels, out in ((self.pair.a, self.a, self.a_events), (self.pair.b, self.b, self.b_events)):
            events, side.events = side.events, []
            out.extend(channels.on_events(events, self.pair.now))


def messages(events: list[ChannelEvent]) -> list[tuple[str, bytes, bool]]:
    return [(e.channel.label, e.data, e.text) for e in events if isinstance(e, ChannelMessage)]


def test_open_send_and_close() -> None:
    t = Channels()
    now = t.pair.now
    reliable = t.a.open("_reliable", now)
    lossy = t.a.open("_lossy", now, ordered=False, max_retransmits=0)
    assert reliable is not None and lossy is not None
    assert (reliable.stream, lossy.stream) == (0, 2)  # the DTLS client's even ids
    assert reliable.state is ChannelState.CONNECTING
    t.pump()
    opened = [e.channel for e in t.b_events if isinstance(e, ChannelOpened)]
    assert [(c.label, c.stream, c.reliable, c.ordered) for c in opened] == [("_reliable", 0, True, True), ("_lossy", 2, False, False)]
    assert reliable.state is ChannelState.OPEN and lossy.state is ChannelState.OPEN
    for data, text in ((b"hi", True), (b"\x00\xff", False), (b"", True), (b"", False)):
        t.a.send(reliable, data, t.pair.now, text=text)
    t.b.send(opened[1], "\u00e9t\u00e9".encode(), t.pair.now, text=True)
    t.pump()
    assert messages(t.b_events) == [("_reliable", b"hi", True), ("_reliable", b"\x00\xff", False), ("_reliable", b"", True), ("_reliable", b"", False)]
    assert messages(t.a_events) == [("_lossy", "\u00e9t\u00e9".encode(), True)]
    # the server side opens with odd ids
    mine = t.b.open("server-made", t.pair.now)
    assert mine is not None and mine.stream == 1
    t.a.close(reliable, t.pair.now)
    t.pump()
    closed_b = [e.channel.label for e in t.b_events if isinstance(e, ChannelClosed)]
    closed_a = [e.channel.label for e in t.a_events if isinstance(e, ChannelClosed)]
    assert closed_a == closed_b == ["_reliable"]
    assert 0 not in t.a.channels and 0 not in t.b.channels
    assert t.a.send(reliable, b"late", t.pair.now, text=False).value == "not_open"


def test_bad_channel_input_is_counted() -> None:
    t = Channels()
    assoc = t.pair.a.assoc
    now = t.pair.now
    assoc.send_message(4, Ppid.DCEP, b"\x03\x00garbage", now)  # malformed OPEN
    assoc.send_message(6, Ppid.DCEP, b"\x02", now)  # ACK for nothing
    assoc.send_message(8, Ppid.STRING, b"nobody here", now)  # no channel
    ch = t.a.open("x", now)
    assert ch is not None
    t.pump()
    assoc.send_message(ch.stream, Ppid.BINARY_PARTIAL, b"deprecated", t.pair.now)
    assoc.send_message(ch.stream, Ppid.DCEP, bytes(DataChannelOpen(ChannelType.RELIABLE, 0, 0, "again")), t.pair.now)
    t.pump()
    drops = t.pair.b.assoc.stats.drops
    assert drops[SctpDrop.DCEP_INVALID] == 3
    assert drops[SctpDrop.UNKNOWN_STREAM] == 1
    assert drops[SctpDrop.BAD_PPID] == 1
    t.a.send(ch, b"fine", t.pair.now, text=True)
    t.pump()
    assert messages(t.b_events) == [("x", b"fine", True)]


def test_association_close_closes_every_channel() -> None:
    t = Channels()
    t.a.open("one", t.pair.now)
    t.a.open("two", t.pair.now)
    t.pump()
    t.pair.a.assoc.abort()
    t.pump()
    assert sorted(e.channel.label for e in t.b_events if isinstance(e, ChannelClosed)) == ["one", "two"]
    assert t.b.channels == {}


