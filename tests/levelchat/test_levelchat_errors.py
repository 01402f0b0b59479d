"""levelchat.errors: ApiError's status rules and the one mapping to an RFC 7807 response."""

from __future__ import annotations

from typing import Any

import pytest

from levelchat.errors import CATALOGUE, SDK_ONLY_STATUSES, TYPE_BASE, ApiError, to_http

SDK_ONLY = sorted(code for code, spec in CATALOGUE.items() if spec.status is None)
WITH_STATUS = sorted(code for code, spec in CATALOGUE.items() if spec.status is not None)


@pytest.mark.parametrize("code", WITH_STATUS)
def test_every_code_with_a_status_maps_to_it(code: str) -> None:
    spec = CATALOGUE[code]
    err = ApiError(code, "why")
    p = to_http(err, instance="/x", request_id="req_1")
    assert p.status == spec.status == p.body["status"]
    assert p.body["title"] == spec.title
    assert p.body["type"] == TYPE_BASE + code
    # the status of its own is accepted when repeated, and any other is refused
    assert ApiError(code, "why", status=spec.status).status == spec.status
    other = 418 if spec.status != 418 else 400
    with pytest.raises(ValueError, match=f"{code} has status {spec.status}"):
        ApiError(code, "why", status=other)


@pytest.mark.parametrize("code", SDK_ONLY)
def test_sdk_only_codes_take_a_fitting_status(code: str) -> None:
    assert ApiError(code, "why").status == 400
    for status in sorted(SDK_ONLY_STATUSES):
        assert to_http(ApiError(code, "why", status=status), instance="/", request_id="r").status == status
    for status in (200, 401, 404, 409, 429, 500, 503):
        with pytest.raises(ValueError, match="SDK-only"):
            ApiError(code, "why", status=status)


@pytest.mark.parametrize("code", ["", "nope", "Unauthorized", "codec/Unsupported", "bad request"])
def test_codes_outside_the_catalogue_cannot_be_raised(code: str) -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        ApiError(code, "why")


def test_problem_body_and_headers() -> None:
    err = ApiError("room/cap-denied", "room 'demo-1' is at its cap of 8 participants")
    p = to_http(err, instance="/whip/demo-1", request_id="req_abc")
    assert p.body == {
        "type": "https://levelchat.io/errors/room/cap-denied",
        "title": "Room participant cap reached",
        "status": 429,
        "detail": "room 'demo-1' is at its cap of 8 participants",
        "code": "room/cap-denied",
        "request_id": "req_abc",
        "instance": "/whip/demo-1",
    }
    assert p.headers == {"Content-Type": "application/problem+json", "X-Request-Id": "req_abc"}


HEADER_CASES: list[tuple[str, dict[str, Any], dict[str, str | None]]] = [
    # (code, ApiError kwargs, expected header values; None = absent)
    ("room_check_failed", {}, {"Retry-After": "30"}),
    ("service_unavailable", {}, {"Retry-After": "30"}),
    ("room_check_failed", {"retry_after_s": 5}, {"Retry-After": "5"}),
    ("service_unavailable", {"retry_after_s": 0}, {"Retry-After": "0"}),
    ("rate_limited", {"retry_after_s": 7, "headers": {"X-RateLimit-Reset": "1700000007"}},
     {"Retry-After": "7", "X-RateLimit-Reset": "1700000007"}),
    ("rate_limited", {}, {"Retry-After": None, "X-RateLimit-Reset": None}),
    ("token/expired", {}, {"Retry-After": None}),
    ("internal_error", {}, {"Retry-After": None}),
    ("bad_request", {"headers": {"Allow": "POST, DELETE"}}, {"Allow": "POST, DELETE", "Retry-After": None}),
]


@pytest.mark.parametrize(("code", "kwargs", "expected"), HEADER_CASES)
def test_headers(code: str, kwargs: dict[str, Any], expected: dict[str, str | None]) -> None:
    p = to_http(ApiError(code, "why", **kwargs), instance="/", request_id="req_h")
    assert p.headers["X-Request-Id"] == "req_h"
    assert p.headers["Content-Type"] == "application/problem+json"
    for name, value in expected.items():
        assert p.headers.get(name) == value, name


def test_extra_members_never_override_the_envelope() -> None:
    err = ApiError(
        "codec/unsupported",
        "no VP8",
        status=406,
        extra={"allowed": ["opus"], "code": "forged", "status": 200, "type": "x", "request_id": "y"},
    )
    body = to_http(err, instance="/whip/r1", request_id="req_e").body
    assert body["allowed"] == ["opus"]
    assert (body["code"], body["status"], body["type"], body["request_id"]) == (
        "codec/unsupported",
        406,
        TYPE_BASE + "codec/unsupported",
        "req_e",
    )


def test_error_keeps_its_parts() -> None:
    err = ApiError("not_found", "no session 'x'", extra={"session": "x"})
    assert str(err) == "not_found: no session 'x'"
    assert (err.code, err.status, err.detail, err.retry_after_s) == ("not_found", 404, "no session 'x'", None)
    assert err.spec is CATALOGUE["not_found"]
    assert err.extra == {"session": "x"} and err.headers == {}
