from __future__ import annotations

import pytest

from sfu.routing.data import (
    DataCounters,
    DataDrop,
    DataKind,
    DataRelay,
    Incoming,
    Outgoing,
    TokenBucket,
)


@pytest.mark.parametrize(
    "message",
    [Outgoing(b""), Outgoing(b"hi", ("bob",)), Outgoing(bytes(range(256)), ("\u00e9lise", "x" * 128))],
)
def test_outgoing_round_trip(message: Outgoing) -> None:
    raw = bytes(message)
    assert Outgoing.parse(raw) == message
    header = raw[: len(raw) - len(message.payload)]
    assert all(b < 0x80 for b in header if b not in "\u00e9".encode())  # lengths and counts are 7-bit


def test_incoming_round_trip_and_text_safety() -> None:
    raw = bytes(Incoming("z" * 200, "h\u00e9llo".encode()))
    assert raw[:3] == bytes((1, 1, 200 - 128))
    assert Incoming.parse(raw) == Incoming("z" * 200, "h\u00e9llo".encode())
    raw.decode()  # a text message's envelope stays valid UTF-8


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter"),
        (b"\x02\x00", "version 2"),
        (b"\x01\x80", "count 128"),
        (b"\x01\x01\x00", "truncated"),
        (b"\x01\x01\x00\x05ab", "runs past"),
        (b"\x01\x01\x80\x00", "below 0x80"),
        (b"\x01\x01\x00\x01\xff", "not UTF-8"),
    ],
)
def test_bad_envelopes(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Outgoing.parse(raw)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=20, now_ms=0)
    assert all(bucket.take(1, 0) for _ in range(20))
    assert not bucket.take(1, 0)
    assert bucket.take(1, 100)  # one token per 100 ms
    assert not bucket.take(1, 100)


class Room:
    def __init__(self, relay: DataRelay, names: list[str], *, refuse: dict[str, DataDrop] | None = None) -> None:
        self.got: dict[str, list[tuple[DataKind, bytes, bool]]] = {n: [] for n in names}
        self.members = {}
        for n in names:
            def deliver(kind: DataKind, data: bytes, text: bool, now: int, n: str = n) -> DataDrop | None:
                if refuse and n in refuse:
                    return refuse[n]
                self.got[n].append((kind, data, text))
                return None

            self.members[n] = relay.add("r", n, deliver, can_send=n != "viewer", now_ms=0)


def test_relay_to_everyone_else_same_kind_with_sender() -> None:
    counters = DataCounters()
    relay = DataRelay(counters)
    room = Room(relay, ["alice", "bob", "carol"])
    n = relay.on_message("r", room.members["alice"], DataKind.LOSSY, bytes(Outgoing(b"yo")), True, 0)
    assert n == 2
    assert room.got["alice"] == []
    for who in ("bob", "carol"):
        assert room.got[who] == [(DataKind.LOSSY, bytes(Incoming("alice", b"yo")), True)]
    assert counters.relayed == [0, 2] and counters.bytes_relayed == 4
    relay.on_message("r", room.members["bob"], DataKind.RELIABLE, bytes(Outgoing(b"psst", ("carol", "nobody"))), False, 0)
    assert room.got["alice"] == [] and len(room.got["carol"]) == 2


def test_relay_drops_counted_by_reason() -> None:
    counters = DataCounters()
    relay = DataRelay(counters, messages_per_s=1, bytes_per_s=1000)
    room = Room(relay, ["alice", "bob", "viewer", "slow"], refuse={"slow": DataDrop.BUFFER_FULL})
    alice = room.members["alice"]
    relay.on_message("r", room.members["viewer"], DataKind.RELIABLE, bytes(Outgoing(b"x")), True, 0)
    relay.on_message("r", alice, DataKind.RELIABLE, b"\x09nope", True, 0)
    assert relay.on_message("r", alice, DataKind.RELIABLE, bytes(Outgoing(b"1")), True, 0) == 2  # bob, viewer
    relay.on_message("r", alice, DataKind.RELIABLE, bytes(Outgoing(b"2")), True, 0)
    relay.on_message("r", alice, DataKind.RELIABLE, bytes(Outgoing(b"3")), True, 0)  # over 2 messages in a burst
    relay.on_message("r", alice, DataKind.RELIABLE, bytes(Outgoing(b"x" * 3000)), False, 5000)  # over the bytes
    d = counters.drops
    assert d[DataDrop.NOT_PERMITTED] == 1 and d[DataDrop.BAD_ENVELOPE] == 1
    assert d[DataDrop.RATE_LIMITED] == 2 and d[DataDrop.BUFFER_FULL] == 2
    assert counters.received == [6, 0]
    relay.remove("r", room.members["bob"])
    assert "bob" not in relay.rooms["r"]


def test_messages_go_out_to_the_relays_and_relayed_ones_stay_here() -> None:
    """A relayed room: what is delivered here goes to each outlet once (destinations kept);
    what the far end delivered reaches the participants here, not its sender, and goes out no more."""
    relay = DataRelay(DataCounters())
    room = Room(relay, ["alice", "carol"])
    out: list[tuple[str, DataKind, bytes, bool, frozenset[str]]] = []
    relay.outlets.append(lambda r, k, e, t, to, now: out.append((r, k, e, t, to)))
    relay.on_message("r", room.members["alice"], DataKind.RELIABLE, bytes(Outgoing(b"hi", ("bob",))), True, 0)
    assert out == [("r", DataKind.RELIABLE, bytes(Incoming("alice", b"hi")), True, frozenset({"bob"}))]
    assert room.got["carol"] == []  # for bob only, who is behind the relay
    relay.send_from_server("r", DataKind.LOSSY, b"srv", False, frozenset(), 0)
    assert out[-1][2] == bytes(Incoming("", b"srv"))
    out.clear()
    n = relay.deliver_relayed("r", DataKind.LOSSY, bytes(Incoming("bob", b"yo")), False, frozenset(), 0)
    assert n == 2 and out == []
    assert room.got["alice"][-1] == (DataKind.LOSSY, bytes(Incoming("bob", b"yo")), False)
    relay.deliver_relayed("r", DataKind.LOSSY, bytes(Incoming("alice", b"echo?")), False, frozenset({"carol"}), 0)
    assert room.got["alice"][-1][1] != bytes(Incoming("alice", b"echo?"))  # never back to its sender
    assert room.got["carol"][-1][1] == bytes(Incoming("alice", b"echo?"))
    with pytest.raises(ValueError, match="envelope"):
        relay.deliver_relayed("r", DataKind.LOSSY, b"\x09bad", False, frozenset(), 0)
