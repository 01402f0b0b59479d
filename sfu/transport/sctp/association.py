"""A sans-I/O SCTP association as WebRTC uses it over DTLS (RFC 9260, RFC 8261, RFC 3758, RFC 6525).

The caller owns the transport and the clock.  It feeds each received SCTP packet (a DTLS
application record) to ``feed(packet, now_ms)`` and gets the events it produced; packets to send
come out through the ``send`` callback, synchronously.  It arms a timer for
``next_timeout_ms()`` and calls ``handle_timeout(now_ms)`` then.  ``send_message`` queues a
user message; ``reset_streams`` closes outgoing streams (RE-CONFIG); ``shutdown``/``abort`` end
the association.

Either side may start (``connect``); both may, as WebRTC endpoints do (an INIT collision is
resolved as RFC 9260 5.2.1/5.2.4 case D: each side keeps its own tag and TSN).

Robustness: a packet with a bad CRC32c, wrong ports or wrong verification tag, a malformed
chunk, a chunk in the wrong state or a message over ``max_message_size`` is dropped and counted
in ``stats.drops`` by reason; nothing here raises on input.  Memory is bounded: the receive side
holds at most ``receive_window`` bytes and ``max_held_chunks`` chunks (more is dropped unacked,
so the peer retransmits; the next TSN in sequence is always given room up to twice
those), the send side at most ``max_buffered_bytes`` (``send_message`` refuses
more: ``SendOutcome.BUFFER_FULL``).

``Association`` is a thin facade: it checks packets and routes chunks to its parts, which depend
on each other in one direction only (each on those before it):

- ``common``: states, drop reasons, config, counters, events, and ``Link`` (what the parts share)
- ``sender``: outbound queue, fragmentation, retransmission, congestion window, PR-SCTP
- ``receiver``: TSN tracking, reassembly, delivery, SACKs, incoming stream resets
- ``reconfig``: stream reset requests and responses (RE-CONFIG)
- ``handshake``: INIT ... COOKIE-ACK with the state cookie, SHUTDOWN, close, the T1/T2 timer
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from sfu.transport.sctp.chunks import (
    AbortChunk,
    Chunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    ReconfigChunk,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
)
from sfu.transport.sctp.common import (
    AssociationState,
    Closed,
    Connected,
    Event,
    Link,
    MessageReceived,
    OutgoingStreamsReset,
    SctpConfig,
    SctpDrop,
    SctpStats,
    SendOutcome,
    StreamsReset,
)
from sfu.transport.sctp.handshake import Handshake
from sfu.transport.sctp.packet import Packet
from sfu.transport.sctp.receiver import Receiver
from sfu.transport.sctp.reconfig import StreamReset
from sfu.transport.sctp.sender import DATA_HEADER_LEN, Sender

__all__ = [
    "DATA_HEADER_LEN",
    "Association",
    "AssociationState",
    "Closed",
    "Connected",
    "Event",
    "MessageReceived",
    "OutgoingStreamsReset",
    "SctpConfig",
    "SctpDrop",
    "SctpStats",
    "SendOutcome",
    "StreamsReset",
]


class Association:
    def __init__(
        self,
        send: Callable[[bytes], None],
        config: SctpConfig | None = None,
        *,
        stats: SctpStats | None = None,
        initial_tsn: int | None = None,
    ) -> None:
        self.config = config or SctpConfig()
        self.stats = stats or SctpStats()
        self.initial_tsn = secrets.randbits(32) if initial_tsn is None else initial_tsn & 0xFFFFFFFF
        self._link = link = Link(send, self.config, self.stats)
        self._sender = Sender(link, self.initial_tsn)
        self._receiver = Receiver(link)
        self._reset = StreamReset(link, self._sender, self._receiver, self.initial_tsn)
        self._handshake = Handshake(link, self._sender, self._receiver, self._reset, self.initial_tsn)

    # -- state, read-only ------------------------------------------------------------------------------
    @property
    def state(self) -> AssociationState:
        return self._link.state

    @property
    def is_established(self) -> bool:
        return self._link.state is AssociationState.ESTABLISHED

    @property
    def my_tag(self) -> int:
        return self._handshake.my_tag

    @property
    def close_reason(self) -> str:
        return self._handshake.close_reason

    @property
    def peer_tag(self) -> int:
        return self._link.peer_tag

    @property
    def peer_supports_forward_tsn(self) -> bool:
        return self._link.peer_supports_forward_tsn

    @property
    def peer_supports_reconfig(self) -> bool:
        return self._link.peer_supports_reconfig

    @property
    def buffered_bytes(self) -> int:
        """Bytes of messages queued or in flight, not yet acknowledged (nor abandoned)."""
        return self._sender.buffered_bytes

    @property
    def _held(self) -> dict[int, DataChunk]:
        """DATA chunks held for reassembly (tests check it drains)."""
        return self._receiver.held

    # -- driving ---------------------------------------------------------------------------------
    def connect(self, now_ms: int) -> None:
        """Send INIT (the peer may send its own too: either one completes the association)."""
        self._handshake.connect(now_ms)

    def feed(self, data: bytes, now_ms: int) -> list[Event]:
        """Process one received SCTP packet; returns what it caused.  Never raises on input."""
        link = self._link
        drops = self.stats.drops
        if link.ended:
            drops[SctpDrop.CLOSED] += 1
            return []
        try:
            packet = Packet.parse(data)
        except ValueError as exc:
            drops[SctpDrop.BAD_CHECKSUM if "CRC32c" in str(exc) else SctpDrop.MALFORMED] += 1
            return []
        self.stats.packets_in += 1
        if packet.destination_port != self.config.local_port or packet.source_port != self.config.remote_port:
            drops[SctpDrop.BAD_PORT] += 1
            return []
        if not self._tag_ok(packet):
            drops[SctpDrop.BAD_TAG] += 1
            return []
        receiver = self._receiver
        events: list[Event] = []
        got_data = False
        for chunk in packet.chunks:
            if isinstance(chunk, DataChunk):
                got_data = True
                receiver.on_data(chunk, events)
            elif isinstance(chunk, UnknownChunk):
                drops[SctpDrop.UNKNOWN_CHUNK] += 1
                if not chunk.skip:
                    break
            else:
                self._on_control(chunk, now_ms, events)
            if link.ended:
                return events
        if got_data or receiver.dups:
            receiver.send_sack()
        self._sender.transmit(now_ms)
        return events

    def next_timeout_ms(self) -> int | None:
        times = [t for t in (self._sender.t3_at, self._handshake.control_at, self._reset.at) if t is not None]
        return min(times) if times else None

    def handle_timeout(self, now_ms: int) -> list[Event]:
        events: list[Event] = []
        self._handshake.on_timeout(now_ms, events)
        if not self._sender.on_timeout(now_ms):
            self._link.send_chunks([AbortChunk()])
            reason = f"no acknowledgement after {self.config.max_retransmissions} retransmissions"
            self._handshake.close(reason, events)
        self._reset.on_timeout(now_ms)
        return events

    # -- sending messages --------------------------------------------------------------------------
    def send_message(
        self,
        stream: int,
        ppid: int,
        data: bytes,
        now_ms: int,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        lifetime_ms: int | None = None,
    ) -> SendOutcome:
        """Queue one message (``data`` not empty) on ``stream``; partial reliability when
        ``max_retransmits`` or ``lifetime_ms`` is set (and the peer supports FORWARD-TSN)."""
        return self._sender.send_message(stream, ppid, data, now_ms, ordered, max_retransmits, lifetime_ms)

    def reset_streams(self, streams: Iterable[int], now_ms: int) -> None:
        """Reset (close) outgoing streams: RE-CONFIG outgoing SSN reset request (RFC 6525)."""
        self._reset.request(streams, now_ms)

    def shutdown(self, now_ms: int) -> None:
        """Graceful end: SHUTDOWN once what is in flight is acknowledged."""
        if self._link.state is not AssociationState.ESTABLISHED:
            return
        self._link.state = AssociationState.SHUTDOWN_PENDING
        self._handshake.maybe_shutdown(now_ms)

    def abort(self, reason: str = "aborted locally") -> None:
        """Send ABORT and close at once."""
        link = self._link
        if link.state is AssociationState.CLOSED and not link.peer_tag:
            self._handshake.close(reason, [])
            return
        if link.peer_tag:
            link.send_chunks([AbortChunk()])
        self._handshake.close(reason, [])

    # -- receiving: control chunks -----------------------------------------------------------------
    def _tag_ok(self, packet: Packet) -> bool:
        chunks = packet.chunks
        if any(isinstance(c, InitChunk) and not isinstance(c, InitAckChunk) for c in chunks):
            return packet.verification_tag == 0 and len(chunks) == 1
        first = chunks[0]
        peer_tag = self._link.peer_tag
        if isinstance(first, (AbortChunk, ShutdownCompleteChunk)) and first.reflected:
            return peer_tag != 0 and packet.verification_tag == peer_tag
        return packet.verification_tag == self.my_tag

    def _on_control(self, chunk: Chunk, now_ms: int, events: list[Event]) -> None:
        link = self._link
        handshake = self._handshake
        if isinstance(chunk, InitAckChunk):
            handshake.on_init_ack(chunk, now_ms)
        elif isinstance(chunk, InitChunk):
            handshake.answer_init(chunk, now_ms)
        elif isinstance(chunk, CookieEchoChunk):
            handshake.on_cookie_echo(chunk, now_ms, events)
        elif isinstance(chunk, CookieAckChunk):
            handshake.on_cookie_ack(events)
        elif not link.ever_established:
            if isinstance(chunk, AbortChunk) and link.state is not AssociationState.CLOSED:
                handshake.close("aborted by the peer during setup", events)
            else:
                self.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
        elif isinstance(chunk, SackChunk):
            if self._sender.on_sack(chunk, now_ms):
                handshake.maybe_shutdown(now_ms)
        elif isinstance(chunk, ForwardTsnChunk):
            self._receiver.on_forward_tsn(chunk, events)
        elif isinstance(chunk, HeartbeatChunk) and not isinstance(chunk, HeartbeatAckChunk):
            link.send_chunks([HeartbeatAckChunk(chunk.params)])
        elif isinstance(chunk, ReconfigChunk):
            self._reset.on_chunk(chunk, now_ms, events)
        elif isinstance(chunk, AbortChunk):
            handshake.close("aborted by the peer", events)
        elif isinstance(chunk, ShutdownChunk):
            handshake.on_shutdown(now_ms)
        elif isinstance(chunk, ShutdownAckChunk):
            handshake.on_shutdown_ack(events)
        elif isinstance(chunk, ShutdownCompleteChunk):
            handshake.on_shutdown_complete(events)
        elif isinstance(chunk, (ErrorChunk, HeartbeatAckChunk)):
            pass  # we send no heartbeats; errors are informational
        else:
            self.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
