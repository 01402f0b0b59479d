"""Small pure parts of a relay's routing (``sfu.routing.relay``): relay SSRCs, payload type maps,
loss figures."""

from __future__ import annotations

import random

from sfu.routing.participant import NODE_RTCP_SSRC
from sfu.routing.track import PublishedTrack


def lost_packets(track: PublishedTrack) -> int:
    """Packets of the track that never arrived (expected from its sequence numbers, minus received)."""
    s = track.stats
    return max(0, s.extended_max - s.base_seq + 1 - s.packets) if s.started else 0


class SsrcAllocator:
    """Relay SSRCs for exported tracks: random, unique among those in use, never 0 nor the node's
    own RTCP SSRC (a freed one may come again, as unlikely as any other)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.used: set[int] = set()

    def take(self) -> int:
        while True:
            ssrc = self._rng.randrange(1, 0x1_0000_0000)
            if ssrc not in self.used and ssrc != NODE_RTCP_SSRC:
                self.used.add(ssrc)
                return ssrc

    def free(self, ssrc: int) -> None:
        self.used.discard(ssrc)


def identity_payload_types(track: PublishedTrack) -> dict[str, int]:
    """A downtrack payload type map that keeps the publisher's payload types."""
    out: dict[str, int] = {}
    for codec in track.codecs:
        for key in codec.keys:
            out.setdefault(key.lower(), codec.payload_type)
    return out
