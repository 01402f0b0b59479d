"""Data messages between the participants of a room: envelopes, rate limits, relay, counters.

No SCTP here: a participant's data endpoint (``sfu.api.rtc_data``) hands each received message
to ``DataRelay.on_message`` and delivers what the relay gives it.

Envelopes (docs/signaling.md, "Data channels").  Every byte of a header is below 0x80, so a text
message stays valid UTF-8 (string vs binary is carried by the SCTP PPID, as sent):

* client -> node: ``0x01``, destination count ``n`` (0-127; 0: everyone), then ``n`` times an
  identity as (length high 7 bits, length low 7 bits, UTF-8 bytes), then the payload;
* node -> client: ``0x01``, the sender's identity the same way, then the payload (an empty
  identity: the server sent it, ``POST /v1/rooms/{room}/data``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

VERSION = 1
MAX_DESTINATIONS = 127
MAX_IDENTITY_BYTES = (1 << 14) - 1
#: the sender of a message the server sends (``send_from_server``): empty, which no token's
#: identity can be
SERVER_SENDER = ""


class DataKind(enum.IntEnum):
    RELIABLE = 0  # ordered, retransmitted until delivered
    LOSSY = 1  # unordered, not retransmitted


class DataDrop(enum.IntEnum):
    """Why a message (or one delivery of it) was not relayed. ``name.lower()`` is the metric label."""

    NOT_PERMITTED = 0  # the sender has no room:publish
    BAD_ENVELOPE = 1
    RATE_LIMITED = 2  # over the sender's messages/s or bytes/s
    TOO_LARGE = 3  # over the recipient's max message size
    BUFFER_FULL = 4  # the recipient's send buffer is full (a slow or gone receiver)
    NO_CHANNEL = 5  # the recipient has no open channel of that kind
    NOT_OPEN = 6  # the recipient's association is not up


class DataCounters:
    """Node-wide plain counters (read by the metrics collector)."""

    __slots__ = ("received", "relayed", "bytes_relayed", "drops")

    def __init__(self) -> None:
        self.received = [0, 0]  # by DataKind
        self.relayed = [0, 0]  # deliveries, by DataKind
        self.bytes_relayed = 0
        self.drops = [0] * len(DataDrop)


def _put_identity(identity: str) -> bytes:
    raw = identity.encode()
    if len(raw) > MAX_IDENTITY_BYTES:
        raise ValueError(f"identity: {len(raw)} bytes is over {MAX_IDENTITY_BYTES}")
    return bytes((len(raw) >> 7, len(raw) & 0x7F)) + raw


def _take_identity(data: bytes, offset: int) -> tuple[str, int]:
    if offset + 2 > len(data):
        raise ValueError("envelope: truncated identity length")
    hi, lo = data[offset], data[offset + 1]
    if hi > 0x7F or lo > 0x7F:
        raise ValueError("envelope: identity length bytes must be below 0x80")
    n = (hi << 7) | lo
    end = offset + 2 + n
    if end > len(data):
        raise ValueError(f"envelope: identity of {n} bytes runs past the message")
    try:
        return data[offset + 2 : end].decode(), end
    except UnicodeDecodeError:
        raise ValueError("envelope: identity is not UTF-8") from None


@dataclass(frozen=True)
class Outgoing:
    """What a participant sends: the payload and whom to (empty: everyone else)."""

    payload: bytes
    destinations: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> Outgoing:
        if len(data) < 2:
            raise ValueError(f"envelope: {len(data)} bytes is shorter than its 2-byte header")
        if data[0] != VERSION:
            raise ValueError(f"envelope: version {data[0]}, expected {VERSION}")
        count = data[1]
        if count > MAX_DESTINATIONS:
            raise ValueError(f"envelope: destination count {count} is over {MAX_DESTINATIONS}")
        offset = 2
        destinations = []
        for _ in range(count):
            identity, offset = _take_identity(data, offset)
            destinations.append(identity)
        return cls(data[offset:], tuple(destinations))

    def __bytes__(self) -> bytes:
        if len(self.destinations) > MAX_DESTINATIONS:
            raise ValueError(f"destinations: at most {MAX_DESTINATIONS}")
        head = bytes((VERSION, len(self.destinations))) + b"".join(_put_identity(d) for d in self.destinations)
        return head + self.payload


@dataclass(frozen=True)
class Incoming:
    """What a participant receives: the payload and who sent it."""

    sender: str
    payload: bytes

    @classmethod
    def parse(cls, data: bytes) -> Incoming:
        if not data or data[0] != VERSION:
            raise ValueError("envelope: missing or unknown version byte")
        sender, offset = _take_identity(data, 1)
        return cls(sender, data[offset:])

    def __bytes__(self) -> bytes:
        return bytes((VERSION,)) + _put_identity(self.sender) + self.payload


class TokenBucket:
    def __init__(self, rate: float, burst: float, now_ms: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at_ms = now_ms

    def take(self, amount: float, now_ms: int) -> bool:
        elapsed = max(0, now_ms - self.at_ms)
        self.at_ms = now_ms
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate / 1000)
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


#: an endpoint delivers (kind, envelope bytes, text) to its participant; None when queued
Deliver = Callable[[DataKind, bytes, bool, int], DataDrop | None]
#: (room, kind, envelope, text, destinations, now_ms): a message delivered here that the room's
#: participants elsewhere (behind a relay, sfu.workers.relay) get too
Outlet = Callable[[str, DataKind, bytes, bool, frozenset[str], int], None]


def _removed(kind: DataKind, envelope: bytes, text: bool, now_ms: int) -> DataDrop | None:
    """The ``deliver`` of a member that left the relay."""
    return DataDrop.NOT_OPEN


@dataclass
class Member:
    identity: str
    deliver: Deliver
    can_send: bool
    messages: TokenBucket
    bytes: TokenBucket


@dataclass
class DataRelay:
    counters: DataCounters
    messages_per_s: float = 100.0
    bytes_per_s: float = 1_048_576.0
    #: room -> identity -> member
    rooms: dict[str, dict[str, Member]] = field(default_factory=dict)
    #: where each relayed message also goes (the relays of the room: ``deliver_relayed`` there)
    outlets: list[Outlet] = field(default_factory=list)

    def add(self, room_id: str, identity: str, deliver: Deliver, *, can_send: bool, now_ms: int) -> Member:
        """Register (or replace) a participant's data endpoint."""
        member = Member(
            identity,
            deliver,
            can_send,
            TokenBucket(self.messages_per_s, 2 * self.messages_per_s, now_ms),
            TokenBucket(self.bytes_per_s, 2 * self.bytes_per_s, now_ms),
        )
        self.rooms.setdefault(room_id, {})[identity] = member
        return member

    def remove(self, room_id: str, member: Member) -> None:
        members = self.rooms.get(room_id)
        if members is not None and members.get(member.identity) is member:
            del members[member.identity]
            if not members:
                del self.rooms[room_id]
        # its deliver is usually a bound method of the member's owner, who holds the member:
        # without that cycle the owner is freed with its last reference
        member.deliver = _removed

    def send_from_server(
        self, room_id: str, kind: DataKind, payload: bytes, text: bool, destinations: frozenset[str], now_ms: int
    ) -> int:
        """A message from the server (the participants API): its envelope names the sender
        ``SERVER_SENDER``, a name no participant can have; no rate limit (the HTTP API's applies).
        Returns how many participants it was queued for."""
        counters = self.counters
        envelope = bytes(Incoming(SERVER_SENDER, payload))
        delivered = 0
        for identity, member in list(self.rooms.get(room_id, {}).items()):
            if destinations and identity not in destinations:
                continue
            refused = member.deliver(kind, envelope, text, now_ms)
            if refused is not None:
                counters.drops[refused] += 1
                continue
            delivered += 1
            counters.relayed[kind] += 1
            counters.bytes_relayed += len(payload)
        for outlet in self.outlets:
            outlet(room_id, kind, envelope, text, destinations, now_ms)
        return delivered

    def deliver_relayed(
        self, room_id: str, kind: DataKind, envelope: bytes, text: bool, destinations: frozenset[str], now_ms: int
    ) -> int:
        """A message the far end of a relay delivered (its sender's rate and rights were checked
        there): to the participants here, never back to the sender, nor out again.  ValueError:
        not an envelope."""
        sender = Incoming.parse(envelope).sender
        counters = self.counters
        delivered = 0
        for identity, member in list(self.rooms.get(room_id, {}).items()):
            if identity == sender or (destinations and identity not in destinations):
                continue
            refused = member.deliver(kind, envelope, text, now_ms)
            if refused is not None:
                counters.drops[refused] += 1
                continue
            delivered += 1
            counters.relayed[kind] += 1
            counters.bytes_relayed += len(envelope)
        return delivered

    def on_message(self, room_id: str, sender: Member, kind: DataKind, data: bytes, text: bool, now_ms: int) -> int:
        """Relay one received message; returns how many participants it was queued for."""
        counters = self.counters
        drops = counters.drops
        counters.received[kind] += 1
        if not sender.can_send:
            drops[DataDrop.NOT_PERMITTED] += 1
            return 0
        try:
            message = Outgoing.parse(data)
        except ValueError:
            drops[DataDrop.BAD_ENVELOPE] += 1
            return 0
        if not sender.messages.take(1, now_ms) or not sender.bytes.take(len(message.payload), now_ms):
            drops[DataDrop.RATE_LIMITED] += 1
            return 0
        envelope = bytes(Incoming(sender.identity, message.payload))
        wanted = set(message.destinations)
        delivered = 0
        for identity, member in list(self.rooms.get(room_id, {}).items()):
            if member is sender or identity == sender.identity or (wanted and identity not in wanted):
                continue
            refused = member.deliver(kind, envelope, text, now_ms)
            if refused is not None:
                drops[refused] += 1
                continue
            delivered += 1
            counters.relayed[kind] += 1
            counters.bytes_relayed += len(message.payload)
        if self.outlets:
            outward = frozenset(wanted)
            for outlet in self.outlets:
                outlet(room_id, kind, envelope, text, outward, now_ms)
        return delivered
