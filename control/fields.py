"""Parsing of the fields of control-plane request bodies: each parser takes decoded JSON and
returns the value or raises ``ValueError`` naming the field and its allowed range (answered
``bad_request``).  Every number has a range, every URL is one the control plane's client can use."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REGION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROOM_ID_RE = re.compile(r"[A-Za-z0-9-]{4,64}")
CODEC_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MAX_CODECS = 16
MAX_VERSION = 64
#: upper bound of every count in a request body (rooms, participants, capacities): far below what
#: the stores hold (SQLite INTEGER and Redis/Lua numbers are exact to 2**53) and above any real node
MAX_COUNT = 1_000_000_000
#: upper bound of a rate (packets per second) in a heartbeat
MAX_RATE = 1e12
MAX_EMPTY_TIMEOUT_S = 86400  # what nodes accept for a room's empty_timeout_s
INSTANCE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
URL_PATH_RE = re.compile(r"^[A-Za-z0-9._~/%-]*$")


def field_of(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise ValueError(f"field {name!r} is required")
        return None
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"field {name!r} must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"field {name!r} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def count(
    obj: Mapping[str, Any], name: str, *, required: bool, minimum: int = 0, default: int = 0, maximum: int = MAX_COUNT
) -> int:
    value = field_of(obj, name, int, required)
    if value is None:
        return default
    if not minimum <= value <= maximum:
        raise ValueError(f"field {name!r} must be an integer from {minimum} to {maximum}")
    return int(value)


def number(obj: Mapping[str, Any], name: str, *, maximum: float, default: float = 0.0) -> float:
    value = field_of(obj, name, (int, float), False)
    if value is None:
        return default
    # compare before converting: float() of a huge JSON integer raises OverflowError
    if value != value or not 0 <= value <= maximum:
        raise ValueError(f"field {name!r} must be a number from 0 to {maximum:g}")
    return float(value)


def parse_node_id(value: object) -> str:
    if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
        raise ValueError(f"node id {value!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return value


def parse_region(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not REGION_RE.fullmatch(value):
        raise ValueError(f"region {value!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def valid_host(host: str) -> bool:
    """A DNS name (labels of 1..63 letters, digits and inner hyphens; 253 characters at most), an
    IPv4 address or an IPv6 address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # digits only but not an IPv4 address (e.g. 999.1.1.1)
    return all(DNS_LABEL_RE.fullmatch(label) for label in labels)


def parse_http_url(value: object, name: str = "url") -> str:
    """An http(s) base URL the control plane's own client can call: a valid host (``valid_host``;
    IPv6 in brackets), an optional port 1..65535, an optional plain path; no user info, query,
    fragment, spaces or control characters."""
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string")
    bad = f"field {name!r} must be an http(s) URL with a valid host and port 1..65535, got {value[:300]!r}"
    if len(value) > 2048 or not value.isascii() or any(c.isspace() or ord(c) < 32 or c == "\\" for c in value):
        raise ValueError(bad)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(bad) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(bad)
    if "@" in parts.netloc:
        raise ValueError(f"field {name!r} must not carry user info")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"field {name!r} must not carry a query or fragment")
    host = parts.hostname or ""
    bracketed = parts.netloc.startswith("[")
    if bracketed != (":" in host) or not valid_host(host):
        raise ValueError(bad)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(bad) from None
    if port is not None and not 1 <= port <= 65535 or parts.netloc.endswith(":"):
        raise ValueError(bad)
    if not URL_PATH_RE.fullmatch(parts.path):
        raise ValueError(f"field {name!r} has an invalid path")
    return value.rstrip("/")


MAX_LIVE_ROOMS = 10_000


def parse_str_list(
    value: object, limit: int, pattern: re.Pattern[str], too_many: str, bad_item: str
) -> tuple[str, ...]:
    """An optional JSON list of strings matching ``pattern``; messages take ``{item!r}``."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(too_many)
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise ValueError(bad_item.format(item=item))
    return tuple(value)


def parse_instance(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not INSTANCE_RE.fullmatch(value):
        raise ValueError("field 'instance' must be 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def parse_room_participants(value: object) -> tuple[tuple[str, int], ...] | None:
    """``{"room-id": participants, ...}``: the rooms live on a node and how many joined each."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_LIVE_ROOMS:
        raise ValueError(f"field 'room_participants' must be an object of at most {MAX_LIVE_ROOMS} room ids")
    out: list[tuple[str, int]] = []
    for room, count in value.items():
        if not ROOM_ID_RE.fullmatch(room):
            raise ValueError(f"field 'room_participants' has an invalid room id: {room[:80]!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"field 'room_participants' must map room ids to integers from 0 to {MAX_COUNT}")
        out.append((room, count))
    return tuple(out)


def parse_live_rooms(value: object) -> tuple[str, ...]:
    rooms = parse_str_list(
        value,
        MAX_LIVE_ROOMS,
        ROOM_ID_RE,
        f"field 'rooms' must be a list of at most {MAX_LIVE_ROOMS} room ids",
        "field 'rooms' has an invalid room id: {item!r}",
    )
    return tuple(dict.fromkeys(rooms))


def parse_codecs(value: object) -> tuple[str, ...]:
    return parse_str_list(
        value,
        MAX_CODECS,
        CODEC_RE,
        f"field 'codecs' must be a list of at most {MAX_CODECS} codec names",
        "codec {item!r} must be 1 to 32 letters, digits, '.', '_' or '-'",
    )


