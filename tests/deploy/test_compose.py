"""deploy/docker-compose.yml: entry points, host networking, healthchecks on the right ports and
paths, stop grace above the drain deadline, and every setting accepted by the real loaders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from control.config import ControlConfig
from levelchat.config import ConfigError
from sfu.config import NodeConfig
from tests.deploy.support import (
    CONTROL_ENTRY,
    DEPLOY,
    NODE_ENTRY,
    PLACEHOLDER_SECRET,
    REPO,
    TEST_SECRET,
    MissingVariable,
    control_config_for,
    entry_point,
    env_file,
    interpolate,
    interpolate_tree,
    load_yaml_docs,
    node_config_for,
    split_command,
)

COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "levelchat.env.example"
TURN_SECRET = "turn-" + TEST_SECRET
OPERATOR_ENV = {
    "LEVELCHAT_API_SECRET": TEST_SECRET, "PUBLIC_IP": "203.0.113.7", "TURN_SECRET": TURN_SECRET, "TURN_HOST": "turn.example.com",
}


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    (raw,) = load_yaml_docs(COMPOSE)
    tree: dict[str, Any] = interpolate_tree(raw, OPERATOR_ENV if env is None else env)
    return tree


def services(kind: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose(env)["services"].items()
            if "command" in s and entry_point(split_command(s["command"])) == kind}


def mounted_files(service: dict[str, Any]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            files[target] = (COMPOSE.parent / source).resolve()
    return files


def node_config(service: dict[str, Any], env: dict[str, str] | None = None) -> NodeConfig:
    environ = dict(service.get("environment", {}) if env is None else env)
    return node_config_for(split_command(service["command"]), environ, mounted_files(service))


def control_config(service: dict[str, Any]) -> ControlConfig:
    return control_config_for(split_command(service["command"]), dict(service.get("environment", {})),
                              mounted_files(service))


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    urls = re.findall(r"https?://[^'\" ]+", " ".join(test))
    assert len(urls) == 1, test
    return str(urls[0])


def seconds(value: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", value)
    assert m is not None, value
    return float(m.group(1)) * units[m.group(2)]


def test_two_nodes_and_two_control_plane_replicas_on_our_entry_points() -> None:
    nodes, controls = services(NODE_ENTRY), services(CONTROL_ENTRY)
    assert len(nodes) == 2 and len(controls) == 2, (nodes.keys(), controls.keys())
    assert "redis" in compose()["services"]
    for service in (*nodes.values(), *controls.values()):
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()


def test_node_settings_load_and_nodes_do_not_collide() -> None:
    configs = {name: node_config(s) for name, s in services(NODE_ENTRY).items()}
    assert len({c.node_id for c in configs.values()}) == 2 and all(c.node_id for c in configs.values())
    # host networking: each node's HTTP port and ICE-TCP ports (one per worker, tcp_port + i) are
    # TCP ports of the one host, its media ports (media_port + i) UDP ports: none may be taken twice
    tcp = [p for c in configs.values() for p in (
        c.http_port, *(range(c.ice_tcp_port, c.ice_tcp_port + c.worker_count) if c.ice_tcp else ()))]
    udp = [p for c in configs.values() for p in range(c.media_port, c.media_port + c.worker_count)]
    assert all(c.worker_count > 1 and c.ice_tcp for c in configs.values())
    assert len(set(tcp)) == len(tcp), sorted(tcp)
    assert len(set(udp)) == len(udp), sorted(udp)
    for name, cfg in configs.items():
        assert not cfg.dev, name
        assert cfg.public_ip == (OPERATOR_ENV["PUBLIC_IP"],), name
        assert cfg.api_keys == {"prod": TEST_SECRET}, name
        assert urlsplit(cfg.public_url).port == cfg.http_port, (name, cfg.public_url)


def test_nodes_use_host_networking_and_know_every_control_plane_replica() -> None:
    controls = services(CONTROL_ENTRY)
    ports = sorted(control_config(c).port for c in controls.values())
    assert len(set(ports)) == len(ports) == 2, ports  # host networking: one port each
    for name, service in services(NODE_ENTRY).items():
        assert service["network_mode"] == "host", name
        urls = [urlsplit(u) for u in node_config(service).control_endpoints]
        assert sorted((u.hostname, u.port) for u in urls) == [("127.0.0.1", p) for p in ports], (name, urls)
        assert set(service["depends_on"]) >= set(controls), name
    assert all(c["network_mode"] == "host" for c in controls.values())


def test_control_plane_replicas_share_the_redis_service() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    stores = set()
    for name, control in services(CONTROL_ENTRY).items():
        cfg = control_config(control)
        assert not cfg.dev and cfg.api_keys == {"prod": TEST_SECRET}, name
        store = urlsplit(cfg.store)
        assert store.scheme == "redis"
        assert (store.hostname, str(store.port)) == (command[command.index("--bind") + 1], command[command.index("--port") + 1])
        assert control["depends_on"]["redis"]["condition"] == "service_healthy", name
        stores.add(cfg.store)
    assert len(stores) == 1, stores


@pytest.mark.parametrize("kind,path", [(NODE_ENTRY, "/healthz"), (CONTROL_ENTRY, "/readyz")])
def test_healthchecks_hit_the_process_own_port(kind: str, path: str) -> None:
    for name, service in services(kind).items():
        url = urlsplit(healthcheck_url(service))
        port = node_config(service).http_port if kind == NODE_ENTRY else control_config(service).port
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, path), name


def test_stop_grace_is_above_the_drain_deadline() -> None:
    for name, service in services(NODE_ENTRY).items():
        assert service["stop_signal"] == "SIGTERM", name
        assert seconds(service["stop_grace_period"]) > node_config(service).drain_deadline_s, name
        for control in services(CONTROL_ENTRY):
            assert service["depends_on"][control]["condition"] == "service_healthy", name


def test_compose_refuses_to_start_without_the_secret() -> None:
    with pytest.raises(MissingVariable, match="LEVELCHAT_API_SECRET"):
        compose({"PUBLIC_IP": "203.0.113.7"})
    with pytest.raises(MissingVariable, match="PUBLIC_IP"):
        compose({"LEVELCHAT_API_SECRET": TEST_SECRET})
    for name in ("TURN_SECRET", "TURN_HOST"):
        with pytest.raises(MissingVariable, match=name):
            compose({k: v for k, v in OPERATOR_ENV.items() if k != name})


def test_coturn_shares_the_secret_and_relays_to_the_nodes_only() -> None:
    coturn = compose()["services"]["coturn"]
    assert coturn["network_mode"] == "host" and coturn["image"].startswith("coturn/coturn:")
    args = coturn["command"]
    assert args[:2] == ["-c", "/etc/coturn/turnserver.conf"]
    conf_path = mounted_files(coturn)["/etc/coturn/turnserver.conf"]
    assert conf_path == DEPLOY / "config" / "turnserver.conf"
    conf = dict(line.partition("=")[::2] for line in conf_path.read_text().splitlines() if line and not line.startswith("#"))
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in args[2:])
    assert flags["static-auth-secret"] == TURN_SECRET
    assert "/etc/coturn/tls" in [v.split(":")[1] for v in coturn["volumes"]]
    assert conf["cert"].startswith("/etc/coturn/tls/") and conf["pkey"].startswith("/etc/coturn/tls/")
    for name, service in services(NODE_ENTRY).items():
        cfg = node_config(service)
        (server,) = cfg.turn_servers
        assert server.secret == TURN_SECRET, name
        assert (flags["allowed-peer-ip"],) == cfg.public_ip, name  # the only peer coturn relays to
        urls = {(u.secure, u.host, u.port, u.transport.value) for u in server.parsed_urls}
        tcp, tls = int(conf["listening-port"]), int(conf["tls-listening-port"])
        assert urls == {(False, "turn.example.com", tcp, "udp"), (False, "turn.example.com", tcp, "tcp"),
                        (True, "turn.example.com", tls, "tcp")}, name
        # coturn's ports are not the nodes' (host networking)
        assert not {tcp, tls} & {cfg.http_port, *range(cfg.ice_tcp_port, cfg.ice_tcp_port + cfg.worker_count)}, name
        relay = range(int(conf["min-port"]), int(conf["max-port"]) + 1)
        assert not set(relay) & set(range(cfg.media_port, cfg.media_port + cfg.worker_count)), name


def test_the_env_example_placeholder_is_refused_by_both_processes() -> None:
    example = env_file(ENV_EXAMPLE)
    assert example["LEVELCHAT_API_SECRET"] == PLACEHOLDER_SECRET
    for service in services(NODE_ENTRY, example).values():
        with pytest.raises(ConfigError, match="shorter than 32"):
            node_config(service)
    for service in services(CONTROL_ENTRY, example).values():
        with pytest.raises(ValueError, match="shorter than 32"):
            control_config(service)
    assert example["TURN_SECRET"] == PLACEHOLDER_SECRET
    for service in services(NODE_ENTRY, {**example, "LEVELCHAT_API_SECRET": TEST_SECRET}).values():
        with pytest.raises(ConfigError, match="turn_servers: the secret of .* is shorter than 32"):
            node_config(service)


@pytest.mark.parametrize(
    "change",
    [
        {"LEVELCHAT_SFU_PUBLC_IP": "203.0.113.7"},  # a typo in a key
        {"LEVELCHAT_SFU_MEDIA_PORT": "seven"},  # a value of the wrong type
        {"LEVELCHAT_SFU_PUBLIC_IP": ""},  # wildcard media_host without an address to advertise
    ],
)
def test_a_broken_node_setting_fails_the_check(change: dict[str, str]) -> None:
    service = next(iter(services(NODE_ENTRY).values()))
    with pytest.raises(ConfigError):
        node_config(service, {**service["environment"], **change})


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "1", "E": ""}
    table = [
        ("$$A", "$A"), ("${A}", "1"), ("$A-x", "1-x"), ("${B:-d}", "d"), ("${E:-d}", "d"), ("${E-d}", ""),
        ("${B:-http://${A}:7}", "http://1:7"), ("${A:+y}", "y"), ("${B:+y}", ""),
    ]
    for text, want in table:
        assert interpolate(text, env) == want, text
    with pytest.raises(MissingVariable, match="B: need B"):
        interpolate("${B:?need B}", env)


def test_dual_stack_from_public_ip6_and_media_host() -> None:
    """PUBLIC_IP6 with MEDIA_HOST=:: makes each node dual-stack (issue 13); PUBLIC_IP6 alone is
    refused by the node's own loader, with the fix in the message; without either, IPv4 as before."""
    env = {**OPERATOR_ENV, "PUBLIC_IP6": "2001:db8::7", "MEDIA_HOST": "::"}
    for name, service in services(NODE_ENTRY, env).items():
        cfg = node_config(service)
        assert cfg.media_host == "::" and cfg.advertised_ips == ("203.0.113.7", "2001:db8::7"), name
    for service in services(NODE_ENTRY, {**OPERATOR_ENV, "PUBLIC_IP6": "2001:db8::7"}).values():
        with pytest.raises(ConfigError, match='media_host = "::" listens on both'):
            node_config(service)
    for service in services(NODE_ENTRY).values():
        assert node_config(service).media_host == "0.0.0.0"
