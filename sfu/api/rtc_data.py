"""Data channels of signaling sessions: an SCTP association on each participant's publisher
transport (DTLS application data), its channels, and the room's relay (``sfu.routing.data``).

The client opens the channels (the SDK: ``_reliable`` ordered, ``_lossy`` unordered with no
retransmission); the node acknowledges them and sends each relayed message on the recipient's
channel of the same kind.  A reliable channel is one with neither ``maxRetransmits`` nor
``maxPacketLifeTime``; any other is lossy.  The association's timers run on the event loop with
the node clock passed in.  Nothing here is on the RTP path: SCTP arrives as DTLS records.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sfu import clock
from sfu.metrics import DataCollector
from sfu.routing.data import DataCounters, DataDrop, DataKind, DataRelay, Member
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.participant import Participant
from sfu.signaling import sdp
from sfu.transport.dtls import DtlsRole
from sfu.transport.peer import PeerTransport
from sfu.transport.sctp.association import (
    Association,
    AssociationState,
    SctpConfig,
    SctpStats,
    SendOutcome,
)
from sfu.transport.sctp.channels import (
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    DataChannel,
    DataChannels,
)

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

#: what the node accepts (the answer's a=max-message-size)
MAX_MESSAGE_SIZE = sdp.MAX_MESSAGE_SIZE
#: RFC 8841 6: a peer that says no a=max-message-size takes 64 KiB
DEFAULT_REMOTE_MAX_MESSAGE_SIZE = 65536
#: the largest SCTP packet, under the DTLS record's room in the 1200-byte datagram
SCTP_MTU = 1100
RECEIVE_WINDOW = 2 * MAX_MESSAGE_SIZE
SEND_BUFFER = 1 << 20

_REFUSALS = {
    SendOutcome.TOO_LARGE: DataDrop.TOO_LARGE,
    SendOutcome.BUFFER_FULL: DataDrop.BUFFER_FULL,
    SendOutcome.NOT_OPEN: DataDrop.NOT_OPEN,
    SendOutcome.STREAM_RESETTING: DataDrop.NO_CHANNEL,
}


def data_only_offer(text: str) -> bool:
    """Whether an offer's only sections are m=application (a data-only publisher transport)."""
    try:
        desc = sdp.parse_sdp(text)
    except ValueError:
        return False
    return bool(desc.media) and all(m.kind is sdp.MediaKind.APPLICATION for m in desc.media)


def data_section(offer: sdp.SessionDesc) -> sdp.MediaSection | None:
    return next((m for m in offer.media if m.is_datachannel and not m.rejected), None)


class DataSession:
    """One participant's association (created at its first SCTP packet, once DTLS is up)."""

    def __init__(
        self,
        service: DataService,
        participant: Participant,
        transport: PeerTransport,
        *,
        can_send: bool,
        remote_port: int,
        remote_max_message_size: int,
    ) -> None:
        self.service = service
        self.participant = participant
        self.room_id = participant.room_id
        self.transport = transport
        self.remote_port = remote_port
        self.remote_max_message_size = remote_max_message_size
        self.association: Association | None = None
        self.channels: DataChannels | None = None
        self.by_kind: dict[DataKind, DataChannel] = {}
        self.member: Member = service.relay.add(
            self.room_id, participant.identity, self.deliver, can_send=can_send, now_ms=clock.now_ms()
        )
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        transport.set_app_data_handler(self.on_app_data)

    def _start(self) -> tuple[Association, DataChannels]:
        if self.association is None or self.channels is None:
            room = self.transport.dtls.max_application_size
            config = SctpConfig(
                remote_port=self.remote_port,
                mtu=min(SCTP_MTU, room) if room >= 256 else SCTP_MTU,
                max_message_size=MAX_MESSAGE_SIZE,
                remote_max_message_size=self.remote_max_message_size,
                receive_window=RECEIVE_WINDOW,
                max_buffered_bytes=SEND_BUFFER,
            )
            self.association = Association(self._send, config, stats=self.service.sctp)
            self.channels = DataChannels(
                self.association, dtls_client=self.transport.dtls.role is DtlsRole.CLIENT
            )
        return self.association, self.channels

    def _send(self, packet: bytes) -> None:
        try:
            self.transport.send_app_data(packet)
        except ValueError:  # larger than a DTLS record here: the MTU guess was wrong
            log.debug("SCTP packet of %d bytes did not fit a DTLS record", len(packet))

    # -- input ---------------------------------------------------------------------------------
    def on_app_data(self, data: bytes) -> None:
        if self.closed:
            return
        now = clock.now_ms()
        association, channels = self._start()
        try:
            events = association.feed(data, now)
            self._handle(channels.on_events(events, now), now)
        except Exception:  # a bug here must not reach the media port's reader
            log.exception("data channel input failed for %s", self.participant.identity)
        self._arm()

    def _handle(self, events: list[ChannelOpened | ChannelMessage | ChannelClosed], now: int) -> None:
        for event in events:
            channel = event.channel
            kind = DataKind.RELIABLE if channel.reliable else DataKind.LOSSY
            if isinstance(event, ChannelMessage):
                self.service.relay.on_message(self.room_id, self.member, kind, event.data, event.text, now)
            elif isinstance(event, ChannelOpened):
                self.by_kind.setdefault(kind, channel)
            elif self.by_kind.get(kind) is channel:
                del self.by_kind[kind]
                assert self.channels is not None
                other = next(
                    (c for c in self.channels.channels.values() if (DataKind.RELIABLE if c.reliable else DataKind.LOSSY) is kind),
                    None,
                )
                if other is not None:
                    self.by_kind[kind] = other

    # -- output --------------------------------------------------------------------------------
    def deliver(self, kind: DataKind, envelope: bytes, text: bool, now_ms: int) -> DataDrop | None:
        association, channels = self.association, self.channels
        if self.closed or association is None or channels is None or association.state is not AssociationState.ESTABLISHED:
            return DataDrop.NOT_OPEN
        channel = self.by_kind.get(kind)
        if channel is None:
            return DataDrop.NO_CHANNEL
        outcome = channels.send(channel, envelope, now_ms, text=text)
        self._arm()
        return _REFUSALS.get(outcome)

    # -- timers --------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        association = self.association
        if association is None or self.closed:
            return
        deadline = association.next_timeout_ms()
        if deadline is None:
            return
        delay = max(0, deadline - clock.now_ms()) / 1000
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        association, channels = self.association, self.channels
        if association is None or channels is None or self.closed:
            return
        now = clock.now_ms()
        try:
            self._handle(channels.on_events(association.handle_timeout(now), now), now)
        except Exception:
            log.exception("data channel timer failed for %s", self.participant.identity)
        self._arm()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.set_app_data_handler(None)
        self.service.relay.remove(self.room_id, self.member)
        self.association = self.channels = None  # the association's send is ours: no cycle
        self.by_kind.clear()


class DataService:
    """Every data session of the node; removes them as participants leave."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.counters = DataCounters()
        self.sctp = SctpStats()
        self.relay = DataRelay(
            self.counters,
            messages_per_s=node.config.data_messages_per_s,
            bytes_per_s=node.config.data_bytes_per_s,
        )
        self.sessions: dict[str, DataSession] = {}  # by participant sid
        node.metrics_registry.register(DataCollector(self.counters, self.sctp, self.gauges))

    def attach(
        self, participant: Participant, transport: PeerTransport, section: sdp.MediaSection | None, *, can_send: bool
    ) -> DataSession:
        """The participant's publisher transport carries data (its offer had an accepted
        m=application section); again with the same transport, nothing changes."""
        current = self.sessions.get(participant.sid)
        if current is not None and current.transport is transport and not current.closed:
            return current
        if current is not None:
            current.close()
        session = DataSession(
            self,
            participant,
            transport,
            can_send=can_send,
            remote_port=(section.sctp_port if section is not None and section.sctp_port else sdp.SCTP_PORT),
            remote_max_message_size=(
                section.max_message_size
                if section is not None and section.max_message_size is not None
                else DEFAULT_REMOTE_MAX_MESSAGE_SIZE
            ),
        )
        self.sessions[participant.sid] = session
        return session

    def detach(self, participant: Participant) -> None:
        session = self.sessions.pop(participant.sid, None)
        if session is not None:
            session.close()

    def on_event(self, event: RoomEvent) -> None:
        if event.kind is RoomEventKind.LEFT and event.participant is not None:
            self.detach(event.participant)
        elif event.kind is RoomEventKind.ROOM_CLOSED:
            for p in event.participants:
                self.detach(p)

    def gauges(self) -> dict[str, float]:
        up = sum(
            1
            for s in self.sessions.values()
            if s.association is not None and s.association.state is AssociationState.ESTABLISHED
        )
        return {"sfu_data_associations": up}
