"""The public error catalogue as data, and the one function that maps an error to HTTP.

Every code here is on ``shared/error-reference.txt`` with the status it lists there; a code
that is not here cannot be raised (``ApiError`` refuses it).  Codes marked "SDK only" have no
HTTP status of their own: a server that must refuse with one picks the nearest fitting status
(400, 406 or 415) and keeps the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TYPE_BASE = "https://levelchat.io/errors/"
SDK_ONLY_STATUSES = frozenset({400, 406, 415})  # contracts.md: "the nearest fitting status (400/406/415)"
#: Codes that tell the client to come back later without being marked retryable in the catalogue.
DEFAULT_RETRY_AFTER_S: Mapping[str, int] = {"room_check_failed": 30, "service_unavailable": 30}


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    status: int | None  # None: "SDK only"
    title: str
    retryable: bool
    category: str


def _e(code: str, status: int | None, title: str, retryable: bool, category: str) -> ErrorSpec:
    return ErrorSpec(code, status, title, retryable, category)


_ENTRIES = (
    _e('unauthorized', 401, 'Unauthorized', False, 'auth'),
    _e('token/invalid', 401, 'Token is invalid', False, 'auth'),
    _e('token/expired', 401, 'Token has expired', True, 'auth'),
    _e('token/unauthorized', 401, 'Token lacks required scopes', False, 'auth'),
    _e('forbidden_workspace_role', 403, 'Workspace role too low', False, 'auth'),
    _e('forbidden', 403, 'Forbidden', False, 'auth'),
    _e('invite_required', 403, 'Invite required for SSO', False, 'auth'),
    _e('sso_config_missing', 503, 'SSO not configured', False, 'auth'),
    _e('sso_discovery_failed', 502, 'OIDC discovery failed', True, 'auth'),
    _e('sso_email_domain_denied', 403, 'Email domain not allowed by workspace', False, 'auth'),
    _e('sso_id_token_invalid', 401, 'SSO id_token invalid', False, 'auth'),
    _e('sso_state_invalid', 400, 'OIDC state mismatch', False, 'auth'),
    _e('sso_token_exchange_failed', 502, 'Authorization code exchange failed', True, 'auth'),
    _e('sso_user_not_provisioned', 403, 'SSO user not provisioned', False, 'auth'),
    _e('email_unverified', 403, 'Email not verified', False, 'auth'),
    _e('bad_request', 400, 'Malformed request', False, 'validation'),
    _e('config/invalid', 400, 'SDK configuration invalid', False, 'validation'),
    _e('config/missing-api-key', 400, 'SDK missing API key', False, 'validation'),
    _e('invalid_identity', 400, 'Identity malformed', False, 'validation'),
    _e('invalid_role', 400, 'Role not recognized', False, 'validation'),
    _e('invalid_room', 400, 'Room ID malformed', False, 'validation'),
    _e('unknown_tier', 400, 'Billing tier not recognized', False, 'validation'),
    _e('rate_limited', 429, 'Rate limited', True, 'rate_limit'),
    _e('network/rate-limited', 429, 'SDK saw 429 from API', True, 'rate_limit'),
    _e('quota_exceeded', 402, 'Billing quota exhausted', False, 'rate_limit'),
    _e('room/cap-denied', 429, 'Room participant cap reached', False, 'rate_limit'),
    _e('not_found', 404, 'Resource not found', False, 'not_found'),
    _e('room_not_found', 404, 'Room does not exist', False, 'not_found'),
    _e('not_a_member', 404, 'User not a member of workspace', False, 'not_found'),
    _e('recording_not_ready', 404, 'Recording still processing', True, 'not_found'),
    _e('conflict', 409, 'State conflict', False, 'conflict'),
    _e('external_id_taken', 409, 'external_id already in use', False, 'conflict'),
    _e('slug_taken', 409, 'Workspace slug already in use', False, 'conflict'),
    _e('node_exists', 409, 'SFU node already registered', False, 'conflict'),
    _e('invitation_invalid', 409, 'Invitation invalid', False, 'conflict'),
    _e('internal_error', 500, 'Internal server error', True, 'server'),
    _e('bad_gateway', 502, 'Bad gateway', True, 'server'),
    _e('upstream_unreachable', 502, 'Upstream service unreachable', True, 'server'),
    _e('upstream_request_failed', 502, 'Upstream returned malformed response', True, 'server'),
    _e('service_unavailable', 503, 'Service unavailable', True, 'server'),
    _e('room_check_failed', 503, 'Room health check failed', True, 'server'),
    _e('onprem_disabled', 503, 'Feature disabled in self-hosted', False, 'server'),
    _e('auth_unconfigured', 503, 'Auth service URL not set', False, 'server'),
    _e('scim_store_unconfigured', 503, 'SCIM store unavailable', False, 'server'),
    _e('sso_store_unconfigured', 503, 'SSO store unavailable', False, 'server'),
    _e('contact_sales_only', 403, 'Feature requires sales contact', False, 'business'),
    _e('billing_unconfigured', 503, 'Billing not configured', False, 'business'),
    _e('license_revoked', 403, 'License revoked', False, 'business'),
    _e('signup_disabled', 403, 'Signups closed', False, 'business'),
    _e('no_valid_recipients', 400, 'Webhook has no valid endpoints', False, 'business'),
    _e('node_revoked', 410, 'SFU node revoked', False, 'business'),
    _e('parent_revoked', 410, 'Parent resource revoked', False, 'business'),
    _e('media/permission-denied', None, 'Media permission denied', False, 'media'),
    _e('media/device-not-found', None, 'Media device not found', False, 'media'),
    _e('media/unsupported', None, 'Media constraint unsupported', False, 'media'),
    _e('media/constraint-not-satisfied', None, 'Constraint not satisfied', False, 'media'),
    _e('signaling/connect-failed', None, 'Signaling connection failed', True, 'signaling'),
    _e('signaling/closed', None, 'Signaling connection closed', True, 'signaling'),
    _e('signaling/timeout', None, 'Signaling frame timeout', True, 'signaling'),
    _e('signaling/protocol', None, 'Signaling protocol error', False, 'signaling'),
    _e('signaling/rpc-error', None, 'Signaling RPC failed', True, 'signaling'),
    _e('signaling/rpc-timeout', None, 'Signaling RPC timed out', True, 'signaling'),
    _e('transport/ice-failed', None, 'ICE negotiation failed', True, 'transport'),
    _e('transport/dtls-failed', None, 'DTLS handshake failed', True, 'transport'),
    _e('transport/unsupported', None, 'WebRTC not supported', False, 'transport'),
    _e('codec/unsupported', None, 'Codec not supported', False, 'transport'),
    _e('recording/not-permitted', None, 'Recording not permitted', False, 'recording'),
    _e('recording/backend-failed', None, 'Recording backend failed', True, 'recording'),
    _e('encryption/key-missing', None, 'E2EE key missing', False, 'e2ee'),
    _e('encryption/unsupported', None, 'E2EE not supported', False, 'e2ee'),
)

CATALOGUE: Mapping[str, ErrorSpec] = {e.code: e for e in _ENTRIES}


class ApiError(Exception):
    """An error the system returns; ``code`` must be in the catalogue.

    ``status`` may only be given for "SDK only" codes (which have no status of their own).
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after_s: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        spec = CATALOGUE.get(code)
        if spec is None:
            raise ValueError(f"error code {code!r} is not in the catalogue")
        if spec.status is not None:
            if status is not None and status != spec.status:
                raise ValueError(f"{code} has status {spec.status}, not {status}")
            status = spec.status
        elif status is None:
            status = 400
        elif status not in SDK_ONLY_STATUSES:
            raise ValueError(f"SDK-only code {code} may only be sent as 400/406/415")
        super().__init__(f"{code}: {detail}")
        self.spec = spec
        self.code = code
        self.status: int = status
        self.detail = detail
        if retry_after_s is None:
            retry_after_s = DEFAULT_RETRY_AFTER_S.get(code)
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})


@dataclass(frozen=True)
class HttpProblem:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def to_http(err: ApiError, *, instance: str, request_id: str) -> HttpProblem:
    """The one mapping from an error to an RFC 7807 response."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + err.code,
        "title": err.spec.title,
        "status": err.status,
        "detail": err.detail,
        "code": err.code,
        "request_id": request_id,
        "instance": instance,
    }
    body.update({k: v for k, v in err.extra.items() if k not in body})
    headers = {"Content-Type": "application/problem+json", "X-Request-Id": request_id}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    headers.update(err.headers)
    return HttpProblem(err.status, body, headers)
