"""JSON-RPC 2.0 frames for the signaling WebSocket (``docs/signaling.md``).

Every error carries a catalogue problem in ``data`` (``levelchat.errors.to_http``'s body), as
``shared/design/contracts.md`` says: ``{"code": -32000, "message": <title>, "data": <problem>}``
for a refusal; the protocol-level JSON-RPC codes for frames that are not requests at all.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from levelchat.errors import ApiError, to_http
from levelchat.web import json_too_deep

MAX_FRAME_BYTES = 128 * 1024
#: deeper JSON is refused before it is parsed (the C decoder recurses per level)
MAX_DEPTH = 32
#: a request id longer than this (a string), or an integer beyond JSON's exact range, is refused
MAX_ID_CHARS = 256
MAX_ID_INT = 2**53
MAX_METHOD_CHARS = 64


class FrameTooDeep(ValueError):
    pass


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses (``ValueError``) frames nested deeper than ``MAX_DEPTH`` before
    decoding them, and text that is not UTF-8."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    if json_too_deep(text, MAX_DEPTH):
        raise FrameTooDeep(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:  # not reachable past the depth check; kept as a last guard
        raise FrameTooDeep(f"nested deeper than {MAX_DEPTH} levels") from None


def _valid_id(rid: object) -> bool:
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -MAX_ID_INT <= rid <= MAX_ID_INT
    return isinstance(rid, str) and len(rid) <= MAX_ID_CHARS


class RpcCode(enum.IntEnum):
    PARSE_ERROR = -32700  # not JSON
    INVALID_REQUEST = -32600  # JSON, but not a JSON-RPC 2.0 request
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    REFUSED = -32000  # the server refused: the problem in ``data`` says why


class RpcError(Exception):
    """A refusal to answer with: a catalogue error and the JSON-RPC code it travels under."""

    def __init__(self, rpc_code: RpcCode, error: ApiError) -> None:
        super().__init__(str(error))
        self.rpc_code = rpc_code
        self.error = error


@dataclass(frozen=True)
class Request:
    """A method call (``id`` set) or a client notification (``id`` None)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    id: int | str | None = None

    @classmethod
    def parse(cls, text: str | bytes) -> Request:
        """Raises ``RpcError`` naming what is wrong (with the id when it could be read)."""
        if len(text) > MAX_FRAME_BYTES:
            raise RpcError(
                RpcCode.INVALID_REQUEST, ApiError("bad_request", f"frame is larger than {MAX_FRAME_BYTES} bytes")
            )
        try:
            raw = loads(text)
        except ValueError as exc:
            raise RpcError(RpcCode.PARSE_ERROR, ApiError("bad_request", f"frame is not JSON: {exc}")) from None
        if not isinstance(raw, dict):
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", "frame must be a JSON object"))
        if raw.get("jsonrpc") != "2.0":
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", 'frame must say "jsonrpc": "2.0"'))
        method = raw.get("method")
        if not isinstance(method, str) or not method:
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", "frame has no method name"))
        if len(method) > MAX_METHOD_CHARS:
            raise RpcError(RpcCode.METHOD_NOT_FOUND, ApiError("bad_request", "unknown method (name too long)"))
        rid = raw.get("id")
        if rid is not None and not _valid_id(rid):
            raise RpcError(
                RpcCode.INVALID_REQUEST,
                ApiError("bad_request", f"id must be an integer within ±2^53 or a string of at most {MAX_ID_CHARS} characters"),
            )
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise RpcError(
                RpcCode.INVALID_PARAMS, ApiError("bad_request", "params must be an object (named parameters)")
            )
        return cls(method, params, rid)

    def __bytes__(self) -> bytes:
        frame: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method, "params": self.params}
        if self.id is not None:
            frame["id"] = self.id
        return json.dumps(frame).encode()


def reply_id(text: str | bytes) -> tuple[bool, int | str | None]:
    """For a frame that was refused: whether it gets an error reply, and the id to answer it with.

    A notification (a JSON-RPC 2.0 object with a method and no id, or a null one) never gets a
    reply (JSON-RPC 2.0 §4.1), not even an error; anything else does, with its id when it has a
    valid one, else ``null`` (§5).
    """
    try:
        raw = loads(text)
    except ValueError:
        return True, None
    if not isinstance(raw, dict):
        return True, None
    rid = raw.get("id")
    if rid is None and raw.get("jsonrpc") == "2.0" and isinstance(raw.get("method"), str):
        return False, None
    return True, rid if _valid_id(rid) else None


@dataclass(frozen=True)
class Response:
    id: int | str | None
    result: Any = None

    def __bytes__(self) -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": self.id, "result": self.result}).encode()


@dataclass(frozen=True)
class ErrorResponse:
    id: int | str | None
    code: int
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, rid: int | str | None, err: RpcError, *, instance: str, request_id: str) -> ErrorResponse:
        problem = to_http(err.error, instance=instance, request_id=request_id).body
        return cls(rid, int(err.rpc_code), err.error.spec.title, problem)

    def __bytes__(self) -> bytes:
        error = {"code": self.code, "message": self.message, "data": self.data}
        return json.dumps({"jsonrpc": "2.0", "id": self.id, "error": error}).encode()


def notification(method: str, params: dict[str, Any]) -> bytes:
    return bytes(Request(method, params))
