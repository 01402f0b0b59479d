"""A recorded simulcast source follows its best layer (issue 14).

A recording of a simulcast source records one layer at a time: the best active one by the
group's ranking (``SimulcastGroup.choose(None)``: by keyframe size, ``sfu/packet/frame_size.py``,
then the a=rid restrictions and packet rates; a layer that stops is left for the best active one
below).  At the start that is the best layer sending then; a better layer that starts later (a
publisher that sends its top layer once its estimate allows), or the current one stopping, moves
the recording at the new layer's next keyframe: a waiting tap on the new layer looks at each of
its packets (only while a move is pending) and, at the first packet of a keyframe, the recording
switches (``Recording.switch_layer``: the old layer's tap removed, a ``LAYER`` frame to the
recorder, which starts a new segment of the same file, the new layer's tap from this packet on).
The publisher is asked for that keyframe (throttled) until it comes.
"""

from __future__ import annotations

from collections.abc import Callable

from sfu.packet.codecs import is_keyframe
from sfu.packet.rtp import header_length
from sfu.routing.track import PublishedTrack

#: how often a recording looks for a better layer
FOLLOW_INTERVAL_MS = 500

Tap = Callable[[memoryview, int, int], None]
#: (source sid, the layer to record from this packet on, now_ms): installs the recording's tap
Switch = Callable[[str, PublishedTrack, int], None]


def layer_to_record(current: PublishedTrack) -> PublishedTrack:
    """The layer a recording that holds ``current`` should hold now: its group's best active
    layer (``current`` itself for a track that is no simulcast layer)."""
    group = current.group
    return current if group is None else group.choose(None)


class LayerFollower:
    """The pending moves of one recording's simulcast sources (``tracks``: source sid ->
    (index, the layer recorded now), the recording's own dict)."""

    def __init__(self, tracks: dict[str, tuple[int, PublishedTrack]], switch: Switch) -> None:
        self._tracks = tracks
        self._switch = switch
        #: source sid -> the layer whose next keyframe the recording moves to
        self.pending: dict[str, PublishedTrack] = {}
        self.switches = 0
        self._next_ms = 0

    def tick(self, now_ms: int) -> None:
        """Start, keep asking for, or cancel moves (every ``FOLLOW_INTERVAL_MS``)."""
        if now_ms < self._next_ms:
            return
        self._next_ms = now_ms + FOLLOW_INTERVAL_MS
        for sid, (_index, current) in list(self._tracks.items()):
            best = layer_to_record(current)
            waiting = self.pending.get(sid)
            if best is current:
                if waiting is not None:
                    self._cancel(sid)
                continue
            if waiting is not best:
                if waiting is not None:
                    self._cancel(sid)
                if best.tap is not None:
                    continue  # another recording holds it (a room has one at a time)
                best.tap = self._waiter(sid, best)
                self.pending[sid] = best
            best.request_keyframe(now_ms, wait=False)

    def _waiter(self, sid: str, layer: PublishedTrack) -> Tap:
        codecs = layer.codec_by_pt

        def tap(view: memoryview, length: int, now_ms: int) -> None:
            offset = header_length(view, length)
            if offset < 0:
                return
            name = codecs[view[1] & 0x7F]
            if name is None or not is_keyframe(name, view[offset:length]):
                return
            if self.pending.get(sid) is not layer:
                return
            del self.pending[sid]
            self.switches += 1
            self._switch(sid, layer, now_ms)
            recording = layer.tap
            if recording is not None and recording is not tap:
                recording(view, length, now_ms)  # the keyframe's first packet is the segment's first

        return tap

    def _cancel(self, sid: str) -> None:
        layer = self.pending.pop(sid)
        layer.tap = None

    def detach(self) -> None:
        """The recording ends: no more waiting taps."""
        for sid in list(self.pending):
            self._cancel(sid)
