"""Operator commands: talk to a running control plane over HTTP with an admin token minted locally."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.config import DEV_KEY_ID, DEV_SECRET
from levelchat.tokens import ApiKey, mint

DEFAULT_URL = "http://127.0.0.1:7700"
ADMIN_SCOPES = ("node:admin", "room:admin", "room:create")
ADMIN_TTL_S = 300
ENV_URL = "LEVELCHAT_API_URL"
ENV_KEY = "LEVELCHAT_API_KEY"
ENV_SECRET = "LEVELCHAT_API_SECRET"
ENV_PROJECT = "LEVELCHAT_PROJECT"


@dataclass(frozen=True)
class ClientSettings:
    url: str
    key_id: str
    secret: str
    project: str
    timeout_s: float = 10.0

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None,
        key_id: str | None,
        secret: str | None,
        project: str | None,
        dev: bool,
        environ: Mapping[str, str],
    ) -> ClientSettings:
        key_id = key_id or environ.get(ENV_KEY) or (DEV_KEY_ID if dev else None)
        secret = secret or environ.get(ENV_SECRET) or (DEV_SECRET if dev else None)
        if not key_id or not secret:
            raise ValueError(f"no API key: give --api-key and --api-secret, set {ENV_KEY}/{ENV_SECRET}, or --dev")
        return cls(
            url=(url or environ.get(ENV_URL) or DEFAULT_URL).rstrip("/"),
            key_id=key_id,
            secret=secret,
            project=project or environ.get(ENV_PROJECT) or "levelchat",
        )

    def admin_token(self, now_s: float) -> str:
        return mint(
            ApiKey(self.key_id, self.secret),
            project=self.project,
            now_s=now_s,
            ttl_s=ADMIN_TTL_S,
            identity="operator",
            scopes=ADMIN_SCOPES,
        )


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def call(settings: ClientSettings, method: str, path: str, body: Mapping[str, Any] | None = None) -> Reply:
    """One request; transport failures become a local problem-shaped reply with status 0."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(settings.url + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + settings.admin_token(time.time()))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=settings.timeout_s) as resp:
            return Reply(resp.status, _decode(resp.read()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, _decode(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Reply(0, {"code": "upstream_unreachable", "detail": f"{settings.url}: {reason}"})


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw.decode("utf-8", "replace")}
