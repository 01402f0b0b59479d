"""levelchat.config: layering, type coercion from environment strings, refusals naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from levelchat.config import ConfigError, build, from_env, is_loopback, load_toml


@dataclass(frozen=True)
class Sample:
    name: str = "node"
    port: int = 7880
    ratio: float = 0.5
    enabled: bool = False
    tags: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    keys: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    origins: tuple[str, ...] | None = None
    timeout: int | None = None

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a port number")


COERCIONS: list[tuple[str, Any, Any]] = [
    # (key, value as given, value after build)
    ("port", "8080", 8080),
    ("port", 8080, 8080),
    ("port", " 42 ", 42),
    ("ratio", "0.25", 0.25),
    ("ratio", 2, 2.0),
    ("enabled", "true", True),
    ("enabled", "YES", True),
    ("enabled", "1", True),
    ("enabled", "on", True),
    ("enabled", "false", False),
    ("enabled", "No", False),
    ("enabled", "0", False),
    ("enabled", "off", False),
    ("enabled", True, True),
    ("tags", "a,b,c", ("a", "b", "c")),
    ("tags", "a,,b,", ("a", "b")),
    ("tags", '["x", "y"]', ("x", "y")),
    ("tags", ["x"], ("x",)),
    ("tags", "", ()),
    ("ports", "1,2", (1, 2)),
    ("ports", "[3, 4]", (3, 4)),
    ("keys", '{"devkey": "secret"}', {"devkey": "secret"}),
    ("keys", "k1=s1,k2=s=2", {"k1": "s1", "k2": "s=2"}),
    ("keys", {"a": "b"}, {"a": "b"}),
    ("limits", "rooms=5,peers=10", {"rooms": 5, "peers": 10}),
    ("origins", "", None),
    ("origins", None, None),
    ("origins", "https://a.example,https://b.example", ("https://a.example", "https://b.example")),
    ("timeout", "", None),
    ("timeout", "30", 30),
]


@pytest.mark.parametrize(("key", "given", "expected"), COERCIONS)
def test_coercion(key: str, given: Any, expected: Any) -> None:
    cfg = build(Sample, {key: given})
    assert getattr(cfg, key) == expected
    assert type(getattr(cfg, key)) is type(expected)


REFUSALS: list[Any] = [
    # (layer, substring of the ConfigError)
    ({"colour": "blue"}, "unknown setting 'colour'"),
    ({"Port": 1}, "unknown setting 'Port'"),
    ({"port": "eighty"}, "port: 'eighty' is not an integer"),
    ({"port": True}, "port: True is not an integer"),
    ({"port": None}, "port: None is not an integer"),
    ({"port": 1.5}, "port: 1.5 is not an integer"),
    ({"ratio": "half"}, "ratio: 'half' is not a number"),
    ({"enabled": "maybe"}, "enabled: 'maybe' is not a boolean"),
    ({"enabled": 1}, "enabled: 1 is not a boolean"),
    ({"name": 5}, "name: 5 is not a string"),
    ({"tags": 5}, "tags: 5 is not a list"),
    ({"ports": "1,x"}, "ports: 'x' is not an integer"),
    ({"keys": "novalue"}, "keys: expected JSON or key=value"),
    ({"keys": 3}, "keys: 3 is not a table"),
    ({"limits": "rooms=many"}, "limits: 'many' is not an integer"),
    ({"timeout": "soon"}, "timeout: 'soon' is not a valid"),
    ({"port": 70000}, "port: 70000 is not a port number"),  # the dataclass's own validate()
]


@pytest.mark.parametrize(("layer", "message"), REFUSALS)
def test_refusals_name_the_key(layer: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(Sample, layer)
    assert message in str(info.value)


def test_malformed_json_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tags"):
        build(Sample, {"tags": "[not json"})


def test_layers_later_wins_and_dashes_are_underscores() -> None:
    cfg = build(Sample, {"port": 1, "name": "file"}, {"port": "2"}, {"port": 3, "timeout": "9"})
    assert (cfg.port, cfg.name, cfg.timeout) == (3, "file", 9)
    assert build(Sample, {"name": "x"}).port == 7880  # defaults stay
    with pytest.raises(ConfigError, match="unknown setting 'max_x'"):
        build(Sample, {"max-x": 1})


def test_from_env() -> None:
    environ = {"APP_PORT": "9000", "APP_ENABLED": "yes", "OTHER_PORT": "1", "PATH": "/bin", "APP_TAGS": "a,b"}
    layer = from_env(Sample, "APP_", environ)
    assert layer == {"port": "9000", "enabled": "yes", "tags": "a,b"}
    cfg = build(Sample, {"port": 1}, layer)
    assert (cfg.port, cfg.enabled, cfg.tags) == (9000, True, ("a", "b"))
    with pytest.raises(ConfigError, match="unknown environment setting APP_PROT"):
        from_env(Sample, "APP_", {"APP_PROT": "1"})


def test_load_toml(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('name = "from-file"\nport = 7000\ntags = ["a"]\n[keys]\ndevkey = "secret"\n')
    cfg = build(Sample, load_toml(good))
    assert (cfg.name, cfg.port, cfg.tags, cfg.keys) == ("from-file", 7000, ("a",), {"devkey": "secret"})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
