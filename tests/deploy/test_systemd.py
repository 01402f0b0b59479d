"""deploy/systemd: the units parse as INI with the keys that matter; their command lines, TOML
files and EnvironmentFile examples are accepted by the real loaders; stop waits out the drain."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from levelchat.config import ConfigError
from tests.deploy.support import (
    CONFIG_DIR,
    CONTROL_ENTRY,
    DEPLOY,
    NODE_ENTRY,
    PLACEHOLDER_SECRET,
    config_file_of,
    control_config_for,
    entry_point,
    env_file,
    node_config_for,
    split_command,
    with_secret,
)

UNITS = DEPLOY / "systemd"
CASES = [("levelchat-sfu.service", NODE_ENTRY), ("levelchat-control.service", CONTROL_ENTRY)]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text(), source=name)
    return parser


def local_files(argv: list[str]) -> dict[str, Path]:
    """``/etc/levelchat/X.toml`` is the installed copy of deploy/config/X.toml."""
    path = config_file_of(argv)
    return {path: CONFIG_DIR / Path(path).name}


def example_env(service: configparser.SectionProxy) -> dict[str, str]:
    """``/etc/levelchat/X.env`` is installed from deploy/systemd/X.env.example."""
    return env_file(UNITS / (Path(service["EnvironmentFile"].lstrip("-")).name + ".example"))


@pytest.mark.parametrize("name,entry", CASES)
def test_unit_keys(name: str, entry: str) -> None:
    u = unit(name)
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    s = u["Service"]
    assert s["User"] not in ("", "root", "0") and s["Group"] not in ("", "root", "0")
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert int(s["LimitNOFILE"]) >= 65536
    assert s["EnvironmentFile"].startswith("/etc/levelchat/")
    assert s["Environment"] == "PYTHONMALLOC=malloc"  # as the Docker image: docs/operations.md, "Memory"
    assert "network-online.target" in u["Unit"]["After"]
    assert u["Install"]["WantedBy"] == "multi-user.target"
    argv = split_command(s["ExecStart"])
    assert Path(argv[0]).is_absolute() and entry_point(argv) == entry


@pytest.mark.parametrize("name,entry", CASES)
def test_unit_configuration_loads_and_placeholder_is_refused(name: str, entry: str) -> None:
    s = unit(name)["Service"]
    argv = split_command(s["ExecStart"])
    env = example_env(s)
    assert any(PLACEHOLDER_SECRET in v for v in env.values())
    if entry == NODE_ENTRY:
        cfg = node_config_for(argv, with_secret(env), local_files(argv))
        assert not cfg.dev and len(cfg.control_endpoints) == 2 and cfg.public_ip  # two replicas
        with pytest.raises(ConfigError, match="shorter than 32"):
            node_config_for(argv, env, local_files(argv))
    else:
        ctl = control_config_for(argv, with_secret(env), local_files(argv))
        assert not ctl.dev and ctl.store.startswith("redis://")  # shared by the replicas
        with pytest.raises(ValueError, match="shorter than 32"):
            control_config_for(argv, env, local_files(argv))


def test_sfu_stop_timeout_is_above_the_drain_deadline() -> None:
    s = unit("levelchat-sfu.service")["Service"]
    argv = split_command(s["ExecStart"])
    cfg = node_config_for(argv, with_secret(example_env(s)), local_files(argv))
    assert int(s["TimeoutStopSec"]) > cfg.drain_deadline_s
    assert s["KillMode"] == "mixed"  # the SIGTERM goes to the node alone


def test_control_state_directory_holds_the_sqlite_file() -> None:
    s = unit("levelchat-control.service")["Service"]
    # a relative sqlite:/// path lands in the working directory, which must be writable
    assert s["WorkingDirectory"] == f"/var/lib/{s['StateDirectory']}"
    assert s["WorkingDirectory"] in s["ReadWritePaths"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    for name, _ in CASES:
        shutil.copy(UNITS / name, tmp_path / name)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name, _ in CASES)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # the programs are not installed here; everything else must be clean
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.strip() and "is not executable: No such file or directory" not in line]
    assert not complaints, "\n".join(complaints)


def test_the_node_env_example_names_turn_servers_with_the_coturn_example_secret() -> None:
    s = unit("levelchat-sfu.service")["Service"]
    argv = split_command(s["ExecStart"])
    env = example_env(s)
    (server,) = node_config_for(argv, with_secret(env), local_files(argv)).turn_servers
    coturn = dict(line.partition("=")[::2] for line in (UNITS / "turnserver.conf").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert coturn["static-auth-secret"] == PLACEHOLDER_SECRET and PLACEHOLDER_SECRET in env["LEVELCHAT_SFU_TURN_SERVERS"]
    tcp, tls = int(coturn["listening-port"]), int(coturn["tls-listening-port"])
    assert {(u.port, u.secure, u.transport.value) for u in server.parsed_urls} == {(tcp, False, "udp"), (tcp, False, "tcp"), (tls, True, "tcp")}
    # the placeholder TURN secret alone is refused too
    api_only = {k: v if k == "LEVELCHAT_SFU_TURN_SERVERS" else with_secret({k: v})[k] for k, v in env.items()}
    with pytest.raises(ConfigError, match="turn_servers: the secret of .* is shorter than 32"):
        node_config_for(argv, api_only, local_files(argv))


def test_the_coturn_drop_in_lets_debian_s_unit_bind_443() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / "coturn.service.d" / "levelchat.conf").read_text())
    s = parser["Service"]
    assert s["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE" and int(s["LimitNOFILE"]) >= 65536
