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
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from struct import Struct

from sfu.transport.sctp.chunks import (
    AbortChunk,
    Chunk,
    ChunkType,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    ParamType,
    ReconfigChunk,
    ReconfigResponse,
    ReconfigResult,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
)
from sfu.transport.sctp.packet import COMMON_HEADER_LEN, Packet, encode
from sfu.transport.sctp.tsn import ssn_gt, tsn_add, tsn_diff, tsn_gt, tsn_gte

log = logging.getLogger(__name__)

DATA_HEADER_LEN = 16
_COOKIE = Struct("!IIIIHHBQ")
_COOKIE_MAC_LEN = 16
_MAX_GAP_BLOCKS = 64
_MAX_DUPS = 32


class AssociationState(enum.Enum):
    CLOSED = "closed"
    COOKIE_WAIT = "cookie_wait"
    COOKIE_ECHOED = "cookie_echoed"
    ESTABLISHED = "established"
    SHUTDOWN_PENDING = "shutdown_pending"
    SHUTDOWN_SENT = "shutdown_sent"
    SHUTDOWN_ACK_SENT = "shutdown_ack_sent"


class SctpDrop(enum.IntEnum):
    """Why received SCTP input was not used. ``name.lower()`` is the metric label."""

    MALFORMED = 0  # not a packet, or a malformed chunk
    BAD_CHECKSUM = 1
    BAD_PORT = 2
    BAD_TAG = 3  # wrong verification tag (or an INIT not alone / not tagged 0)
    BAD_COOKIE = 4  # a COOKIE-ECHO whose MAC, tag or age is wrong
    UNEXPECTED_CHUNK = 5  # a chunk the current state does not take
    UNKNOWN_CHUNK = 6
    RECEIVE_WINDOW_FULL = 7  # DATA beyond what the receive side holds (the peer retransmits it)
    MESSAGE_TOO_LARGE = 8  # a reassembled message over max_message_size (discarded)
    CLOSED = 9  # input after the association ended
    DCEP_INVALID = 10  # a malformed DCEP message, or an OPEN on a stream already open
    UNKNOWN_STREAM = 11  # a message on a stream with no open data channel
    BAD_PPID = 12  # a payload protocol identifier data channels do not use (or deprecated)


class SendOutcome(enum.Enum):
    QUEUED = "queued"
    NOT_OPEN = "not_open"  # the association is not established
    TOO_LARGE = "too_large"  # over the peer's max message size
    BUFFER_FULL = "buffer_full"  # the send buffer holds max_buffered_bytes already
    STREAM_RESETTING = "stream_resetting"  # the stream is being closed


class SctpStats:
    """Counters, shareable between associations (a node-wide instance)."""

    __slots__ = ("drops", "packets_in", "packets_out", "retransmissions", "abandoned")

    def __init__(self) -> None:
        self.drops = [0] * len(SctpDrop)
        self.packets_in = 0
        self.packets_out = 0
        self.retransmissions = 0
        self.abandoned = 0  # messages given up (partial reliability)


@dataclass(frozen=True)
class SctpConfig:
    local_port: int = 5000
    remote_port: int = 5000
    #: largest SCTP packet (what fits one DTLS record under the path MTU)
    mtu: int = 1100
    #: largest message accepted from the peer (a=max-message-size we advertise)
    max_message_size: int = 262144
    #: largest message the peer takes (its a=max-message-size; 0: no limit said)
    remote_max_message_size: int = 65536
    max_buffered_bytes: int = 1 << 20
    receive_window: int = 1 << 20
    max_held_chunks: int = 4096
    streams: int = 1024
    rto_initial_ms: int = 1000
    rto_min_ms: int = 200
    rto_max_ms: int = 10_000
    max_retransmissions: int = 10
    max_init_retransmissions: int = 8
    cookie_lifetime_ms: int = 60_000

    def __post_init__(self) -> None:
        if not 256 <= self.mtu <= 65535:
            raise ValueError(f"mtu: must be in [256, 65535], got {self.mtu}")
        if self.receive_window < self.max_message_size:
            raise ValueError("receive_window: must hold at least one message of max_message_size")


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    pass


@dataclass(frozen=True)
class MessageReceived:
    stream: int
    ppid: int
    data: bytes
    unordered: bool


@dataclass(frozen=True)
class StreamsReset:
    """The peer reset its outgoing streams (our incoming ones): its data channels there closed."""

    streams: tuple[int, ...]


@dataclass(frozen=True)
class OutgoingStreamsReset:
    """Our reset request was performed: those stream ids may be used again."""

    streams: tuple[int, ...]


@dataclass(frozen=True)
class Closed:
    reason: str


Event = Connected | MessageReceived | StreamsReset | OutgoingStreamsReset | Closed


class _Out:
    """One DATA chunk of the send side, before and after it is sent."""

    __slots__ = (
        "msg",
        "stream",
        "ssn",
        "ppid",
        "data",
        "unordered",
        "begin",
        "end",
        "max_retransmits",
        "expires_ms",
        "tsn",
        "sent_count",
        "sent_ms",
        "acked",
        "abandoned",
        "retransmit",
        "in_flight",
        "misses",
    )

    def __init__(
        self,
        msg: int,
        stream: int,
        ssn: int,
        ppid: int,
        data: bytes,
        unordered: bool,
        begin: bool,
        end: bool,
        max_retransmits: int | None,
        expires_ms: int | None,
    ) -> None:
        self.msg = msg
        self.stream = stream
        self.ssn = ssn
        self.ppid = ppid
        self.data = data
        self.unordered = unordered
        self.begin = begin
        self.end = end
        self.max_retransmits = max_retransmits
        self.expires_ms = expires_ms
        self.tsn = 0
        self.sent_count = 0
        self.sent_ms = 0
        self.acked = False  # gap-acked
        self.abandoned = False
        self.retransmit = False
        self.in_flight = False
        self.misses = 0

    def chunk(self) -> DataChunk:
        return DataChunk(self.tsn, self.stream, self.ssn, self.ppid, self.data, self.unordered, self.begin, self.end)

    def expired(self, now_ms: int) -> bool:
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return True
        return self.max_retransmits is not None and self.sent_count > self.max_retransmits


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
        self.state = AssociationState.CLOSED
        self.close_reason = ""
        self._send = send
        self._cookie_key = secrets.token_bytes(32)
        self.my_tag = secrets.randbits(32) or 1
        self.peer_tag = 0
        self.peer_supports_forward_tsn = False
        self.peer_supports_reconfig = False
        self._ever_established = False
        # send side
        self.initial_tsn = secrets.randbits(32) if initial_tsn is None else initial_tsn & 0xFFFFFFFF
        self._next_tsn = self.initial_tsn
        self._cum_ack = tsn_add(self.initial_tsn, -1)
        self._adv_peer_ack = self._cum_ack
        self._out_ssn: dict[int, int] = {}
        self._pending: deque[_Out] = deque()
        self._inflight: deque[_Out] = deque()
        self._msg_counter = 0
        self.buffered_bytes = 0
        self._flight_bytes = 0
        self._peer_rwnd = 0
        mtu = self.config.mtu
        self._max_payload = (mtu - COMMON_HEADER_LEN - DATA_HEADER_LEN) & ~3
        self._cwnd = min(4 * mtu, max(2 * mtu, 4380))
        self._ssthresh = 1 << 30
        self._partial_acked = 0
        self._rto = self.config.rto_initial_ms
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._t3_at: int | None = None
        self._errors = 0
        self._fast_recovery_exit: int | None = None
        # control chunk retransmission (INIT, COOKIE-ECHO, SHUTDOWN, SHUTDOWN-ACK): T1/T2
        self._control: Chunk | None = None
        self._control_tag = 0
        self._control_at: int | None = None
        self._control_count = 0
        # receive side
        self._peer_cum = 0
        self._received: set[int] = set()
        self._dups: list[int] = []
        self._held: dict[int, DataChunk] = {}
        self._held_bytes = 0
        self._waiting = 0  # complete ordered messages waiting for an earlier one
        self._in_ssn: dict[int, int] = {}
        self._ordered: dict[int, dict[int, tuple[int, bytes] | None]] = {}
        # stream reset (RFC 6525)
        self._reconfig_seq = self.initial_tsn
        self._reconfig_request: OutgoingResetRequest | None = None
        self._reconfig_at: int | None = None
        self._resetting: set[int] = set()
        self._reset_queue: list[int] = []
        self._peer_reconfig_last: int | None = None
        self._peer_reconfig_result = ReconfigResult.SUCCESS_PERFORMED
        self._deferred_reset: OutgoingResetRequest | None = None

    # -- driving ---------------------------------------------------------------------------------
    def connect(self, now_ms: int) -> None:
        """Send INIT (the peer may send its own too: either one completes the association)."""
        if self.state is not AssociationState.CLOSED or self._ever_established:
            return
        init = InitChunk(
            self.my_tag,
            self.config.receive_window,
            self.config.streams,
            self.config.streams,
            self.initial_tsn,
            self._extension_params(),
        )
        self.state = AssociationState.COOKIE_WAIT
        self._start_control(init, 0, now_ms)

    def feed(self, data: bytes, now_ms: int) -> list[Event]:
        """Process one received SCTP packet; returns what it caused.  Never raises on input."""
        drops = self.stats.drops
        if self.state is AssociationState.CLOSED and self._ever_established:
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
        events: list[Event] = []
        got_data = False
        for chunk in packet.chunks:
            if isinstance(chunk, DataChunk):
                got_data = True
                self._on_data(chunk, events)
            elif isinstance(chunk, UnknownChunk):
                drops[SctpDrop.UNKNOWN_CHUNK] += 1
                if not chunk.skip:
                    break
            else:
                self._on_control(chunk, now_ms, events)
            if self.state is AssociationState.CLOSED and self._ever_established:
                return events
        if got_data or self._dups:
            self._send_sack()
        self._transmit(now_ms)
        return events

    def next_timeout_ms(self) -> int | None:
        times = [t for t in (self._t3_at, self._control_at, self._reconfig_at) if t is not None]
        return min(times) if times else None

    def handle_timeout(self, now_ms: int) -> list[Event]:
        events: list[Event] = []
        if self._control_at is not None and now_ms >= self._control_at:
            self._on_control_timeout(now_ms, events)
        if self._t3_at is not None and now_ms >= self._t3_at:
            self._on_t3(now_ms, events)
        if self._reconfig_at is not None and now_ms >= self._reconfig_at and self._reconfig_request is not None:
            self._reconfig_at = now_ms + self._rto
            self._send_chunks([ReconfigChunk((self._reconfig_request.param(),))])
        return events

    @property
    def is_established(self) -> bool:
        return self.state is AssociationState.ESTABLISHED

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
        if not data:
            raise ValueError("data: an SCTP message cannot be empty")
        if self.state is not AssociationState.ESTABLISHED:
            return SendOutcome.NOT_OPEN
        limit = self.config.remote_max_message_size
        if limit and len(data) > limit:
            return SendOutcome.TOO_LARGE
        if stream in self._resetting:
            return SendOutcome.STREAM_RESETTING
        if self.buffered_bytes + len(data) > self.config.max_buffered_bytes:
            return SendOutcome.BUFFER_FULL
        if not self.peer_supports_forward_tsn:
            max_retransmits = lifetime_ms = None
        ssn = 0
        if ordered:
            ssn = self._out_ssn.get(stream, 0)
            self._out_ssn[stream] = (ssn + 1) & 0xFFFF
        self._msg_counter += 1
        expires = now_ms + lifetime_ms if lifetime_ms is not None else None
        size = self._max_payload
        n = len(data)
        for off in range(0, n, size):
            self._pending.append(
                _Out(
                    self._msg_counter,
                    stream,
                    ssn,
                    ppid,
                    data[off : off + size],
                    not ordered,
                    off == 0,
                    off + size >= n,
                    max_retransmits,
                    expires,
                )
            )
        self.buffered_bytes += n
        self._transmit(now_ms)
        return SendOutcome.QUEUED

    def reset_streams(self, streams: Iterable[int], now_ms: int) -> None:
        """Reset (close) outgoing streams: RE-CONFIG outgoing SSN reset request (RFC 6525)."""
        wanted = [s for s in streams if s not in self._resetting and s not in self._reset_queue]
        if not wanted or self.state is not AssociationState.ESTABLISHED:
            return
        self._reset_queue.extend(wanted)
        self._resetting.update(wanted)
        self._send_reset_request(now_ms)

    def shutdown(self, now_ms: int) -> None:
        """Graceful end: SHUTDOWN once what is in flight is acknowledged."""
        if self.state is not AssociationState.ESTABLISHED:
            return
        self.state = AssociationState.SHUTDOWN_PENDING
        self._maybe_shutdown(now_ms)

    def abort(self, reason: str = "aborted locally") -> None:
        """Send ABORT and close at once."""
        if self.state is AssociationState.CLOSED and not self.peer_tag:
            self._closed(reason, [])
            return
        if self.peer_tag:
            self._send_chunks([AbortChunk()])
        self._closed(reason, [])

    # -- receiving: control chunks -----------------------------------------------------------------
    def _tag_ok(self, packet: Packet) -> bool:
        chunks = packet.chunks
        if any(isinstance(c, InitChunk) and not isinstance(c, InitAckChunk) for c in chunks):
            return packet.verification_tag == 0 and len(chunks) == 1
        first = chunks[0]
        if isinstance(first, (AbortChunk, ShutdownCompleteChunk)) and first.reflected:
            return self.peer_tag != 0 and packet.verification_tag == self.peer_tag
        return packet.verification_tag == self.my_tag

    def _on_control(self, chunk: Chunk, now_ms: int, events: list[Event]) -> None:
        state = self.state
        drops = self.stats.drops
        if isinstance(chunk, InitAckChunk):
            if self._ever_established:
                return  # an INIT collision's late answer: discarded silently
            if state is not AssociationState.COOKIE_WAIT:
                drops[SctpDrop.UNEXPECTED_CHUNK] += 1
                return
            self._learn_peer(chunk.initiate_tag, chunk.initial_tsn, chunk.a_rwnd, chunk)
            self.state = AssociationState.COOKIE_ECHOED
            self._start_control(CookieEchoChunk(chunk.cookie), self.peer_tag, now_ms)
        elif isinstance(chunk, InitChunk):
            self._answer_init(chunk, now_ms)
        elif isinstance(chunk, CookieEchoChunk):
            self._on_cookie_echo(chunk, now_ms, events)
        elif isinstance(chunk, CookieAckChunk):
            if state is AssociationState.COOKIE_ECHOED:
                self._established(events)
            elif not self._ever_established:
                drops[SctpDrop.UNEXPECTED_CHUNK] += 1
        elif not self._ever_established:
            if isinstance(chunk, AbortChunk) and state is not AssociationState.CLOSED:
                self._closed("aborted by the peer during setup", events)
            else:
                drops[SctpDrop.UNEXPECTED_CHUNK] += 1
        elif isinstance(chunk, SackChunk):
            self._on_sack(chunk, now_ms)
        elif isinstance(chunk, ForwardTsnChunk):
            self._on_forward_tsn(chunk, events)
        elif isinstance(chunk, HeartbeatChunk) and not isinstance(chunk, HeartbeatAckChunk):
            self._send_chunks([HeartbeatAckChunk(chunk.params)])
        elif isinstance(chunk, ReconfigChunk):
            self._on_reconfig(chunk, now_ms, events)
        elif isinstance(chunk, AbortChunk):
            self._closed("aborted by the peer", events)
        elif isinstance(chunk, ShutdownChunk):
            self._control = None
            self.state = AssociationState.SHUTDOWN_ACK_SENT
            self._start_control(ShutdownAckChunk(), self.peer_tag, now_ms)
        elif isinstance(chunk, ShutdownAckChunk):
            if state in (AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_ACK_SENT):
                self._send_chunks([ShutdownCompleteChunk()])
                self._closed("shutdown", events)
            else:
                drops[SctpDrop.UNEXPECTED_CHUNK] += 1
        elif isinstance(chunk, ShutdownCompleteChunk):
            if state is AssociationState.SHUTDOWN_ACK_SENT:
                self._closed("shutdown", events)
            else:
                drops[SctpDrop.UNEXPECTED_CHUNK] += 1
        elif isinstance(chunk, (ErrorChunk, HeartbeatAckChunk)):
            pass  # we send no heartbeats; errors are informational
        else:
            drops[SctpDrop.UNEXPECTED_CHUNK] += 1

    def _extension_params(self) -> tuple[tuple[int, bytes], ...]:
        return (
            (ParamType.FORWARD_TSN_SUPPORTED, b""),
            (ParamType.SUPPORTED_EXTENSIONS, bytes([ChunkType.FORWARD_TSN, ChunkType.RECONFIG])),
        )

    def _learn_peer(self, tag: int, initial_tsn: int, a_rwnd: int, init: InitChunk | None, *, fwd: bool = False, reconfig: bool = False) -> None:
        self.peer_tag = tag
        self._peer_cum = tsn_add(initial_tsn, -1)
        self._peer_rwnd = a_rwnd
        self._peer_reconfig_last = tsn_add(initial_tsn, -1)
        if init is not None:
            fwd, reconfig = init.supports_forward_tsn, init.supports_reconfig
        self.peer_supports_forward_tsn = fwd
        self.peer_supports_reconfig = reconfig

    def _answer_init(self, init: InitChunk, now_ms: int) -> None:
        flags = (1 if init.supports_forward_tsn else 0) | (2 if init.supports_reconfig else 0)
        body = _COOKIE.pack(
            self.my_tag,
            init.initiate_tag,
            init.initial_tsn,
            init.a_rwnd,
            init.outbound_streams,
            init.inbound_streams,
            flags,
            now_ms & 0xFFFFFFFFFFFFFFFF,
        )
        cookie = body + self._mac(body)
        ack = InitAckChunk(
            self.my_tag,
            self.config.receive_window,
            self.config.streams,
            self.config.streams,
            self.initial_tsn,
            ((ParamType.STATE_COOKIE, cookie), *self._extension_params()),
        )
        self._send_chunks([ack], tag=init.initiate_tag)

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._cookie_key, body, hashlib.sha256).digest()[:_COOKIE_MAC_LEN]

    def _on_cookie_echo(self, chunk: CookieEchoChunk, now_ms: int, events: list[Event]) -> None:
        cookie = chunk.cookie
        if len(cookie) != _COOKIE.size + _COOKIE_MAC_LEN or not hmac.compare_digest(
            self._mac(cookie[: _COOKIE.size]), cookie[_COOKIE.size :]
        ):
            self.stats.drops[SctpDrop.BAD_COOKIE] += 1
            return
        my_tag, peer_tag, peer_tsn, rwnd, _os, _mis, flags, made = _COOKIE.unpack_from(cookie)
        if my_tag != self.my_tag or not 0 <= now_ms - made <= self.config.cookie_lifetime_ms:
            self.stats.drops[SctpDrop.BAD_COOKIE] += 1
            return
        if self._ever_established:
            if peer_tag == self.peer_tag:  # a duplicate: our COOKIE-ACK was lost
                self._send_chunks([CookieAckChunk()])
            else:
                self.stats.drops[SctpDrop.BAD_COOKIE] += 1  # a restart: not supported
            return
        self._learn_peer(peer_tag, peer_tsn, rwnd, None, fwd=bool(flags & 1), reconfig=bool(flags & 2))
        self._send_chunks([CookieAckChunk()])
        self._established(events)

    def _established(self, events: list[Event]) -> None:
        self._control = None
        self._control_at = None
        self.state = AssociationState.ESTABLISHED
        self._ever_established = True
        self._rto = self.config.rto_initial_ms
        events.append(Connected())

    def _closed(self, reason: str, events: list[Event]) -> None:
        if self.state is AssociationState.CLOSED and self._ever_established:
            return
        self.state = AssociationState.CLOSED
        self._ever_established = True  # a closed association stays closed
        self.close_reason = reason
        self._t3_at = self._control_at = self._reconfig_at = None
        self._control = None
        self._pending.clear()
        self._inflight.clear()
        self._held.clear()
        self._ordered.clear()
        self._held_bytes = self.buffered_bytes = self._flight_bytes = self._waiting = 0
        events.append(Closed(reason))

    def _start_control(self, chunk: Chunk, tag: int, now_ms: int) -> None:
        self._control = chunk
        self._control_tag = tag
        self._control_count = 0
        self._control_at = now_ms + self._rto
        self._send_chunks([chunk], tag=tag)

    def _on_control_timeout(self, now_ms: int, events: list[Event]) -> None:
        chunk = self._control
        if chunk is None:
            self._control_at = None
            return
        self._control_count += 1
        limit = (
            self.config.max_init_retransmissions
            if self.state in (AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED)
            else self.config.max_retransmissions
        )
        if self._control_count > limit:
            self._closed(f"no answer to {type(chunk).__name__} after {limit} retransmissions", events)
            return
        self._rto = min(self._rto * 2, self.config.rto_max_ms)
        self._control_at = now_ms + self._rto
        self.stats.retransmissions += 1
        self._send_chunks([chunk], tag=self._control_tag)

    def _maybe_shutdown(self, now_ms: int) -> None:
        if self.state is AssociationState.SHUTDOWN_PENDING and not self._pending and not self._inflight:
            self.state = AssociationState.SHUTDOWN_SENT
            self._start_control(ShutdownChunk(self._peer_cum), self.peer_tag, now_ms)

    # -- receiving: data -----------------------------------------------------------------------------
    def _on_data(self, chunk: DataChunk, events: list[Event]) -> None:
        drops = self.stats.drops
        if self.state not in (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING, AssociationState.SHUTDOWN_SENT):
            drops[SctpDrop.UNEXPECTED_CHUNK] += 1
            return
        tsn = chunk.tsn
        if not tsn_gt(tsn, self._peer_cum) or tsn in self._received:
            if len(self._dups) < _MAX_DUPS:
                self._dups.append(tsn)
            return
        size = len(chunk.data)
        # the next TSN in sequence gets twice the room: refusing it could stall the association
        room = 2 if tsn == tsn_add(self._peer_cum, 1) else 1
        if (
            tsn_diff(tsn, self._peer_cum) > 65535
            or len(self._held) + self._waiting >= room * self.config.max_held_chunks
            or self._held_bytes + size > room * self.config.receive_window
        ):
            drops[SctpDrop.RECEIVE_WINDOW_FULL] += 1
            return
        self._received.add(tsn)
        self._advance_cum(events)
        self._held[tsn] = chunk
        self._held_bytes += size
        self._reassemble(tsn, events)

    def _advance_cum(self, events: list[Event]) -> None:
        received = self._received
        nxt = tsn_add(self._peer_cum, 1)
        while nxt in received:
            received.discard(nxt)
            self._peer_cum = nxt
            nxt = tsn_add(nxt, 1)
        if self._deferred_reset is not None and tsn_gte(self._peer_cum, self._deferred_reset.last_tsn):
            request, self._deferred_reset = self._deferred_reset, None
            self._perform_incoming_reset(request, events)
            self._send_chunks([ReconfigChunk((ReconfigResponse(request.request_seq, ReconfigResult.SUCCESS_PERFORMED).param(),))])

    def _reassemble(self, tsn: int, events: list[Event]) -> None:
        held = self._held
        c = held[tsn]
        start = tsn
        while not held[start].begin:
            prev = tsn_add(start, -1)
            p = held.get(prev)
            if p is None or p.end or p.stream != c.stream or p.unordered != c.unordered:
                return
            start = prev
        end = tsn
        while not held[end].end:
            nxt = tsn_add(end, 1)
            n = held.get(nxt)
            if n is None or n.begin or n.stream != c.stream or n.unordered != c.unordered:
                return
            end = nxt
        ppid = held[start].ppid
        parts = []
        t = start
        while True:
            parts.append(held.pop(t).data)
            if t == end:
                break
            t = tsn_add(t, 1)
        data = b"".join(parts)
        self._held_bytes -= len(data)
        too_large = len(data) > self.config.max_message_size
        if too_large:
            self.stats.drops[SctpDrop.MESSAGE_TOO_LARGE] += 1
        if c.unordered:
            if not too_large:
                events.append(MessageReceived(c.stream, ppid, data, True))
            return
        waiting = self._ordered.setdefault(c.stream, {})
        previous = waiting.pop(c.ssn, None) if c.ssn in waiting else None
        if previous is not None:  # a second message with that SSN: a broken peer, keep the last
            self._held_bytes -= len(previous[1])
        else:
            self._waiting += 1
        if too_large:
            waiting[c.ssn] = None
        else:
            waiting[c.ssn] = (ppid, data)
            self._held_bytes += len(data)
        self._deliver_ordered(c.stream, events)

    def _deliver_ordered(self, stream: int, events: list[Event]) -> None:
        waiting = self._ordered.get(stream)
        if not waiting:
            return
        expected = self._in_ssn.get(stream, 0)
        while expected in waiting:
            item = waiting.pop(expected)
            self._waiting -= 1
            if item is not None:
                self._held_bytes -= len(item[1])
                events.append(MessageReceived(stream, item[0], item[1], False))
            expected = (expected + 1) & 0xFFFF
        self._in_ssn[stream] = expected

    def _on_forward_tsn(self, chunk: ForwardTsnChunk, events: list[Event]) -> None:
        new = chunk.new_cumulative_tsn
        if tsn_gt(new, self._peer_cum):
            if tsn_diff(new, self._peer_cum) > 65535 + self.config.max_held_chunks:
                self.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
                return
            for t in [t for t in self._received if tsn_gte(new, t)]:
                self._received.discard(t)
            for t in [t for t in self._held if tsn_gte(new, t)]:
                self._held_bytes -= len(self._held.pop(t).data)
            self._peer_cum = new
            self._advance_cum(events)
            for stream, ssn in chunk.streams:
                self._skip_ordered(stream, ssn, events)
        self._send_sack()

    def _skip_ordered(self, stream: int, ssn: int, events: list[Event]) -> None:
        """Deliver what is complete up to the skipped message ``ssn``, then go on after it."""
        expected = self._in_ssn.get(stream, 0)
        if ssn_gt(expected, ssn):
            return
        waiting = self._ordered.setdefault(stream, {})
        due = sorted((k for k in waiting if not ssn_gt(k, ssn) and not ssn_gt(expected, k)), key=lambda k: (k - expected) & 0xFFFF)
        for k in due:
            item = waiting.pop(k)
            self._waiting -= 1
            if item is not None:
                self._held_bytes -= len(item[1])
                events.append(MessageReceived(stream, item[0], item[1], False))
        self._in_ssn[stream] = (ssn + 1) & 0xFFFF
        self._deliver_ordered(stream, events)

    def _send_sack(self) -> None:
        cum = self._peer_cum
        gaps: list[tuple[int, int]] = []
        for t in sorted(tsn_diff(t, cum) for t in self._received):
            if gaps and gaps[-1][1] + 1 == t:
                gaps[-1] = (gaps[-1][0], t)
            elif len(gaps) < _MAX_GAP_BLOCKS:
                gaps.append((t, t))
            else:
                break
        rwnd = max(0, self.config.receive_window - self._held_bytes)
        dups = tuple(self._dups)
        self._dups.clear()
        self._send_chunks([SackChunk(cum, rwnd, tuple(gaps), dups)])

    # -- the send side ---------------------------------------------------------------------------------
    def _on_sack(self, sack: SackChunk, now_ms: int) -> None:
        cum = sack.cumulative_tsn
        if tsn_gt(cum, tsn_add(self._next_tsn, -1)):
            self.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1  # acknowledges what was never sent
            return
        if tsn_gt(self._cum_ack, cum):
            return  # an old SACK, out of order
        advanced = tsn_gt(cum, self._cum_ack)
        acked_bytes = 0
        rtt_sample: int | None = None
        inflight = self._inflight
        while inflight and tsn_gte(cum, inflight[0].tsn):
            out = inflight.popleft()
            if out.in_flight:
                self._flight_bytes -= len(out.data)
                out.in_flight = False
            if not out.acked and not out.abandoned:
                acked_bytes += len(out.data)
                self.buffered_bytes -= len(out.data)
                if out.sent_count == 1 and not out.retransmit:
                    rtt_sample = now_ms - out.sent_ms
            elif out.acked:
                self.buffered_bytes -= len(out.data)
        self._cum_ack = cum
        if tsn_gt(cum, self._adv_peer_ack):
            self._adv_peer_ack = cum
        highest_gap = None
        for start, end in sack.gaps:
            lo, hi = tsn_add(cum, start), tsn_add(cum, end)
            highest_gap = hi
            for out in inflight:
                if tsn_gte(out.tsn, lo) and tsn_gte(hi, out.tsn) and not out.acked:
                    out.acked = True
                    if out.in_flight:
                        self._flight_bytes -= len(out.data)
                        out.in_flight = False
                    out.retransmit = False
                    acked_bytes += len(out.data)
        if rtt_sample is not None:
            self._update_rto(max(0, rtt_sample))
        if highest_gap is not None:  # fast retransmit: three miss indications
            lost = False
            for out in inflight:
                if tsn_gte(out.tsn, highest_gap):
                    break
                if not out.acked and not out.abandoned and out.in_flight:
                    out.misses += 1
                    if out.misses >= 3:
                        out.misses = 0
                        self._mark_lost(out, now_ms)
                        lost = True
            if lost and (self._fast_recovery_exit is None):
                self._ssthresh = max(self._cwnd // 2, 4 * self.config.mtu)
                self._cwnd = self._ssthresh
                self._fast_recovery_exit = tsn_add(self._next_tsn, -1)
        if self._fast_recovery_exit is not None and tsn_gte(cum, self._fast_recovery_exit):
            self._fast_recovery_exit = None
        if advanced:
            self._errors = 0
            mtu = self.config.mtu
            if self._cwnd <= self._ssthresh:
                self._cwnd += min(acked_bytes, mtu)
            else:
                self._partial_acked += acked_bytes
                if self._partial_acked >= self._cwnd:
                    self._partial_acked -= self._cwnd
                    self._cwnd += mtu
            self._t3_at = now_ms + self._rto if inflight else None
        self._peer_rwnd = max(0, sack.a_rwnd - self._flight_bytes)
        self._abandon_expired(now_ms)
        self._advance_peer_ack_point()
        self._maybe_shutdown(now_ms)

    def _mark_lost(self, out: _Out, now_ms: int) -> None:
        if out.in_flight:
            self._flight_bytes -= len(out.data)
            out.in_flight = False
        if out.expired(now_ms) or (out.max_retransmits is not None and out.sent_count > out.max_retransmits):
            self._abandon(out.msg)
        else:
            out.retransmit = True

    def _abandon(self, msg: int) -> None:
        abandoned = False
        for out in self._inflight:
            if out.msg == msg and not out.abandoned:
                abandoned = True
                out.abandoned = True
                out.retransmit = False
                if out.in_flight:
                    self._flight_bytes -= len(out.data)
                    out.in_flight = False
                if not out.acked:
                    self.buffered_bytes -= len(out.data)
        kept = deque(o for o in self._pending if o.msg != msg)
        if len(kept) != len(self._pending):
            abandoned = True
            self.buffered_bytes -= sum(len(o.data) for o in self._pending if o.msg == msg)
            self._pending = kept
        if abandoned:
            self.stats.abandoned += 1

    def _abandon_expired(self, now_ms: int) -> None:
        msgs = {o.msg for o in self._inflight if not o.abandoned and not o.acked and o.expires_ms is not None and now_ms >= o.expires_ms}
        msgs.update(o.msg for o in self._pending if o.expires_ms is not None and now_ms >= o.expires_ms)
        for msg in msgs:
            self._abandon(msg)

    def _advance_peer_ack_point(self) -> None:
        """RFC 3758 3.5 C: skip abandoned chunks at the head; tell the peer with FORWARD-TSN."""
        if not self.peer_supports_forward_tsn:
            return
        skipped: dict[int, int] = {}
        point = self._adv_peer_ack
        for out in self._inflight:
            if not tsn_gt(out.tsn, point):
                if out.abandoned and not out.unordered:
                    skipped[out.stream] = out.ssn
                continue
            if out.tsn != tsn_add(point, 1) or not out.abandoned:
                break
            point = out.tsn
            if not out.unordered:
                skipped[out.stream] = out.ssn
        self._adv_peer_ack = point
        if tsn_gt(point, self._cum_ack):
            self._send_chunks([ForwardTsnChunk(point, tuple(sorted(skipped.items())))])

    def _update_rto(self, rtt: int) -> None:
        if self._srtt is None:
            self._srtt = float(rtt)
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        rto = int(self._srtt + max(4 * self._rttvar, 10))
        self._rto = max(self.config.rto_min_ms, min(rto, self.config.rto_max_ms))

    def _on_t3(self, now_ms: int, events: list[Event]) -> None:
        self._t3_at = None
        if not self._inflight:
            return
        self._errors += 1
        if self._errors > self.config.max_retransmissions:
            self._send_chunks([AbortChunk()])
            self._closed(f"no acknowledgement after {self.config.max_retransmissions} retransmissions", events)
            return
        mtu = self.config.mtu
        self._ssthresh = max(self._cwnd // 2, 4 * mtu)
        self._cwnd = mtu
        self._partial_acked = 0
        self._fast_recovery_exit = None
        self._rto = min(self._rto * 2, self.config.rto_max_ms)
        for out in list(self._inflight):
            if not out.acked and not out.abandoned:
                self._mark_lost(out, now_ms)
        self._abandon_expired(now_ms)
        self._advance_peer_ack_point()
        self._transmit(now_ms)
        if self._inflight and self._t3_at is None:
            self._t3_at = now_ms + self._rto

    def _transmit(self, now_ms: int) -> None:
        if self.state not in (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING):
            return
        budget_full = False
        batch: list[bytes] = []
        size = 0
        room = self.config.mtu - COMMON_HEADER_LEN

        def room_for(n: int) -> bool:
            if self._flight_bytes + n > self._cwnd and self._flight_bytes > 0:
                return False
            return not (n > self._peer_rwnd and self._flight_bytes > 0)

        def add(out: _Out) -> None:
            nonlocal size
            data = bytes(out.chunk())
            if size + len(data) > room and batch:
                self._send_raw(b"".join(batch))
                batch.clear()
                size = 0
            batch.append(data)
            size += len(data)
            out.sent_ms = now_ms
            out.sent_count += 1
            out.in_flight = True
            self._flight_bytes += len(out.data)
            self._peer_rwnd = max(0, self._peer_rwnd - len(out.data))

        # retransmissions first, oldest first
        for out in self._inflight:
            if out.retransmit and not out.abandoned:
                if not room_for(len(out.data)):
                    budget_full = True
                    break
                out.retransmit = False
                self.stats.retransmissions += 1
                add(out)
        if not budget_full:
            while self._pending:
                out = self._pending[0]
                if out.expires_ms is not None and now_ms >= out.expires_ms:
                    self._abandon(out.msg)
                    continue
                if not room_for(len(out.data)):
                    break
                self._pending.popleft()
                out.tsn = self._next_tsn
                self._next_tsn = tsn_add(self._next_tsn, 1)
                self._inflight.append(out)
                add(out)
        if batch:
            self._send_raw(b"".join(batch))
        if self._inflight and self._t3_at is None:
            self._t3_at = now_ms + self._rto

    # -- stream reset -------------------------------------------------------------------------------
    def _send_reset_request(self, now_ms: int) -> None:
        if self._reconfig_request is not None or not self._reset_queue:
            return
        streams = tuple(self._reset_queue)
        self._reset_queue = []
        request = OutgoingResetRequest(
            self._reconfig_seq,
            self._peer_reconfig_last if self._peer_reconfig_last is not None else 0,
            tsn_add(self._next_tsn, -1),
            streams,
        )
        self._reconfig_request = request
        self._reconfig_at = now_ms + self._rto
        self._send_chunks([ReconfigChunk((request.param(),))])

    def _on_reconfig(self, chunk: ReconfigChunk, now_ms: int, events: list[Event]) -> None:
        responses = []
        for ptype, value in chunk.params:
            if ptype == ParamType.OUTGOING_SSN_RESET:
                request = OutgoingResetRequest.parse(value)
                if request.request_seq == self._peer_reconfig_last:
                    result = self._peer_reconfig_result  # a retransmission: same answer
                elif tsn_gte(self._peer_cum, request.last_tsn):
                    self._perform_incoming_reset(request, events)
                    result = ReconfigResult.SUCCESS_PERFORMED
                else:
                    self._deferred_reset = request
                    result = ReconfigResult.IN_PROGRESS
                self._peer_reconfig_last = request.request_seq
                self._peer_reconfig_result = result
                responses.append(ReconfigResponse(request.request_seq, result).param())
            elif ptype == ParamType.RECONFIG_RESPONSE:
                self._on_reconfig_response(ReconfigResponse.parse(value), now_ms, events)
            else:  # incoming/TSN/add-streams requests: not done by WebRTC endpoints
                seq = int.from_bytes(value[:4], "big") if len(value) >= 4 else 0
                responses.append(ReconfigResponse(seq, ReconfigResult.DENIED).param())
        if responses:
            self._send_chunks([ReconfigChunk(tuple(responses[:2]))])

    def _perform_incoming_reset(self, request: OutgoingResetRequest, events: list[Event]) -> None:
        streams = request.streams or tuple(self._in_ssn)
        for s in streams:
            self._in_ssn[s] = 0
            dropped = self._ordered.pop(s, None) or {}
            self._waiting -= len(dropped)
            for item in dropped.values():
                if item is not None:
                    self._held_bytes -= len(item[1])
        events.append(StreamsReset(tuple(streams)))

    def _on_reconfig_response(self, response: ReconfigResponse, now_ms: int, events: list[Event]) -> None:
        request = self._reconfig_request
        if request is None or response.response_seq != request.request_seq:
            self.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
            return
        if response.result == ReconfigResult.IN_PROGRESS:
            self._reconfig_at = now_ms + self._rto
            return
        self._reconfig_request = None
        self._reconfig_at = None
        self._reconfig_seq = tsn_add(self._reconfig_seq, 1)
        for s in request.streams:
            self._out_ssn.pop(s, None)
            self._resetting.discard(s)
        events.append(OutgoingStreamsReset(request.streams))
        self._send_reset_request(now_ms)

    # -- output ---------------------------------------------------------------------------------------
    def _send_chunks(self, chunks: list[Chunk], *, tag: int | None = None) -> None:
        self._send_raw(b"".join(bytes(c) for c in chunks), tag)

    def _send_raw(self, chunk_bytes: bytes, tag: int | None = None) -> None:
        vtag = self.peer_tag if tag is None else tag
        self.stats.packets_out += 1
        try:
            self._send(encode(self.config.local_port, self.config.remote_port, vtag, chunk_bytes))
        except Exception:  # the transport's failure must not break the state machine
            log.debug("SCTP send failed", exc_info=True)
