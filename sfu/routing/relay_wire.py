"""What the two ends of a relay tell each other about a room: its participants and their tracks.

Pure: JSON objects in and out (``parse``/``to_json``), precise ValueErrors for anything else.  The
control channel that carries them (ordered, reliable: a WebSocket between the workers) is the
node's business (``sfu.workers.relay``); what an end does with them is ``sfu.routing.relay``.

One message per change, in the order the changes happened at the sender:

- ``join``: a participant of the sender's is in the room (identity, sid, kind, name, metadata);
- ``publish``: one of its tracks crosses the relay on ``ssrc`` (the relay SSRC the sender chose,
  unique on the relay), with what the receiver needs to forward it as if it were published there:
  codecs with their payload types, header extension ids, the track's sid and muted flag;
- ``mute``, ``unpublish`` (by relay SSRC), ``leave``;
- ``data``: a data message for the far end's participants (as the sender's node relays it);
- ``need``: which of the far end's tracks someone here receives (the rest is not carried).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sfu.routing.track import TrackCodec

#: bounds of what one message may hold (a relay's far end is trusted, but a bug must not make an
#: end hold unbounded state)
MAX_CODECS = 16
MAX_EXT_IDS = 16
MAX_TEXT = 64 * 1024
MAX_ID = 256
MAX_NEEDS = 4096


class RelayOp(enum.Enum):
    JOIN = "join"
    LEAVE = "leave"
    PUBLISH = "publish"
    UNPUBLISH = "unpublish"
    MUTE = "mute"
    DATA = "data"
    #: the relay SSRCs of the tracks someone at the sender's end receives (all of them, each
    #: time): the others are not carried (``room`` and ``identity`` are "*")
    NEED = "need"


def _str(obj: dict[str, Any], key: str, *, max_len: int = MAX_ID, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and not optional):
        raise ValueError(f"{key}: a non-empty string is needed, got {value!r:.40}")
    if len(value) > max_len:
        raise ValueError(f"{key}: at most {max_len} characters, got {len(value)}")
    return value


def _req(obj: dict[str, Any], key: str, max_len: int = MAX_ID) -> str:
    value = _str(obj, key, max_len=max_len)
    assert value is not None
    return value


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key}: an integer from {lo} to {hi} is needed, got {value!r:.40}")
    return value


def _bool(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: true or false, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class RelayTrack:
    """A track as it crosses a relay."""

    ssrc: int  # the relay SSRC
    sid: str
    kind: str
    mid: str
    codecs: tuple[TrackCodec, ...]
    ext_ids: dict[str, int] = field(default_factory=dict)
    muted: bool = False
    #: the track as its publisher negotiated it (SDP level: codec parameters, feedback), which
    #: subscriber offers at the far end are built from; opaque here (the node's signaling reads it)
    description: dict[str, Any] | None = None

    @classmethod
    def parse(cls, obj: object) -> RelayTrack:
        if not isinstance(obj, dict):
            raise ValueError("track: an object is needed")
        kind = _req(obj, "kind")
        if kind not in ("audio", "video"):
            raise ValueError(f"track.kind: audio or video, got {kind!r:.40}")
        raw_codecs = obj.get("codecs")
        if not isinstance(raw_codecs, list) or not 1 <= len(raw_codecs) <= MAX_CODECS:
            raise ValueError(f"track.codecs: a list of 1 to {MAX_CODECS} codecs is needed")
        codecs = []
        for c in raw_codecs:
            if not isinstance(c, dict):
                raise ValueError("track.codecs[]: an object is needed")
            variant = c.get("variant", [])
            if not isinstance(variant, list) or len(variant) > 8 or not all(isinstance(v, str) for v in variant):
                raise ValueError("track.codecs[].variant: a list of up to 8 strings is needed")
            codecs.append(
                TrackCodec(_req(c, "name", 64), _int(c, "clock_rate", 1, 1_000_000), _int(c, "pt", 0, 127), tuple(variant))
            )
        raw_ext = obj.get("ext_ids", {})
        if not isinstance(raw_ext, dict) or len(raw_ext) > MAX_EXT_IDS:
            raise ValueError(f"track.ext_ids: an object of up to {MAX_EXT_IDS} ids is needed")
        ext_ids = {}
        for uri, ext_id in raw_ext.items():
            if not isinstance(ext_id, int) or isinstance(ext_id, bool) or not 1 <= ext_id <= 255 or len(uri) > MAX_ID:
                raise ValueError(f"track.ext_ids[{uri!r:.40}]: an id from 1 to 255 is needed")
            ext_ids[uri] = ext_id
        description = obj.get("description")
        if description is not None and not isinstance(description, dict):
            raise ValueError("track.description: an object is needed")
        return cls(
            ssrc=_int(obj, "ssrc", 1, 0xFFFFFFFF),
            sid=_req(obj, "sid"),
            kind=kind,
            mid=_req(obj, "mid", 32),
            codecs=tuple(codecs),
            ext_ids=ext_ids,
            muted=_bool(obj, "muted"),
            description=description,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ssrc": self.ssrc,
            "sid": self.sid,
            "kind": self.kind,
            "mid": self.mid,
            "codecs": [
                {"name": c.name, "clock_rate": c.clock_rate, "pt": c.payload_type, "variant": list(c.variant)}
                for c in self.codecs
            ],
            "ext_ids": dict(self.ext_ids),
            "muted": self.muted,
            **({"description": self.description} if self.description is not None else {}),
        }


@dataclass(frozen=True)
class RelayMessage:
    """One change in a room, from one end of a relay to the other."""

    op: RelayOp
    room: str
    identity: str
    #: join: the participant's sid, kind ("rtc", "whip", ...), name and metadata
    sid: str = ""
    kind: str = ""
    name: str | None = None
    metadata: str | None = None
    #: publish: the track
    track: RelayTrack | None = None
    #: unpublish, mute: the relay SSRC; mute: ``muted``
    ssrc: int = 0
    muted: bool = False
    #: data: the payload (the node's own JSON view of a data message)
    data: dict[str, Any] | None = None
    #: need: the relay SSRCs wanted
    ssrcs: tuple[int, ...] = ()

    @classmethod
    def parse(cls, obj: object) -> RelayMessage:
        if not isinstance(obj, dict):
            raise ValueError("a relay message is a JSON object")
        raw_op = obj.get("op")
        try:
            op = RelayOp(raw_op)
        except ValueError:
            raise ValueError(f"op: one of {', '.join(o.value for o in RelayOp)}, got {raw_op!r:.40}") from None
        room = _req(obj, "room")
        identity = _req(obj, "identity")
        if op is RelayOp.JOIN:
            return cls(
                op, room, identity, sid=_req(obj, "sid"), kind=_req(obj, "kind", 16),
                name=_str(obj, "name", max_len=MAX_TEXT, optional=True),
                metadata=_str(obj, "metadata", max_len=MAX_TEXT, optional=True),
            )
        if op is RelayOp.PUBLISH:
            return cls(op, room, identity, track=RelayTrack.parse(obj.get("track")))
        if op is RelayOp.UNPUBLISH:
            return cls(op, room, identity, ssrc=_int(obj, "ssrc", 1, 0xFFFFFFFF))
        if op is RelayOp.MUTE:
            return cls(op, room, identity, ssrc=_int(obj, "ssrc", 1, 0xFFFFFFFF), muted=_bool(obj, "muted"))
        if op is RelayOp.NEED:
            raw = obj.get("ssrcs")
            if not isinstance(raw, list) or len(raw) > MAX_NEEDS:
                raise ValueError(f"ssrcs: a list of up to {MAX_NEEDS} SSRCs is needed")
            for v in raw:
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 0xFFFFFFFF:
                    raise ValueError(f"ssrcs[]: an SSRC from 1 to 2^32-1 is needed, got {v!r:.40}")
            return cls(op, room, identity, ssrcs=tuple(raw))
        if op is RelayOp.DATA:
            data = obj.get("data")
            if not isinstance(data, dict):
                raise ValueError("data: an object is needed")
            return cls(op, room, identity, data=data)
        return cls(op, room, identity)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op.value, "room": self.room, "identity": self.identity}
        if self.op is RelayOp.JOIN:
            out.update(sid=self.sid, kind=self.kind, name=self.name, metadata=self.metadata)
        elif self.op is RelayOp.PUBLISH:
            assert self.track is not None
            out["track"] = self.track.to_json()
        elif self.op is RelayOp.UNPUBLISH:
            out["ssrc"] = self.ssrc
        elif self.op is RelayOp.MUTE:
            out.update(ssrc=self.ssrc, muted=self.muted)
        elif self.op is RelayOp.DATA:
            out["data"] = self.data
        elif self.op is RelayOp.NEED:
            out["ssrcs"] = list(self.ssrcs)
        return out
