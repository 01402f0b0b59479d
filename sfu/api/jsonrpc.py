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

MAX_FRAME_BYTES = 128 * 1024


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
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RpcError(RpcCode.PARSE_ERROR, ApiError("bad_request", f"frame is not JSON: {exc}")) from None
        if not isinstance(raw, dict):
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", "frame must be a JSON object"))
        if raw.get("jsonrpc") != "2.0":
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", 'frame must say "jsonrpc": "2.0"'))
        method = raw.get("method")
        if not isinstance(method, str) or not method:
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", "frame has no method name"))
        rid = raw.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
            raise RpcError(RpcCode.INVALID_REQUEST, ApiError("bad_request", "id must be a number or a string"))
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


def request_id_of(text: str | bytes) -> int | str | None:
    """The id of a frame that failed to parse, when it has a readable one."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    rid = raw.get("id") if isinstance(raw, dict) else None
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


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
