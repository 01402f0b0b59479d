"""ICE-TCP configuration: the port (default, any free port, per worker), the switch, the bounds;
and the passive TCP candidate the node renders below its UDP one."""

from __future__ import annotations

import re

import pytest

from levelchat.config import ConfigError
from sfu.__main__ import parse_args
from sfu.config import load
from sfu.signaling.sdpfrag import IceFragment, build_fragment
from sfu.workers.worker import worker_config

KEYS = {"LEVELCHAT_SFU_API_KEYS": "k1=s1-" + "x" * 32}


def test_the_tcp_port_defaults_to_7881_and_follows_an_ephemeral_media_port() -> None:
    assert load(environ=KEYS).ice_tcp_port == 7881
    assert load(dev=True, environ={}).ice_tcp_port == 7881
    assert load(environ=KEYS, flags={"media_port": 0}).ice_tcp_port == 0  # tests: any free port
    assert load(environ=KEYS, flags={"media_port": 0, "tcp_port": 9000}).ice_tcp_port == 9000
    assert load(environ={**KEYS, "LEVELCHAT_SFU_TCP_PORT": "0"}).ice_tcp_port == 0
    assert load(environ={**KEYS, "LEVELCHAT_SFU_ICE_TCP": "false"}).ice_tcp is False
    flags = {k: v for k, v in vars(parse_args(["--tcp-port", "7000", "--no-ice-tcp"])).items() if v is not None}
    cfg = load(environ=KEYS, flags={k: v for k, v in flags.items() if k not in ("config", "dev")})
    assert (cfg.tcp_port, cfg.ice_tcp) == (7000, False)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"tcp_port": 70000}, "tcp_port"),
        ({"tcp_port": 65535, "workers": 2}, "tcp_port"),
        ({"tcp_max_connections": 0}, "tcp_max_connections"),
        ({"tcp_max_connections_per_ip": 0}, "tcp_max_connections_per_ip"),
        ({"tcp_send_buffer_bytes": 100}, "tcp_send_buffer_bytes"),
        ({"tcp_bind_timeout_s": 0}, "tcp_bind_timeout_s"),
    ],
)
def test_bad_tcp_settings_are_refused_by_name(flags: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(environ=KEYS, flags=flags)


def test_each_worker_gets_its_own_tcp_port() -> None:
    node = load(environ=KEYS, flags={"workers": 3, "media_port": 40000})
    assert [worker_config(node, i).ice_tcp_port for i in range(3)] == [7881, 7882, 7883]
    node = load(environ=KEYS, flags={"workers": 3, "media_port": 40000, "tcp_port": 0})
    assert [worker_config(node, i).ice_tcp_port for i in range(3)] == [0, 0, 0]


def test_the_restart_fragment_carries_the_tcp_candidate_below_the_udp_one() -> None:
    text = build_fragment("abcd", "p" * 22, "audio", "0", [("192.0.2.1", 7882)], [("192.0.2.1", 7881)])
    frag = IceFragment.parse(text)
    (udp, tcp) = frag.candidates
    assert re.fullmatch(r"candidate:1 1 udp (\d+) 192\.0\.2\.1 7882 typ host", udp)
    m = re.fullmatch(r"candidate:2 1 tcp (\d+) 192\.0\.2\.1 7881 typ host tcptype passive", tcp)
    assert m is not None
    assert int(m.group(1)) < int(udp.split()[3])
    with pytest.raises(ValueError):
        build_fragment("abcd", "p" * 22, "audio", "0", [("192.0.2.1", 7882)], [("not-an-ip", 7881)])
