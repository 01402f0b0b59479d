"""Opening and closing an SCTP association (RFC 9260 5 and 9): the INIT / INIT-ACK / COOKIE-ECHO /
COOKIE-ACK handshake with its HMAC state cookie, the SHUTDOWN sequence, and the close itself.

Either side may start (``connect``); both may, as WebRTC endpoints do (an INIT collision is
resolved as RFC 9260 5.2.1/5.2.4 case D: each side keeps its own tag and TSN).  An INIT is always
answered with an INIT-ACK carrying a cookie (no state kept); a valid COOKIE-ECHO establishes.
The control chunk in progress (INIT, COOKIE-ECHO, SHUTDOWN, SHUTDOWN-ACK) is retransmitted on
the T1/T2 timer (``control_at``) until answered or given up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from struct import Struct

from sfu.transport.sctp.chunks import (
    Chunk,
    ChunkType,
    CookieAckChunk,
    CookieEchoChunk,
    InitAckChunk,
    InitChunk,
    ParamType,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
)
from sfu.transport.sctp.common import AssociationState, Closed, Connected, Event, Link, SctpDrop
from sfu.transport.sctp.receiver import Receiver
from sfu.transport.sctp.reconfig import StreamReset
from sfu.transport.sctp.sender import Sender
from sfu.transport.sctp.tsn import tsn_add

_COOKIE = Struct("!IIIIHHBQ")
_COOKIE_MAC_LEN = 16


class Handshake:
    """Setup and teardown: it moves ``link.state`` and tells the other parts what the peer is."""

    def __init__(self, link: Link, sender: Sender, receiver: Receiver, reset: StreamReset, initial_tsn: int) -> None:
        self._link = link
        self._sender = sender
        self._receiver = receiver
        self._reset = reset
        self._initial_tsn = initial_tsn
        self._cookie_key = secrets.token_bytes(32)
        self.my_tag = secrets.randbits(32) or 1
        self.close_reason = ""
        # control chunk retransmission (INIT, COOKIE-ECHO, SHUTDOWN, SHUTDOWN-ACK): T1/T2
        self._control: Chunk | None = None
        self._control_tag = 0
        self.control_at: int | None = None
        self._control_count = 0

    # -- setup --------------------------------------------------------------------------------------
    def connect(self, now_ms: int) -> None:
        """Send INIT (the peer may send its own too: either one completes the association)."""
        link = self._link
        if link.state is not AssociationState.CLOSED or link.ever_established:
            return
        init = InitChunk(
            self.my_tag,
            link.config.receive_window,
            link.config.streams,
            link.config.streams,
            self._initial_tsn,
            self._extension_params(),
        )
        link.state = AssociationState.COOKIE_WAIT
        self._start_control(init, 0, now_ms)

    def on_init_ack(self, chunk: InitAckChunk, now_ms: int) -> None:
        link = self._link
        if link.ever_established:
            return  # an INIT collision's late answer: discarded silently
        if link.state is not AssociationState.COOKIE_WAIT:
            link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
            return
        self._learn_peer(chunk.initiate_tag, chunk.initial_tsn, chunk.a_rwnd, chunk)
        link.state = AssociationState.COOKIE_ECHOED
        self._start_control(CookieEchoChunk(chunk.cookie), link.peer_tag, now_ms)

    def answer_init(self, init: InitChunk, now_ms: int) -> None:
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
        config = self._link.config
        ack = InitAckChunk(
            self.my_tag,
            config.receive_window,
            config.streams,
            config.streams,
            self._initial_tsn,
            ((ParamType.STATE_COOKIE, cookie), *self._extension_params()),
        )
        self._link.send_chunks([ack], tag=init.initiate_tag)

    def on_cookie_echo(self, chunk: CookieEchoChunk, now_ms: int, events: list[Event]) -> None:
        link = self._link
        cookie = chunk.cookie
        if len(cookie) != _COOKIE.size + _COOKIE_MAC_LEN or not hmac.compare_digest(
            self._mac(cookie[: _COOKIE.size]), cookie[_COOKIE.size :]
        ):
            link.stats.drops[SctpDrop.BAD_COOKIE] += 1
            return
        my_tag, peer_tag, peer_tsn, rwnd, _os, _mis, flags, made = _COOKIE.unpack_from(cookie)
        if my_tag != self.my_tag or not 0 <= now_ms - made <= link.config.cookie_lifetime_ms:
            link.stats.drops[SctpDrop.BAD_COOKIE] += 1
            return
        if link.ever_established:
            if peer_tag == link.peer_tag:  # a duplicate: our COOKIE-ACK was lost
                link.send_chunks([CookieAckChunk()])
            else:
                link.stats.drops[SctpDrop.BAD_COOKIE] += 1  # a restart: not supported
            return
        self._learn_peer(peer_tag, peer_tsn, rwnd, None, fwd=bool(flags & 1), reconfig=bool(flags & 2))
        link.send_chunks([CookieAckChunk()])
        self._established(events)

    def on_cookie_ack(self, events: list[Event]) -> None:
        link = self._link
        if link.state is AssociationState.COOKIE_ECHOED:
            self._established(events)
        elif not link.ever_established:
            link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1

    def _extension_params(self) -> tuple[tuple[int, bytes], ...]:
        return (
            (ParamType.FORWARD_TSN_SUPPORTED, b""),
            (ParamType.SUPPORTED_EXTENSIONS, bytes([ChunkType.FORWARD_TSN, ChunkType.RECONFIG])),
        )

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._cookie_key, body, hashlib.sha256).digest()[:_COOKIE_MAC_LEN]

    def _learn_peer(self, tag: int, initial_tsn: int, a_rwnd: int, init: InitChunk | None, *, fwd: bool = False, reconfig: bool = False) -> None:
        link = self._link
        link.peer_tag = tag
        self._receiver.peer_cum = tsn_add(initial_tsn, -1)
        self._sender.peer_rwnd = a_rwnd
        self._reset.peer_last = tsn_add(initial_tsn, -1)
        if init is not None:
            fwd, reconfig = init.supports_forward_tsn, init.supports_reconfig
        link.peer_supports_forward_tsn = fwd
        link.peer_supports_reconfig = reconfig

    def _established(self, events: list[Event]) -> None:
        link = self._link
        self._control = None
        self.control_at = None
        link.state = AssociationState.ESTABLISHED
        link.ever_established = True
        link.rto = link.config.rto_initial_ms
        events.append(Connected())

    # -- shutdown and close ---------------------------------------------------------------------------
    def maybe_shutdown(self, now_ms: int) -> None:
        """SHUTDOWN_PENDING and nothing left to send or acknowledge: send SHUTDOWN."""
        link = self._link
        if link.state is AssociationState.SHUTDOWN_PENDING and self._sender.is_idle:
            link.state = AssociationState.SHUTDOWN_SENT
            self._start_control(ShutdownChunk(self._receiver.peer_cum), link.peer_tag, now_ms)

    def on_shutdown(self, now_ms: int) -> None:
        self._control = None
        self._link.state = AssociationState.SHUTDOWN_ACK_SENT
        self._start_control(ShutdownAckChunk(), self._link.peer_tag, now_ms)

    def on_shutdown_ack(self, events: list[Event]) -> None:
        link = self._link
        if link.state in (AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_ACK_SENT):
            link.send_chunks([ShutdownCompleteChunk()])
            self.close("shutdown", events)
        else:
            link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1

    def on_shutdown_complete(self, events: list[Event]) -> None:
        if self._link.state is AssociationState.SHUTDOWN_ACK_SENT:
            self.close("shutdown", events)
        else:
            self._link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1

    def close(self, reason: str, events: list[Event]) -> None:
        """Close for good (once): timers stop, whatever is queued or held is dropped."""
        link = self._link
        if link.ended:
            return
        link.state = AssociationState.CLOSED
        link.ever_established = True  # a closed association stays closed
        self.close_reason = reason
        self.control_at = None
        self._control = None
        self._reset.at = None
        self._sender.clear()
        self._receiver.clear()
        events.append(Closed(reason))

    # -- the control chunk timer (T1/T2) --------------------------------------------------------------
    def _start_control(self, chunk: Chunk, tag: int, now_ms: int) -> None:
        self._control = chunk
        self._control_tag = tag
        self._control_count = 0
        self.control_at = now_ms + self._link.rto
        self._link.send_chunks([chunk], tag=tag)

    def on_timeout(self, now_ms: int, events: list[Event]) -> None:
        """Retransmit the control chunk in progress (if due), or give up and close."""
        if self.control_at is None or now_ms < self.control_at:
            return
        chunk = self._control
        if chunk is None:
            self.control_at = None
            return
        link = self._link
        self._control_count += 1
        limit = (
            link.config.max_init_retransmissions
            if link.state in (AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED)
            else link.config.max_retransmissions
        )
        if self._control_count > limit:
            self.close(f"no answer to {type(chunk).__name__} after {limit} retransmissions", events)
            return
        link.rto = min(link.rto * 2, link.config.rto_max_ms)
        self.control_at = now_ms + link.rto
        link.stats.retransmissions += 1
        link.send_chunks([chunk], tag=self._control_tag)
