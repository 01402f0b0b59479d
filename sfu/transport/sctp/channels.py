"""Data channels (RFC 8831) on an ``Association``: DCEP open/ack, PPIDs, close by stream reset.

Fed the association's events (``on_events``), it returns channel events.  Channels the peer
opens are acknowledged at once; ``open`` opens one from this side on a stream id of our parity
(RFC 8832 6: the DTLS client takes even ids, the server odd ones).  Bad input (a malformed DCEP
message, a message on a stream with no channel, a deprecated PPID) is dropped and counted in the
association's ``stats.drops``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sfu.transport.sctp.association import (
    Association,
    Closed,
    Event,
    MessageReceived,
    OutgoingStreamsReset,
    SctpDrop,
    SendOutcome,
    StreamsReset,
)
from sfu.transport.sctp.dcep import ACK_BYTES, DataChannelOpen, MessageType, Ppid, is_ack


class ChannelState(enum.Enum):
    CONNECTING = "connecting"  # we sent OPEN, no ACK yet
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class DataChannel:
    stream: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    lifetime_ms: int | None
    state: ChannelState = ChannelState.OPEN

    @property
    def reliable(self) -> bool:
        return self.max_retransmits is None and self.lifetime_ms is None


@dataclass(frozen=True)
class ChannelOpened:
    channel: DataChannel


@dataclass(frozen=True)
class ChannelMessage:
    channel: DataChannel
    data: bytes
    text: bool


@dataclass(frozen=True)
class ChannelClosed:
    channel: DataChannel


ChannelEvent = ChannelOpened | ChannelMessage | ChannelClosed


class DataChannels:
    def __init__(self, association: Association, *, dtls_client: bool) -> None:
        self.association = association
        self.channels: dict[int, DataChannel] = {}
        self._parity = 0 if dtls_client else 1

    def on_events(self, events: list[Event], now_ms: int) -> list[ChannelEvent]:
        out: list[ChannelEvent] = []
        for event in events:
            if isinstance(event, MessageReceived):
                self._on_message(event, now_ms, out)
            elif isinstance(event, StreamsReset):
                for stream in event.streams:
                    self._close_stream(stream, now_ms, out)
            elif isinstance(event, OutgoingStreamsReset):
                for stream in event.streams:
                    self._finish(stream, out)
            elif isinstance(event, Closed):
                for stream in list(self.channels):
                    self._finish(stream, out)
        return out

    # -- user side --------------------------------------------------------------------------------
    def open(
        self,
        label: str,
        now_ms: int,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        lifetime_ms: int | None = None,
        protocol: str = "",
    ) -> DataChannel | None:
        """Open a channel (DCEP OPEN); None when the association is not up or ids ran out."""
        if not self.association.is_established:
            return None
        stream = next(
            (s for s in range(self._parity, self.association.config.streams, 2) if s not in self.channels), None
        )
        if stream is None:
            return None
        request = DataChannelOpen.of(
            label, ordered=ordered, max_retransmits=max_retransmits, lifetime_ms=lifetime_ms, protocol=protocol
        )
        channel = DataChannel(
            stream, label, protocol, ordered, max_retransmits, lifetime_ms, ChannelState.CONNECTING
        )
        self.channels[stream] = channel
        self.association.send_message(stream, Ppid.DCEP, bytes(request), now_ms)
        return channel

    def send(self, channel: DataChannel, data: bytes, now_ms: int, *, text: bool) -> SendOutcome:
        """One message: a string (UTF-8) when ``text``, else binary; empty ones as RFC 8831 6.6."""
        if channel.state is ChannelState.CLOSED or self.channels.get(channel.stream) is not channel:
            return SendOutcome.NOT_OPEN
        if data:
            ppid = Ppid.STRING if text else Ppid.BINARY
        else:
            ppid, data = (Ppid.STRING_EMPTY if text else Ppid.BINARY_EMPTY), b"\x00"
        return self.association.send_message(
            channel.stream,
            ppid,
            data,
            now_ms,
            ordered=channel.ordered or channel.state is ChannelState.CONNECTING,
            max_retransmits=channel.max_retransmits,
            lifetime_ms=channel.lifetime_ms,
        )

    def close(self, channel: DataChannel, now_ms: int) -> None:
        """Close by resetting our outgoing stream; ``ChannelClosed`` follows."""
        if self.channels.get(channel.stream) is channel and channel.state is not ChannelState.CLOSED:
            channel.state = ChannelState.CLOSED
            self.association.reset_streams([channel.stream], now_ms)

    # -- peer side -------------------------------------------------------------------------------
    def _on_message(self, event: MessageReceived, now_ms: int, out: list[ChannelEvent]) -> None:
        drops = self.association.stats.drops
        stream = event.stream
        channel = self.channels.get(stream)
        if event.ppid == Ppid.DCEP:
            self._on_dcep(stream, event.data, channel, now_ms, out)
            return
        if channel is None or channel.state is ChannelState.CLOSED:
            drops[SctpDrop.UNKNOWN_STREAM] += 1
            return
        if event.ppid in (Ppid.STRING, Ppid.BINARY):
            data, text = event.data, event.ppid == Ppid.STRING
        elif event.ppid in (Ppid.STRING_EMPTY, Ppid.BINARY_EMPTY):
            data, text = b"", event.ppid == Ppid.STRING_EMPTY
        else:
            drops[SctpDrop.BAD_PPID] += 1
            return
        if channel.state is ChannelState.CONNECTING:  # data implies the ACK (RFC 8832 6)
            channel.state = ChannelState.OPEN
            out.append(ChannelOpened(channel))
        out.append(ChannelMessage(channel, data, text))

    def _on_dcep(self, stream: int, data: bytes, channel: DataChannel | None, now_ms: int, out: list[ChannelEvent]) -> None:
        drops = self.association.stats.drops
        if is_ack(data):
            if channel is not None and channel.state is ChannelState.CONNECTING:
                channel.state = ChannelState.OPEN
                out.append(ChannelOpened(channel))
            else:
                drops[SctpDrop.DCEP_INVALID] += 1
            return
        if not data or data[0] != MessageType.OPEN or channel is not None:
            drops[SctpDrop.DCEP_INVALID] += 1
            return
        try:
            request = DataChannelOpen.parse(data)
        except ValueError:
            drops[SctpDrop.DCEP_INVALID] += 1
            return
        channel = DataChannel(
            stream, request.label, request.protocol, request.ordered, request.max_retransmits, request.lifetime_ms
        )
        self.channels[stream] = channel
        self.association.send_message(stream, Ppid.DCEP, ACK_BYTES, now_ms)
        out.append(ChannelOpened(channel))

    def _close_stream(self, stream: int, now_ms: int, out: list[ChannelEvent]) -> None:
        channel = self.channels.get(stream)
        if channel is None:
            return
        if channel.state is not ChannelState.CLOSED:  # the peer closed: reset our side too
            channel.state = ChannelState.CLOSED
            self.association.reset_streams([stream], now_ms)
        self._finish(stream, out)

    def _finish(self, stream: int, out: list[ChannelEvent]) -> None:
        channel = self.channels.pop(stream, None)
        if channel is not None:
            channel.state = ChannelState.CLOSED
            out.append(ChannelClosed(channel))
