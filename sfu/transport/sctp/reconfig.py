"""Stream reset (RFC 6525 RE-CONFIG) of an SCTP association, as WebRTC closes data channels.

Our side sends one outgoing SSN reset request at a time (more streams queue behind it) and
retransmits it on its timer until answered; the peer's requests are performed at once, or, when
DATA before the reset is still missing, deferred to the receive side (answered IN_PROGRESS
meanwhile).  Other request types are denied.
"""

from __future__ import annotations

from collections.abc import Iterable

from sfu.transport.sctp.chunks import (
    OutgoingResetRequest,
    ParamType,
    ReconfigChunk,
    ReconfigResponse,
    ReconfigResult,
)
from sfu.transport.sctp.common import AssociationState, Event, Link, OutgoingStreamsReset, SctpDrop
from sfu.transport.sctp.receiver import Receiver
from sfu.transport.sctp.sender import Sender
from sfu.transport.sctp.tsn import tsn_add, tsn_gte


class StreamReset:
    """RE-CONFIG requests and responses.  ``at`` is its retransmission timer; ``peer_last`` the
    sequence number of the peer's last request (set when the peer is learnt)."""

    def __init__(self, link: Link, sender: Sender, receiver: Receiver, initial_tsn: int) -> None:
        self._link = link
        self._sender = sender
        self._receiver = receiver
        self._seq = initial_tsn
        self._request: OutgoingResetRequest | None = None
        self.at: int | None = None
        self._queue: list[int] = []
        self.peer_last: int | None = None
        self._peer_result = ReconfigResult.SUCCESS_PERFORMED

    def request(self, streams: Iterable[int], now_ms: int) -> None:
        """Reset (close) outgoing streams: RE-CONFIG outgoing SSN reset request (RFC 6525)."""
        resetting = self._sender.resetting
        wanted = [s for s in streams if s not in resetting and s not in self._queue]
        if not wanted or self._link.state is not AssociationState.ESTABLISHED:
            return
        self._queue.extend(wanted)
        resetting.update(wanted)
        self._send_request(now_ms)

    def on_timeout(self, now_ms: int) -> None:
        """Retransmit the request waiting for an answer (if due)."""
        if self.at is None or now_ms < self.at or self._request is None:
            return
        self.at = now_ms + self._link.rto
        self._link.send_chunks([ReconfigChunk((self._request.param(),))])

    def _send_request(self, now_ms: int) -> None:
        if self._request is not None or not self._queue:
            return
        streams = tuple(self._queue)
        self._queue = []
        request = OutgoingResetRequest(
            self._seq,
            self.peer_last if self.peer_last is not None else 0,
            tsn_add(self._sender.next_tsn, -1),
            streams,
        )
        self._request = request
        self.at = now_ms + self._link.rto
        self._link.send_chunks([ReconfigChunk((request.param(),))])

    def on_chunk(self, chunk: ReconfigChunk, now_ms: int, events: list[Event]) -> None:
        receiver = self._receiver
        responses = []
        for ptype, value in chunk.params:
            if ptype == ParamType.OUTGOING_SSN_RESET:
                request = OutgoingResetRequest.parse(value)
                if request.request_seq == self.peer_last:
                    result = self._peer_result  # a retransmission: same answer
                elif tsn_gte(receiver.peer_cum, request.last_tsn):
                    receiver.perform_incoming_reset(request, events)
                    result = ReconfigResult.SUCCESS_PERFORMED
                else:
                    receiver.deferred_reset = request
                    result = ReconfigResult.IN_PROGRESS
                self.peer_last = request.request_seq
                self._peer_result = result
                responses.append(ReconfigResponse(request.request_seq, result).param())
            elif ptype == ParamType.RECONFIG_RESPONSE:
                self._on_response(ReconfigResponse.parse(value), now_ms, events)
            else:  # incoming/TSN/add-streams requests: not done by WebRTC endpoints
                seq = int.from_bytes(value[:4], "big") if len(value) >= 4 else 0
                responses.append(ReconfigResponse(seq, ReconfigResult.DENIED).param())
        if responses:
            self._link.send_chunks([ReconfigChunk(tuple(responses[:2]))])

    def _on_response(self, response: ReconfigResponse, now_ms: int, events: list[Event]) -> None:
        request = self._request
        if request is None or response.response_seq != request.request_seq:
            self._link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
            return
        if response.result == ReconfigResult.IN_PROGRESS:
            self.at = now_ms + self._link.rto
            return
        self._request = None
        self.at = None
        self._seq = tsn_add(self._seq, 1)
        self._sender.streams_reset(request.streams)
        events.append(OutgoingStreamsReset(request.streams))
        self._send_request(now_ms)
