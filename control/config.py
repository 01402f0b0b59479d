"""Control-plane configuration: defaults < ``--dev`` preset < TOML file < ``LEVELCHAT_CONTROL_*`` < flags.

Unknown keys (in the file or as ``LEVELCHAT_CONTROL_*`` variables) are refused with a message that
names them; ``ControlConfig.validate()`` runs before the server starts.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from control.store import StoreKind, StoreUrl
from levelchat.config import build
from levelchat.httpserver import HttpConfig
from levelchat.webhooks.model import WebhookConfig, WebhookEndpoint

ENV_PREFIX = "LEVELCHAT_CONTROL_"
DEV_KEY_ID = "devkey"
DEV_SECRET = "secret"
MIN_SECRET_LEN = 32  # outside dev mode (RFC 7518 3.2: an HS256 key of at least 256 bits)


@dataclass(frozen=True)
class ControlConfig(HttpConfig, WebhookConfig):
    host: str = "127.0.0.1"
    port: int = 7700
    api_keys: Mapping[str, str] = field(default_factory=dict)  # kid -> HS256 secret
    project: str = "levelchat"
    store: str = "sqlite:///levelchat-control.db"
    lease_seconds: float = 10.0
    heartbeat_interval_seconds: float = 2.0  # advertised to nodes
    node_timeout_seconds: float = 3.0  # calls to a node's room API
    store_timeout_seconds: float = 1.0  # one store call (Redis socket timeouts, and overall)
    max_placement_attempts: int = 3  # nodes tried for one room before giving up
    #: after a node's lease lapses its rooms are not placed elsewhere for this long: the node may
    #: come back (a restart, a control-plane or store outage) still hosting them
    room_grace_seconds: float = 30.0
    #: usage (issue 14): the day of the month (UTC) each period starts, and the participant-minutes
    #: a period may use before ``POST /v1/tokens`` (and the nodes' joins) get ``quota_exceeded`` (0: none)
    usage_period_start_day: int = 1
    quota_participant_minutes: float = 0.0
    cors_origins: tuple[str, ...] | None = ()  # None: any origin (dev mode)
    log_level: str = "info"
    dev: bool = False
    dev_allow_remote: bool = False
    def webhooks_db_path(self, port: int) -> str:
        """The webhook queue's SQLite file (``WebhookConfig``): ``webhooks_db``, or else the SQLite
        store's own file (a table in it; ``:memory:`` with the in-memory store), or with Redis
        ``levelchat-control-webhooks-<port>.db``, local to each replica."""
        if self.webhooks_db:
            return self.webhooks_db
        store = StoreUrl.parse(self.store)
        if store.kind is StoreKind.SQLITE:
            return store.target
        return f"levelchat-control-webhooks-{port}.db"

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    @property
    def room_grace_ms(self) -> int:
        return int(self.room_grace_seconds * 1000)

    def validate(self) -> ControlConfig:
        """Return self, or raise ``ValueError`` saying what is wrong."""
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not self.api_keys:
            raise ValueError("no API keys configured: give --api-key KID:SECRET, [api_keys] in the file, or --dev")
        for kid, secret in self.api_keys.items():
            if not kid:
                raise ValueError("an API key id is empty")
            if not secret:
                raise ValueError(f"API key {kid!r} has an empty secret")
            if not self.dev and len(secret) < MIN_SECRET_LEN:
                raise ValueError(f"API key {kid!r}: secret shorter than {MIN_SECRET_LEN} characters (allowed only with --dev)")
        if not self.project:
            raise ValueError("project must not be empty")
        StoreUrl.parse(self.store)
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if not 0 < self.heartbeat_interval_seconds < self.lease_seconds:
            raise ValueError(
                f"heartbeat_interval_seconds ({self.heartbeat_interval_seconds}) must be > 0 and below "
                f"lease_seconds ({self.lease_seconds})"
            )
        if self.node_timeout_seconds <= 0:
            raise ValueError(f"node_timeout_seconds must be > 0, got {self.node_timeout_seconds}")
        if not 0 < self.store_timeout_seconds <= 60:
            raise ValueError(f"store_timeout_seconds must be > 0 and at most 60, got {self.store_timeout_seconds}")
        if not 0 <= self.room_grace_seconds <= 86400:
            raise ValueError(f"room_grace_seconds must be 0..86400, got {self.room_grace_seconds}")
        if self.max_placement_attempts < 1:
            raise ValueError(f"max_placement_attempts must be >= 1, got {self.max_placement_attempts}")
        if not 1 <= self.usage_period_start_day <= 28:
            raise ValueError(f"usage_period_start_day must be 1..28, got {self.usage_period_start_day}")
        if self.quota_participant_minutes < 0:
            raise ValueError(f"quota_participant_minutes must be >= 0 (0: no quota), got {self.quota_participant_minutes}")
        for problem in self.http_limits.problems() + self.webhook_settings.problems():
            raise ValueError(problem)
        for hook in self.webhooks:
            if hook.key and hook.key not in self.api_keys:
                raise ValueError(f"webhooks: key {hook.key!r} of {hook.url} is not one of the API keys")
        if len(self.webhooks) > self.webhooks_max_endpoints:
            raise ValueError(f"webhooks: at most {self.webhooks_max_endpoints} endpoints (webhooks_max_endpoints)")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        if self.dev and not self.dev_allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"dev mode listens only on loopback; {self.host!r} is not (give --dev-allow-remote to insist)"
            )
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEV_PRESET: Mapping[str, Any] = {
    "api_keys": {DEV_KEY_ID: DEV_SECRET},
    "project": "levelchat",
    "host": "127.0.0.1",
    "port": 7700,
    "store": "sqlite://:memory:",
    "cors_origins": None,
}

_FIELDS = {f.name: f for f in fields(ControlConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a file/env/flag value into the field's type; ``ValueError`` names the key and source."""
    default = getattr(ControlConfig(), name)
    try:
        if name == "api_keys":
            return _parse_keys(value)
        if name == "webhooks":
            return _parse_webhooks(value)
        if name == "cors_origins":
            if value is None or value == "*" or value == ["*"]:
                return None
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("must be a list of origins or '*'")
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError("must be a boolean")
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError("must be an integer")
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"must be an integer, got {value!r}") from None
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError("must be a number")
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"must be a number, got {value!r}") from None
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError("must be a string")
            return value
    except ValueError as exc:
        raise ValueError(f"{source}: {name}: {exc}") from None
    raise ValueError(f"{source}: {name}: unsupported")  # pragma: no cover


def _parse_webhooks(value: Any) -> tuple[WebhookEndpoint, ...]:
    """A list of ``{url, events?, key?}`` tables (or its JSON text), each checked."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("must be a JSON list of {url, events?, key?} objects") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("must be a list of {url, events?, key?} tables")
    return tuple(build(WebhookEndpoint, v) for v in value)


def _parse_keys(value: Any) -> dict[str, str]:
    """``{kid: secret}`` (TOML table) or ``"kid:secret,kid2:secret2"`` / a list of ``kid:secret``."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError("must map key ids to secret strings")
        return dict(value)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError("must be a table, a list of 'kid:secret' or 'kid:secret,kid2:secret2'")
    keys: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or ":" not in item:
            raise ValueError(f"{item!r} is not 'kid:secret'")
        kid, secret = item.split(":", 1)
        keys[kid.strip()] = secret.strip()
    return keys


def _apply(base: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    unknown = sorted(k for k in layer if k not in _FIELDS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    for name, value in layer.items():
        base[name] = _coerce(name, value, source)


def env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The ``LEVELCHAT_CONTROL_*`` settings, and the config file ``LEVELCHAT_CONTROL_CONFIG`` names."""
    layer: dict[str, Any] = {}
    config_file = None
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name == "config":
            config_file = value
        else:
            layer[name] = value
    return layer, config_file


def load_config(
    *,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> ControlConfig:
    """Merge the layers; ``flags`` holds only the flags the user gave (no argparse defaults)."""
    env, env_file = env_layer(environ)
    values: dict[str, Any] = {}
    dev = bool(flags.get("dev")) or str(env.get("dev", "")).lower() in ("1", "true", "yes", "on")
    if dev:
        values.update(DEV_PRESET)
    path = config_file or env_file
    if path:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ValueError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        _apply(values, data, f"config file {path}")
    _apply(values, env, "environment " + ENV_PREFIX + "*")
    _apply(values, flags, "command line")
    return replace(ControlConfig(), **values).validate()
