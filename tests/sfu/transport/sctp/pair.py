"""Two in-memory associations joined by a link that can lose packets, on a virtual clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.transport.sctp.association import Association, Event, MessageReceived, SctpConfig, SctpStats

Drop = Callable[[int, bytes], bool]  # (index of the packet on that direction, bytes) -> lose it


@dataclass
class Side:
    assoc: Association
    wire: list[bytes] = field(default_factory=list)  # sent, not yet delivered
    events: list[Event] = field(default_factory=list)
    sent: int = 0
    drop: Drop | None = None


class Pair:
    def __init__(
        self, a: SctpConfig | None = None, b: SctpConfig | None = None, *, tsn_a: int | None = None, tsn_b: int | None = None
    ) -> None:
        self.now = 1_000
        self.a = self._side(a, tsn_a)
        self.b = self._side(b, tsn_b)

    def _side(self, config: SctpConfig | None, tsn: int | None) -> Side:
        side: Side
        assoc = Association(lambda p: self._out(side, p), config, stats=SctpStats(), initial_tsn=tsn)
        side = Side(assoc)
        return side

    def _out(self, side: Side, packet: bytes) -> None:
        index = side.sent
        side.sent += 1
        if side.drop is not None and side.drop(index, packet):
            return
        side.wire.append(packet)

    def deliver(self) -> int:
        """Deliver what is on the wire both ways until it is quiet; returns packets delivered."""
        n = 0
        while self.a.wire or self.b.wire:
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                packets, src.wire = src.wire, []
                for p in packets:
                    dst.events += dst.assoc.feed(p, self.now)
                    n += 1
        return n

    def run(self, ms: int, step: int = 10) -> None:
        """Advance the clock by ``ms``, firing timers and delivering as it goes."""
        end = self.now + ms
        while self.now < end:
            self.deliver()
            self.now += step
            for side in (self.a, self.b):
                t = side.assoc.next_timeout_ms()
                if t is not None and t <= self.now:
                    side.events += side.assoc.handle_timeout(self.now)
        self.deliver()

    def messages(self, side: Side, stream: int | None = None) -> list[bytes]:
        return [e.data for e in side.events if isinstance(e, MessageReceived) and (stream is None or e.stream == stream)]

    def connect(self, both: bool = False) -> None:
        self.a.assoc.connect(self.now)
        if both:
            self.b.assoc.connect(self.now)
        self.deliver()
