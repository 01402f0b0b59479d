"""What the parts of an SCTP association share: states, drop reasons, config, counters, events, ``Link``.

``association`` re-exports all of it (import from there).  ``Link`` is the state every part of
one association reads or writes (the association state, what was learnt of the peer, the RTO)
and the way out: packets go to the caller's ``send`` callback at once.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sfu.transport.sctp.chunks import Chunk
from sfu.transport.sctp.packet import encode

#: the name the association module had before it was split: logging configured for it still applies
log = logging.getLogger("sfu.transport.sctp.association")


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


# --- shared by the parts of one association ---------------------------------------------------


class Link:
    """One association's shared state and output.

    ``rto`` is the retransmission timeout every timer uses (T1/T2 for control chunks, T3 for
    DATA, the RE-CONFIG timer); the send side's RTT estimate sets it, timeouts back it off.
    """

    __slots__ = (
        "config",
        "stats",
        "state",
        "ever_established",
        "peer_tag",
        "peer_supports_forward_tsn",
        "peer_supports_reconfig",
        "rto",
        "_send",
    )

    def __init__(self, send: Callable[[bytes], None], config: SctpConfig, stats: SctpStats) -> None:
        self.config = config
        self.stats = stats
        self.state = AssociationState.CLOSED
        self.ever_established = False
        self.peer_tag = 0
        self.peer_supports_forward_tsn = False
        self.peer_supports_reconfig = False
        self.rto = config.rto_initial_ms
        self._send = send

    @property
    def ended(self) -> bool:
        """Closed for good (the association was closed, not just never opened): input is dropped."""
        return self.state is AssociationState.CLOSED and self.ever_established

    def send_chunks(self, chunks: list[Chunk], *, tag: int | None = None) -> None:
        self.send_raw(b"".join(bytes(c) for c in chunks), tag)

    def send_raw(self, chunk_bytes: bytes, tag: int | None = None) -> None:
        vtag = self.peer_tag if tag is None else tag
        self.stats.packets_out += 1
        try:
            self._send(encode(self.config.local_port, self.config.remote_port, vtag, chunk_bytes))
        except Exception:  # the transport's failure must not break the state machine
            log.debug("SCTP send failed", exc_info=True)
