"""control.config: layering (defaults < --dev < file < env < flags), unknown keys, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.config import ControlConfig, load_config

SECRET = "k" * 32


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "control.toml"
    path.write_text(text)
    return str(path)


def test_defaults_need_a_key() -> None:
    with pytest.raises(ValueError, match="no API keys configured"):
        load_config(flags={}, environ={})


def test_defaults() -> None:
    cfg = load_config(flags={"api_keys": [f"prod:{SECRET}"]}, environ={})
    assert (cfg.host, cfg.port, cfg.project) == ("127.0.0.1", 7700, "levelchat")
    assert cfg.store == "sqlite:///levelchat-control.db"
    assert (cfg.lease_seconds, cfg.heartbeat_interval_seconds, cfg.lease_ms) == (10.0, 2.0, 10_000)
    assert cfg.api_keys == {"prod": SECRET}


def test_dev_preset() -> None:
    cfg = load_config(flags={"dev": True}, environ={})
    assert cfg.api_keys == {"devkey": "secret"} and cfg.project == "levelchat"
    assert (cfg.host, cfg.port) == ("127.0.0.1", 7700)
    assert cfg.store == "sqlite://:memory:" and cfg.cors_origins is None


@pytest.mark.parametrize(
    ("flags", "ok"),
    [
        ({"dev": True, "host": "0.0.0.0"}, False),
        ({"dev": True, "host": "10.1.2.3"}, False),
        ({"dev": True, "host": "0.0.0.0", "dev_allow_remote": True}, True),
        ({"dev": True, "host": "::1"}, True),
        ({"dev": True, "host": "localhost"}, True),
    ],
)
def test_dev_mode_only_on_loopback(flags: dict[str, object], ok: bool) -> None:
    if ok:
        assert load_config(flags=flags, environ={}).dev
    else:
        with pytest.raises(ValueError, match="dev mode listens only on loopback"):
            load_config(flags=flags, environ={})


def test_layers_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
port = 7800
project = "acme"
lease_seconds = 6
heartbeat_interval_seconds = 1.5
store = "redis://127.0.0.1:6390/2"
[api_keys]
k1 = "{SECRET}"
""")
    env = {"LEVELCHAT_CONTROL_PORT": "7900", "LEVELCHAT_CONTROL_PROJECT": "acme-env", "HOME": "/x"}
    cfg = load_config(flags={"port": 8000}, environ=env, config_file=path)
    assert cfg.port == 8000  # flag beats env beats file
    assert cfg.project == "acme-env"
    assert cfg.lease_seconds == 6.0 and cfg.heartbeat_interval_seconds == 1.5
    assert cfg.store == "redis://127.0.0.1:6390/2" and cfg.api_keys == {"k1": SECRET}


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'api_keys = ["a:' + SECRET + '"]\nport = 7123\n')
    cfg = load_config(flags={}, environ={"LEVELCHAT_CONTROL_CONFIG": path})
    assert cfg.port == 7123 and cfg.api_keys == {"a": SECRET}


def test_env_keys_and_bools() -> None:
    env = {"LEVELCHAT_CONTROL_API_KEYS": f"a:{SECRET},b:{SECRET}x", "LEVELCHAT_CONTROL_DEV_ALLOW_REMOTE": "yes"}
    cfg = load_config(flags={}, environ=env)
    assert cfg.api_keys == {"a": SECRET, "b": SECRET + "x"} and cfg.dev_allow_remote is True


@pytest.mark.parametrize(
    ("file_text", "env", "flags", "message"),
    [
        ("colour = 'blue'\n", {}, {}, r"config file .*unknown key\(s\) colour"),
        ("", {"LEVELCHAT_CONTROL_PORTT": "1"}, {}, r"environment .*unknown key\(s\) portt"),
        ("port = 'many'\n", {}, {}, "port: must be an integer"),
        ("", {"LEVELCHAT_CONTROL_PORT": "seven"}, {}, "port"),
        ("", {"LEVELCHAT_CONTROL_DEV": "maybe"}, {}, "dev: must be a boolean"),
        ("", {}, {"port": 70000}, "port must be 0..65535"),
        ("", {}, {"store": "postgres://x"}, "store URL"),
        ("", {}, {"store": "sqlite:///"}, "names no file"),
        ("", {}, {"lease_seconds": 0.0}, "lease_seconds must be > 0"),
        ("", {}, {"heartbeat_interval_seconds": 20.0}, "heartbeat_interval_seconds"),
        ("", {}, {"log_level": "loud"}, "log_level"),
        ("", {}, {"api_keys": ["short:abc"]}, "shorter than 32"),
        ("", {}, {"api_keys": ["nocolon"]}, "is not 'kid:secret'"),
        ("not toml [", {}, {}, "not valid TOML"),
    ],
)
def test_refusals(tmp_path: Path, file_text: str, env: dict[str, str], flags: dict[str, object], message: str) -> None:
    path = write(tmp_path, file_text + (f'\n[api_keys]\nk = "{SECRET}"\n' if "api_keys" not in flags else ""))
    with pytest.raises(ValueError, match=message):
        load_config(flags=flags, environ=env, config_file=path)


def test_missing_file() -> None:
    with pytest.raises(ValueError, match="cannot read config file /nonexistent.toml"):
        load_config(flags={}, environ={}, config_file="/nonexistent.toml")


def test_validate_returns_self() -> None:
    cfg = ControlConfig(api_keys={"k": SECRET})
    assert cfg.validate() is cfg
