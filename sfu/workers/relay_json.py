"""What the workers' relays say as JSON besides room messages: the front's setup, the channel's
proof, a room's policy and a track's negotiated description (``sfu.workers.relay`` uses them)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sfu.routing.rooms import RoomPolicy
from sfu.signaling import sdp
from sfu.signaling.codecs import CodecParams, MediaKind
from sfu.transport.relay import RELAY_SECRET_BYTES


def channel_proof(secret: bytes, relay_id: str) -> str:
    return hmac.new(secret, b"relay-ws " + relay_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RelaySetup:
    relay_id: str
    secret: bytes
    local: str
    remote: str
    peer_host: str
    peer_port: int
    peer_socket: str
    dial: bool

    @classmethod
    def parse(cls, body: Any) -> RelaySetup:
        if not isinstance(body, dict):
            raise ValueError("a relay setup is a JSON object")
        try:
            secret = bytes.fromhex(str(body.get("secret", "")))
        except ValueError:
            raise ValueError("secret: hex") from None
        if len(secret) != RELAY_SECRET_BYTES:
            raise ValueError(f"secret: {RELAY_SECRET_BYTES} bytes")
        port = body.get("peer_port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("peer_port: 1 to 65535")
        for key in ("relay_id", "local", "remote", "peer_host", "peer_socket"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ValueError(f"{key}: a non-empty string")
        return cls(
            body["relay_id"], secret, body["local"], body["remote"], body["peer_host"], port, body["peer_socket"],
            bool(body.get("dial")),
        )


def policy_json(policy: RoomPolicy) -> dict[str, Any]:
    return {
        "max_participants": policy.max_participants,
        "codecs": list(policy.codecs),
        "empty_timeout_s": policy.empty_timeout_s,
        "recording": policy.recording,
    }


def parse_policy(obj: object) -> RoomPolicy:
    """``policy_json``'s JSON back; ValueError for anything else."""
    if not isinstance(obj, dict):
        raise ValueError("policy: an object is needed")
    cap, codecs, empty, recording = (obj.get(k) for k in ("max_participants", "codecs", "empty_timeout_s", "recording"))
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ValueError("policy.max_participants: an integer >= 1")
    if not isinstance(codecs, list) or len(codecs) > 32 or not all(isinstance(c, str) for c in codecs):
        raise ValueError("policy.codecs: a list of up to 32 names")
    if not isinstance(empty, int) or isinstance(empty, bool) or empty < 0:
        raise ValueError("policy.empty_timeout_s: an integer >= 0")
    if not isinstance(recording, bool):
        raise ValueError("policy.recording: true or false")
    return RoomPolicy(max_participants=cap, codecs=tuple(codecs), empty_timeout_s=empty, recording=recording)


def describe(d: sdp.TrackDescription) -> dict[str, Any]:
    """A track description as JSON (the far end's ``undescribe`` reads it)."""
    return {
        "track_id": d.track_id,
        "kind": d.kind.value,
        "stream_id": d.stream_id,
        "codecs": [
            {"pt": c.pt, "name": c.name, "clock_rate": c.clock_rate, "channels": c.channels, "fmtp": dict(c.fmtp),
             "rtcp_fb": list(c.rtcp_fb), "rtx_pt": c.rtx_pt}
            for c in d.codecs
        ],
        "header_extensions": dict(d.header_extensions),
    }


def undescribe(obj: dict[str, Any]) -> sdp.TrackDescription:
    """``describe``'s JSON back; ValueError for anything else."""
    try:
        codecs = tuple(
            CodecParams(
                pt=int(c["pt"]), name=str(c["name"]), clock_rate=int(c["clock_rate"]),
                channels=None if c.get("channels") is None else int(c["channels"]),
                fmtp={str(k): str(v) for k, v in dict(c.get("fmtp", {})).items()},
                rtcp_fb=tuple(str(f) for f in c.get("rtcp_fb", [])),
                rtx_pt=None if c.get("rtx_pt") is None else int(c["rtx_pt"]),
            )
            for c in obj["codecs"][:32]
        )
        return sdp.TrackDescription(
            track_id=str(obj["track_id"]), kind=MediaKind(obj["kind"]), stream_id=str(obj["stream_id"]),
            codecs=codecs, header_extensions={str(k): int(v) for k, v in dict(obj.get("header_extensions", {})).items()},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"track description: {exc!r:.80}") from None


def new_secret() -> str:
    return secrets.token_bytes(RELAY_SECRET_BYTES).hex()
