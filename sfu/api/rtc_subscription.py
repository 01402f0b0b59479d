"""Subscription control and dynacast over the signaling WebSocket (issue 12).

``update_subscription {track, enabled?, max_layer?, max_width?, max_height?, max_fps?}`` pauses,
resumes and bounds one track a participant receives: parsed into ``SubscriptionUpdate`` (a
``bad_request`` naming the field for anything else), applied by ``apply``.  A field left out
keeps its value; ``null`` lifts that bound.

``tell_publishers`` runs on the service's tick: each WebSocket publisher of a simulcast source is
told, with ``subscribed_layers {track, layers: [{rid, active}]}``, which of its layers anyone
needs whenever that changes (``sfu.routing.dynacast``); the SDK pauses the other encodings.  WHIP
publishers have no channel to be told on and keep sending every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from levelchat.errors import ApiError
from sfu.api.jsonrpc import RpcCode, RpcError
from sfu.routing.downtrack import DownTrack
from sfu.routing.dynacast import Dynacast, needed_rank
from sfu.routing.participant import Participant
from sfu.routing.simulcast import SimulcastGroup, groups_of

FIELDS = ("track", "enabled", "max_layer", "max_width", "max_height", "max_fps")
MAX_SID_LENGTH = 128
MAX_RID_LENGTH = 64
MAX_DIMENSION = 16_384
MAX_FPS = 240.0
#: ``max_layer`` for no bound (as ``null``), like ``set_layer``'s
AUTO = "auto"


def _bad(name: str, must: str) -> RpcError:
    return RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", f"params.{name} {must}"))


@dataclass(frozen=True, slots=True)
class SubscriptionUpdate:
    """What one ``update_subscription`` changes: only the fields in ``given``."""

    track: str
    given: frozenset[str]
    enabled: bool = True
    max_layer: str | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_fps: float | None = None

    @classmethod
    def parse(cls, params: object) -> SubscriptionUpdate:
        """Raises ``RpcError`` (``bad_request``) naming the first field that is wrong."""
        if not isinstance(params, dict):
            raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", "params must be an object"))
        unknown = sorted(str(k) for k in params if k not in FIELDS)
        if unknown:
            raise _bad(unknown[0], f"is not a field of update_subscription (its fields: {', '.join(FIELDS)})")
        track = params.get("track")
        if not isinstance(track, str) or not track or len(track) > MAX_SID_LENGTH:
            raise _bad("track", f"must be a non-empty string of at most {MAX_SID_LENGTH} characters")
        enabled = params.get("enabled", True)
        if not isinstance(enabled, bool):
            raise _bad("enabled", "must be true or false")
        layer = params.get("max_layer")
        if layer is not None and (not isinstance(layer, str) or not layer or len(layer) > MAX_RID_LENGTH):
            raise _bad("max_layer", f"must be a rid of the track's layers, {AUTO!r} or null")
        return cls(
            track=track,
            given=frozenset(k for k in params if k != "track"),
            enabled=enabled,
            max_layer=None if layer == AUTO else layer,
            max_width=_dimension(params, "max_width"),
            max_height=_dimension(params, "max_height"),
            max_fps=_fps(params),
        )


def _dimension(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        raise _bad(name, f"must be a whole number of pixels from 1 to {MAX_DIMENSION}, or null")
    return value


def _fps(params: dict[str, Any]) -> float | None:
    value = params.get("max_fps")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_FPS:
        raise _bad("max_fps", f"must be a number of frames per second above 0 and at most {MAX_FPS:g}, or null")
    return float(value)


def apply(participant: Participant, dt: DownTrack, update: SubscriptionUpdate, now_ms: int) -> dict[str, Any]:
    """Apply ``update`` to the participant's subscription ``dt``; returns its state: ``{track,
    enabled, max_layer, max_width, max_height, max_fps}`` and, for a simulcast source, its
    ``layers`` and ``current`` / ``switching_to`` as ``set_layer`` describes them.

    Pausing stops everything for this track at once (the allocator frees its budget); resuming
    starts again at a keyframe (asked for with a PLI), the sequence numbers going on."""
    source = dt.source
    group = source.group if source is not None else None
    given = update.given
    if "max_layer" in given and update.max_layer is not None:
        if group is None:
            raise _bad("max_layer", "applies to a simulcast track only: this one has no layers")
        if group.layer(update.max_layer) is None:
            raise _bad("max_layer", f"names no layer of this track; its layers are {', '.join(group.rids)}")
    prefs = dt.prefs
    if "max_layer" in given:
        dt.target_rid = update.max_layer
    if "max_width" in given:
        prefs.max_width = update.max_width
    if "max_height" in given:
        prefs.max_height = update.max_height
    if "max_fps" in given:
        prefs.max_fps = update.max_fps
    resumed = "enabled" in given and update.enabled and not prefs.enabled
    prefs.enabled = update.enabled if "enabled" in given else prefs.enabled
    dt.paused = (source is not None and source.muted) or dt.withheld
    if resumed and not dt.paused and source is not None:
        dt.unbind()  # as an unmute: continuous sequence numbers, a keyframe first (PLI)
        dt.bind(source, now_ms)
    elif group is not None and source is not None and source.group is group:
        group.attach(dt, now_ms)  # the bounds re-choose the layer (moving at its keyframe)
    return describe(dt, update.track, group)


def describe(dt: DownTrack, track_sid: str, group: SimulcastGroup | None) -> dict[str, Any]:
    out: dict[str, Any] = {"track": track_sid, "max_layer": dt.target_rid, **dt.prefs.describe()}
    if group is not None:
        view = group.describe(dt)
        out["layers"] = view["layers"]
        out["current"] = view["current"]
        out["switching_to"] = view["switching_to"]
    return out


class LayerTeller:
    """A WebSocket publisher's simulcast sources and what each one's publisher was last told."""

    __slots__ = ("_by_track",)

    def __init__(self) -> None:
        self._by_track: dict[str, Dynacast] = {}

    def decide(self, groups: Iterable[SimulcastGroup], now_ms: int) -> list[dict[str, Any]]:
        """The ``subscribed_layers`` notifications' params due now for ``groups``."""
        out: list[dict[str, Any]] = []
        live: set[str] = set()
        for group in groups:
            sid = group.primary.sid
            live.add(sid)
            dynacast = self._by_track.get(sid)
            if dynacast is None:
                dynacast = self._by_track[sid] = Dynacast()
            states = dynacast.decide(group.rids, needed_rank(group), now_ms)
            if states is not None:
                out.append({"track": sid, "layers": [s.describe() for s in states]})
        for gone in [sid for sid in self._by_track if sid not in live]:
            del self._by_track[gone]
        return out

    def tell(self, participant: Participant, notify: Callable[[str, dict[str, Any]], None], now_ms: int) -> None:
        """Send the participant's due ``subscribed_layers`` through ``notify(method, params)``."""
        for params in self.decide(groups_of(participant.tracks.values()), now_ms):
            notify("subscribed_layers", params)
