"""The signaling socket's frame-level guards on their own: the mask check over a byte stream cut
anywhere, and the depth-bounded JSON-RPC parse (no recursion, no RecursionError)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from aiohttp import WSCloseCode

from levelchat.web import json_too_deep
from sfu.api.jsonrpc import MAX_DEPTH, Request, RpcCode, RpcError, reply_id
from sfu.api.ws_mask import MaskCheck
from tests.e2e.ws_support import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, frame


class Recorder:
    """Stands in for aiohttp's parser behind the check: keeps what it is given."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


def _feed(check: MaskCheck, stream: bytes, rng: random.Random) -> list[tuple[bool, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        step = rng.choice((1, 2, 3, 7, 100, 5000, 70_000))
        out.append(check.feed_data(stream[pos : pos + step]))
        pos += step
    return out


@pytest.mark.parametrize("seed", range(5))
def test_masked_frames_pass_through_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    sizes = (0, 1, 125, 126, 127, 65535, 65536, 70_000)
    stream = b"".join(frame(rng.choice((OP_TEXT, OP_BINARY, OP_PING)), bytes(n)) for n in sizes for _ in range(2))
    failures: list[Any] = []
    inner = Recorder()
    check = MaskCheck(inner, failures.append)
    results = _feed(check, stream, rng)
    assert not failures and all(r == (False, b"") for r in results)
    assert inner.data == stream


@pytest.mark.parametrize("size", [0, 10, 126, 70_000])
def test_the_first_unmasked_frame_fails_the_socket(size: int) -> None:
    rng = random.Random(size)
    good = frame(OP_TEXT, b"x" * 300) + frame(OP_CLOSE, b"\x03\xe8", mask=True)
    bad = frame(OP_TEXT, b"y" * size, mask=False)
    failures: list[Any] = []
    inner = Recorder()
    check = MaskCheck(inner, failures.append)
    results = _feed(check, good + bad + frame(OP_TEXT, b"z"), rng)
    assert len(failures) == 1 and failures[0].code == WSCloseCode.PROTOCOL_ERROR
    assert (True, b"") in results
    assert inner.data == good or (len(inner.data) == len(good) + 1 and inner.data.startswith(good)), (
        len(inner.data), len(good)
    )  # the frames before it, and at most the first byte of its header (in an earlier chunk)
    assert check.feed_data(frame(OP_TEXT, b"later")) == (True, b"")


def test_discard_reads_and_throws_away() -> None:
    inner = Recorder()
    check = MaskCheck(inner, lambda exc: None)
    check.discard = True
    assert check.feed_data(frame(OP_TEXT, b"x", mask=False)) == (False, b"")
    assert inner.data == b""


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("[]", False),
        ("[" * MAX_DEPTH + "]" * MAX_DEPTH, False),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), True),
        ("[" * 100_000, True),
        ('{"a":' * 40 + "1" + "}" * 40, True),
        ('["' + "[" * 1000 + '"]', False),  # inside a string
        ('["\\"' + "[" * 1000 + '"]', False),  # after an escaped quote, still inside
        ("[1]," * 1000, False),  # many, but side by side
    ],
)
def test_depth_is_found_without_recursion(text: str, deep: bool) -> None:
    assert json_too_deep(text, MAX_DEPTH) is deep


def test_deep_frames_are_parse_errors_not_crashes() -> None:
    for text in ("[" * 100_000, '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":' + "[" * 50_000 + "}}"):
        with pytest.raises(RpcError) as info:
            Request.parse(text)
        assert info.value.rpc_code is RpcCode.PARSE_ERROR and info.value.error.code == "bad_request"
        assert reply_id(text) == (True, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"jsonrpc": "2.0", "method": "ping"}, (False, None)),  # a notification: no reply at all
        ({"jsonrpc": "2.0", "method": "ping", "id": None, "params": []}, (False, None)),
        ({"jsonrpc": "2.0", "method": "ping", "id": 3, "params": []}, (True, 3)),
        ({"jsonrpc": "2.0", "method": "ping", "id": 2**60}, (True, None)),  # beyond ±2^53
        ({"jsonrpc": "2.0", "method": "ping", "id": "i" * 257}, (True, None)),
        ({"jsonrpc": "2.0", "method": "ping", "id": True}, (True, None)),
        ({"method": "ping"}, (True, None)),  # not JSON-RPC 2.0: answered with id null
        ([1], (True, None)),
    ],
)
def test_who_gets_a_reply(body: Any, expected: tuple[bool, Any]) -> None:
    assert reply_id(json.dumps(body)) == expected


def test_ids_and_method_names_are_bounded() -> None:
    with pytest.raises(RpcError) as info:
        Request.parse(json.dumps({"jsonrpc": "2.0", "id": "i" * 257, "method": "ping"}))
    assert info.value.rpc_code is RpcCode.INVALID_REQUEST
    with pytest.raises(RpcError) as info:
        Request.parse(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m" * 65}))
    assert info.value.rpc_code is RpcCode.METHOD_NOT_FOUND and len(str(info.value)) < 200
    assert Request.parse(json.dumps({"jsonrpc": "2.0", "id": -(2**53), "method": "ping"})).id == -(2**53)
