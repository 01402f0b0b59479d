"""levelchat.web.parse_json: the one safe JSON parser for HTTP bodies and WebSocket frames."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from levelchat.errors import ApiError
from levelchat.web import MAX_JSON_DEPTH, parse_json


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, {"b": "[[[[{{{{"}]}', {"a": [1, {"b": "[[[[{{{{"}]}),  # brackets in strings do not nest
        ('"\\"[[["', '"[[['),
        (b'{"x": "\xc3\xa9"}', {"x": "\u00e9"}),
        ("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)),
        ("1e400", float("inf")),  # a number, however large: range checks are the caller's
    ],
)
def test_accepts(text: str | bytes, value: Any) -> None:
    assert parse_json(text, max_bytes=1 << 20) == value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        ("[" * 200_000, "nested deeper"),  # was a RecursionError: a 500
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested deeper"),
        ("{", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        ("[Infinity]", "Infinity"),
        ("9" * 5000, "not valid JSON"),  # past Python's digit limit
        (b"\xff{}", "not UTF-8"),
        ("x" * 70_000, "larger than"),
        ("\u00e9" * 40_000, "larger than"),  # 80,000 bytes in UTF-8
    ],
)
def test_refuses(text: str | bytes, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_json(text, max_bytes=65_536 if len(text) < 100_000 else 1 << 20)
    assert info.value.code == "bad_request" and fragment in info.value.detail


def test_depth_and_size_are_parameters() -> None:
    assert parse_json("[[1]]", 2) == [[1]]
    with pytest.raises(ApiError):
        parse_json("[[[1]]]", 2)
    with pytest.raises(ApiError):
        parse_json('{"a": 1}', MAX_JSON_DEPTH, 4)


def test_unterminated_strings_are_linear() -> None:
    """Many escaped quotes in an unterminated string: the depth scan stays one pass."""
    text = '"' + '\\"' * 30_000
    t0 = time.perf_counter()
    with pytest.raises(ApiError):
        parse_json(text)
    assert time.perf_counter() - t0 < 1.0
