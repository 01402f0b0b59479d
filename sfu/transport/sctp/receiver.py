"""The receive side of an SCTP association: TSN tracking, reassembly, ordered and unordered
delivery, FORWARD-TSN (RFC 3758), SACKs, and the incoming half of a stream reset (RFC 6525).

Memory is bounded: it holds at most ``receive_window`` bytes and ``max_held_chunks`` chunks (more
is dropped unacked, so the peer retransmits; the next TSN in sequence is always given room up to
twice those).  A reassembled message over ``max_message_size`` is dropped and counted.
"""

from __future__ import annotations

from sfu.transport.sctp.chunks import (
    DataChunk,
    ForwardTsnChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    ReconfigResult,
    SackChunk,
)
from sfu.transport.sctp.common import AssociationState, Event, Link, MessageReceived, SctpDrop, StreamsReset
from sfu.transport.sctp.tsn import ssn_gt, tsn_add, tsn_diff, tsn_gt, tsn_gte

_MAX_GAP_BLOCKS = 64
_MAX_DUPS = 32


class Receiver:
    """DATA in, messages out (as ``MessageReceived`` events); ``send_sack`` acknowledges.

    ``peer_cum`` is the peer's cumulative TSN; ``dups`` the duplicate TSNs the next SACK reports;
    ``deferred_reset`` an incoming stream reset waiting for ``peer_cum`` to reach its last TSN.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self.peer_cum = 0
        self._received: set[int] = set()
        self.dups: list[int] = []
        self.held: dict[int, DataChunk] = {}
        self._held_bytes = 0
        self._waiting = 0  # complete ordered messages waiting for an earlier one
        self._in_ssn: dict[int, int] = {}
        self._ordered: dict[int, dict[int, tuple[int, bytes] | None]] = {}
        self.deferred_reset: OutgoingResetRequest | None = None

    def clear(self) -> None:
        """The association closed: drop what is held."""
        self.held.clear()
        self._ordered.clear()
        self._held_bytes = self._waiting = 0

    # -- DATA ---------------------------------------------------------------------------------------
    def on_data(self, chunk: DataChunk, events: list[Event]) -> None:
        link = self._link
        drops = link.stats.drops
        if link.state not in (AssociationState.ESTABLISHED, AssociationState.SHUTDOWN_PENDING, AssociationState.SHUTDOWN_SENT):
            drops[SctpDrop.UNEXPECTED_CHUNK] += 1
            return
        tsn = chunk.tsn
        if not tsn_gt(tsn, self.peer_cum) or tsn in self._received:
            if len(self.dups) < _MAX_DUPS:
                self.dups.append(tsn)
            return
        size = len(chunk.data)
        # the next TSN in sequence gets twice the room: refusing it could stall the association
        room = 2 if tsn == tsn_add(self.peer_cum, 1) else 1
        config = link.config
        if (
            tsn_diff(tsn, self.peer_cum) > 65535
            or len(self.held) + self._waiting >= room * config.max_held_chunks
            or self._held_bytes + size > room * config.receive_window
        ):
            drops[SctpDrop.RECEIVE_WINDOW_FULL] += 1
            return
        self._received.add(tsn)
        self._advance_cum()
        self.held[tsn] = chunk
        self._held_bytes += size
        self._reassemble(tsn, events)
        self._perform_deferred_reset(events)

    def _advance_cum(self) -> None:
        received = self._received
        nxt = tsn_add(self.peer_cum, 1)
        while nxt in received:
            received.discard(nxt)
            self.peer_cum = nxt
            nxt = tsn_add(nxt, 1)

    def _perform_deferred_reset(self, events: list[Event]) -> None:
        """A peer's reset request that waited for data (RFC 6525 5.2.2): done once that data is in
        and delivered, so the stream's last messages still count under their old numbers."""
        if self.deferred_reset is not None and tsn_gte(self.peer_cum, self.deferred_reset.last_tsn):
            request, self.deferred_reset = self.deferred_reset, None
            self.perform_incoming_reset(request, events)
            response = ReconfigResponse(request.request_seq, ReconfigResult.SUCCESS_PERFORMED)
            self._link.send_chunks([ReconfigChunk((response.param(),))])

    def _reassemble(self, tsn: int, events: list[Event]) -> None:
        held = self.held
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
        too_large = len(data) > self._link.config.max_message_size
        if too_large:
            self._link.stats.drops[SctpDrop.MESSAGE_TOO_LARGE] += 1
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

    # -- FORWARD-TSN ----------------------------------------------------------------------------------
    def on_forward_tsn(self, chunk: ForwardTsnChunk, events: list[Event]) -> None:
        new = chunk.new_cumulative_tsn
        if tsn_gt(new, self.peer_cum):
            if tsn_diff(new, self.peer_cum) > 65535 + self._link.config.max_held_chunks:
                self._link.stats.drops[SctpDrop.UNEXPECTED_CHUNK] += 1
                return
            for t in [t for t in self._received if tsn_gte(new, t)]:
                self._received.discard(t)
            for t in [t for t in self.held if tsn_gte(new, t)]:
                self._held_bytes -= len(self.held.pop(t).data)
            self.peer_cum = new
            self._advance_cum()
            for stream, ssn in chunk.streams:
                self._skip_ordered(stream, ssn, events)
            self._perform_deferred_reset(events)
        self.send_sack()

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

    # -- SACK -----------------------------------------------------------------------------------------
    def send_sack(self) -> None:
        cum = self.peer_cum
        gaps: list[tuple[int, int]] = []
        for t in sorted(tsn_diff(t, cum) for t in self._received):
            if gaps and gaps[-1][1] + 1 == t:
                gaps[-1] = (gaps[-1][0], t)
            elif len(gaps) < _MAX_GAP_BLOCKS:
                gaps.append((t, t))
            else:
                break
        rwnd = max(0, self._link.config.receive_window - self._held_bytes)
        dups = tuple(self.dups)
        self.dups.clear()
        self._link.send_chunks([SackChunk(cum, rwnd, tuple(gaps), dups)])

    # -- incoming stream reset ------------------------------------------------------------------------
    def perform_incoming_reset(self, request: OutgoingResetRequest, events: list[Event]) -> None:
        """The peer reset its outgoing streams (all when the request lists none): SSNs restart at
        0, messages still waiting there are dropped."""
        streams = request.streams or tuple(self._in_ssn)
        for s in streams:
            self._in_ssn[s] = 0
            dropped = self._ordered.pop(s, None) or {}
            self._waiting -= len(dropped)
            for item in dropped.values():
                if item is not None:
                    self._held_bytes -= len(item[1])
        events.append(StreamsReset(tuple(streams)))
