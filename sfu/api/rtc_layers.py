"""Simulcast over the signaling WebSocket: a source's layers and the ``set_layer`` method.

A simulcast publisher's section is one track for everyone else (its group's primary layer, whose
sid is announced with ``"layers"``); what a subscriber receives of it is chosen per subscription
with ``set_layer {track, layer}`` (a rid, or ``"auto"`` for the best layer being sent).
"""

from __future__ import annotations

from typing import Any

from levelchat.errors import ApiError
from sfu import clock
from sfu.api.jsonrpc import RpcCode, RpcError
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant
from sfu.routing.router import Router
from sfu.routing.track import PublishedTrack

AUTO = "auto"
MAX_RID_LENGTH = 32


def layers_of(track: PublishedTrack) -> list[PublishedTrack]:
    """Every layer of ``track``'s simulcast source (the primary first), or just ``track``."""
    group = track.group
    if group is None:
        return [track]
    return [group.primary, *(layer for layer in group.layers if layer is not group.primary)]


def _param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_RID_LENGTH * 2:
        raise RpcError(
            RpcCode.INVALID_PARAMS, ApiError("bad_request", f"params.{name} must be a non-empty string")
        )
    return value


def choose_layer(
    router: Router, participant: Participant, downtracks: dict[str, DownTrack], params: dict[str, Any]
) -> dict[str, Any]:
    """``set_layer {track, layer}``: the subscription of ``track`` (a sid from ``offer``) receives
    layer ``layer`` (a rid, or ``"auto"``) from that layer's next keyframe.

    Result: ``{track, layers: [{rid, active}] low to high, target, current, switching_to}``.
    Errors: ``not_found`` when the participant does not receive that track, ``bad_request`` when
    it is not simulcast or has no such layer."""
    track_sid = _param(params, "track")
    layer = _param(params, "layer")
    dt = downtracks.get(track_sid)
    if dt is None or dt not in participant.downtracks:
        raise ApiError("not_found", f"you receive no track {track_sid!r}")
    rid = None if layer == AUTO else layer
    result = router.set_layer(participant, dt, rid, clock.now_ms())
    return {"track": track_sid, **result}
