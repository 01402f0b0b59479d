"""The HTTP limits and ``demo_page`` in both programs' typed configuration: defaults, types,
ranges."""

from __future__ import annotations

import pytest

from control.config import load_config
from levelchat.config import ConfigError
from levelchat.httpserver import HttpLimits
from sfu.config import load

SECRET = "s" * 32
NODE_ENV = {"LEVELCHAT_SFU_API_KEYS": f"prod={SECRET}"}
CONTROL_ENV = {"LEVELCHAT_CONTROL_API_KEYS": f"prod:{SECRET}"}


def test_defaults() -> None:
    expected = HttpLimits(header_timeout_s=10.0, body_timeout_s=30.0, keepalive_timeout_s=15.0,
                          max_connections_per_ip=64, max_connections=10_000)
    assert load(environ=NODE_ENV).http_limits == expected
    assert load_config(flags={}, environ=CONTROL_ENV).http_limits == expected


def test_demo_page_follows_dev_mode_unless_set() -> None:
    assert load(dev=True, environ={}).serves_demo_page
    assert not load(environ=NODE_ENV).serves_demo_page
    assert load(environ={**NODE_ENV, "LEVELCHAT_SFU_DEMO_PAGE": "true"}).serves_demo_page
    assert not load(dev=True, environ={"LEVELCHAT_SFU_DEMO_PAGE": "false"}).serves_demo_page


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HTTP_HEADER_TIMEOUT_S", "0"),
        ("HTTP_BODY_TIMEOUT_S", "-1"),
        ("HTTP_KEEPALIVE_TIMEOUT_S", "100000"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_MAX_CONNECTIONS_PER_IP", "many"),
        ("HTTP_MAX_CONNECTIONS", "1.5"),
        ("HTTP_READ_TIMEOUT_S", "5"),  # not a key
    ],
)
def test_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load(environ={**NODE_ENV, f"LEVELCHAT_SFU_{key}": value})
    with pytest.raises(ValueError):
        load_config(flags={}, environ={**CONTROL_ENV, f"LEVELCHAT_CONTROL_{key}": value})


def test_set_from_the_environment() -> None:
    env = {"HTTP_HEADER_TIMEOUT_S": "2.5", "HTTP_MAX_CONNECTIONS_PER_IP": "8", "HTTP_MAX_CONNECTIONS": "100"}
    node = load(environ={**NODE_ENV, **{f"LEVELCHAT_SFU_{k}": v for k, v in env.items()}}).http_limits
    control = load_config(flags={}, environ={**CONTROL_ENV, **{f"LEVELCHAT_CONTROL_{k}": v for k, v in env.items()}}).http_limits
    for limits in (node, control):
        assert (limits.header_timeout_s, limits.max_connections_per_ip, limits.max_connections) == (2.5, 8, 100)
