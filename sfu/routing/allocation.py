"""Stream allocation in the forwarding path: each subscriber's bandwidth estimate (its
transport's ``TransportSender``) spent on its tracks by its ``Allocator``, and the decision applied
through ``SimulcastGroup`` (issue 12).

``AllocationLoop.run_due(now_ms)`` is called by the node every ``TICK_MS``; it takes the
subscribers whose turn has come (a deque ordered by due time: O(subscribers due), each due every
``INTERVAL_MS``), and for each one:

* ``sender.tick``: the estimator's feedback timeout; the estimate (None: the subscriber sent no
  transport-cc feedback nor REMB yet, or negotiated neither: it is left alone, no cap);
* the ``Allocator`` over its tracks (once every active simulcast layer's bitrate is measured:
  the first second of a layer goes by unmeasured, rather than on a guess): audio at its measured rate first, then each video track,
  a simulcast source offering its layers ranked as its group ranks them, with their measured
  bitrates (``measure``), bounded by the subscriber's own choice (``target_rid``: ``set_layer``,
  WHEP's layer route) as the contract says;
* the decision applied: a simulcast downtrack's ``alloc_rid`` caps its group's choice; a change
  re-chooses at once, the move itself happening at the new layer's keyframe (asked for with a
  PLI), up or down.  A track the allocator would pause for congestion gets its lowest layer
  instead (pausing video is left to subscription control), and a non-simulcast track is
  forwarded as it is;
* ``sfu_layer_switches_total{direction,reason}`` counted (a change of the layer a downtrack
  is headed for, up or down by rank), the estimate sampled into
  ``sfu_bwe_estimate_bps``;
* a probe when the next layer needs more than the estimate (``ProbeController.want``; the
  transport sends the cluster as RTX padding: ``PeerTransport.send_probe``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sfu.counters import CongestionCounters, SwitchDirection, SwitchReason
from sfu.routing.allocator import Allocation, Allocator, Bounds, LayerInfo, TrackInput
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant
from sfu.routing.track import PublishedTrack

#: each subscriber's allocation runs this often
INTERVAL_MS = 500
#: the node calls ``run_due`` this often
TICK_MS = 100
#: a track's bitrate is measured over windows of at least this long
RATE_WINDOW_MS = 1000

_REASONS = {"bandwidth": SwitchReason.BANDWIDTH, "subscriber": SwitchReason.SUBSCRIBER,
            "publisher": SwitchReason.PUBLISHER}


def measure(track: PublishedTrack, now_ms: int) -> int:
    """The track's received bitrate (bps) over the last window of ``RATE_WINDOW_MS`` or more,
    0 until one has passed (shared by every subscriber: measured once per window)."""
    if track.rate_ms < 0:
        track.rate_ms = now_ms
        track.rate_octets = track.octets
        return 0
    elapsed = now_ms - track.rate_ms
    if elapsed >= RATE_WINDOW_MS:
        track.rate_bps = (track.octets - track.rate_octets) * 8000 // elapsed
        track.rate_octets = track.octets
        track.rate_ms = now_ms
    return track.rate_bps


@dataclass(slots=True)
class _Subscriber:
    participant: Participant
    allocator: Allocator = field(default_factory=Allocator)
    due_ms: int = 0
    queued: bool = False
    last: Allocation | None = None


class AllocationLoop:
    """See the module docstring."""

    def __init__(self, counters: CongestionCounters, interval_ms: int = INTERVAL_MS) -> None:
        self.counters = counters
        self.interval_ms = interval_ms
        self._queue: deque[_Subscriber] = deque()
        self._by_sid: dict[str, _Subscriber] = {}

    def watch(self, participant: Participant, now_ms: int) -> None:
        """Allocate for ``participant`` from now on (when its subscriber transport estimates)."""
        if participant.sid in self._by_sid:
            return
        sub = _Subscriber(participant, due_ms=now_ms + self.interval_ms)
        self._by_sid[participant.sid] = sub
        self._queue.append(sub)

    def __len__(self) -> int:
        return len(self._by_sid)

    def run_due(self, now_ms: int) -> int:
        """Allocate for every subscriber whose turn has come; returns how many."""
        queue = self._queue
        done = 0
        while queue and queue[0].due_ms <= now_ms:
            sub = queue.popleft()
            if sub.participant.closed or sub.participant.subscriber is None:
                del self._by_sid[sub.participant.sid]
                continue
            self.allocate(sub, now_ms)
            sub.due_ms = now_ms + self.interval_ms
            queue.append(sub)
            done += 1
        return done

    def last(self, participant: Participant) -> Allocation | None:
        sub = self._by_sid.get(participant.sid)
        return sub.last if sub is not None else None

    def allocate(self, sub: _Subscriber, now_ms: int) -> None:
        transport = sub.participant.subscriber
        sender = transport.sender if transport is not None else None
        if transport is None or sender is None:
            return
        sender.tick(now_ms)
        estimate = sender.estimate_bps(now_ms)
        downtracks = {dt.sid: dt for dt in sub.participant.downtracks if dt.source is not None}
        inputs = [_input(dt, now_ms) for dt in downtracks.values()]  # measures the bitrates too
        if estimate is None:
            for dt in downtracks.values():
                self._cap(dt, None, now_ms)
            return
        self.counters.observe_estimate(estimate)
        if any(layer.active and not layer.bitrates for t in inputs if len(t.layers) > 1 for layer in t.layers):
            return  # a simulcast layer not measured yet (its first second): no choice on guesses
        allocation = sub.allocator.allocate(estimate, inputs, now_ms)
        sub.last = allocation
        for decision in allocation.tracks:
            dt = downtracks[decision.track]
            group = dt.source.group if dt.source is not None else None
            if group is None:
                continue
            if decision.paused == "subscriber":
                continue  # paused by its subscriber: forwards nothing; its layer is kept for the resume
            rid = decision.rid
            if rid is None:  # paused for congestion: the lowest layer instead
                rid = group.ranked[0].rid
            self._cap(dt, rid, now_ms, _REASONS.get(decision.reason or "", SwitchReason.BANDWIDTH))
        if not sender.feedback_seen or sender.padding is None:
            return  # a REMB-only subscriber (nothing would read a probe's outcome), or no RTX stream
        if any(dt.paused and dt.rtx_ssrc == sender.padding[0] for dt in downtracks.values()):
            return  # the padding stream is a paused track's: nothing at all goes out for it
        cluster = sender.probes.want(estimate, allocation.probe_target_bps, now_ms)
        if cluster is not None:
            transport.send_probe(cluster, now_ms)

    def _cap(self, dt: DownTrack, rid: str | None, now_ms: int,
             reason: SwitchReason = SwitchReason.BANDWIDTH) -> None:
        """Cap ``dt``'s layer at ``rid``; a change of the layer it is headed for is counted."""
        if dt.alloc_rid == rid:
            return
        dt.alloc_rid = rid
        group = dt.source.group if dt.source is not None else None
        if group is None:
            return
        before = dt.pending_source or dt.source
        group.attach(dt, now_ms)
        after = dt.pending_source or dt.source
        if before is not after and before in group.ranked and after in group.ranked:
            assert before is not None and after is not None
            up = group.ranked.index(after) > group.ranked.index(before)
            self.counters.switches[SwitchDirection.UP if up else SwitchDirection.DOWN][reason] += 1


def _input(dt: DownTrack, now_ms: int) -> TrackInput:
    source = dt.source
    assert source is not None
    if dt.kind == "audio":
        rate = measure(source, now_ms)
        return TrackInput(dt.sid, "audio", (LayerInfo(None, bitrates=(rate,) if rate else ()),), paused=dt.paused)
    group = source.group
    if group is None:
        rate = measure(source, now_ms)
        return TrackInput(dt.sid, "video", (LayerInfo(None, bitrates=(rate,) if rate else ()),), paused=dt.paused)
    # the group's ranking, carried as a size the allocator ranks by (layers' real sizes: issue 12)
    layers = tuple(
        LayerInfo(layer.rid, width=rank + 1, height=1, bitrates=(rate,) if (rate := measure(layer, now_ms)) else (),
                  active=group.is_active(layer))
        for rank, layer in enumerate(group.ranked)
    )
    bounds = Bounds(max_rid=group.bound_rid(dt), max_fps=dt.prefs.max_fps)  # set_layer, update_subscription
    return TrackInput(dt.sid, "video", layers, bounds=bounds, paused=dt.paused)
