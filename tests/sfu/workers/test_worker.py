"""A worker's configuration: derived from the node's, carried to the process as one JSON line."""

from __future__ import annotations

import pytest

from levelchat.config import ConfigError
from sfu.config import load
from sfu.workers.worker import decode_config, encode_config, worker_config

S1 = "s1-" + "x" * 32


def test_worker_config_takes_its_media_port_and_leaves_the_public_duties_to_the_front() -> None:
    node = load(environ={"LEVELCHAT_SFU_API_KEYS": f"k1={S1}"}, flags={
        "workers": 4, "media_port": 40000, "node_id": "sfu-a", "control_url": "http://127.0.0.1:7700",
        "cors_origins": ["https://app.example"], "public_url": "https://sfu-a.example",
    })
    cfgs = [worker_config(node, i) for i in range(4)]
    assert [c.media_port for c in cfgs] == [40000, 40001, 40002, 40003]
    assert [c.node_id for c in cfgs] == ["sfu-a-w0", "sfu-a-w1", "sfu-a-w2", "sfu-a-w3"]
    for c in cfgs:
        assert c.worker_count == 1 and c.control_url == "" and c.public_url == ""
        assert c.rate_limit_ip_per_s == 0 and c.rate_limit_key_per_s == 0  # the front limits, seeing clients
        assert c.cors_origins is None  # the front answers CORS
        assert c.api_keys == node.api_keys and c.max_rooms == node.max_rooms
    assert worker_config(load(dev=True, environ={}, flags={"media_port": 0}), 3).media_port == 0  # any port


def test_the_config_line_round_trips() -> None:
    node = load(dev=True, environ={}, flags={"workers": 2, "default_codecs": ["opus", "VP8"]})
    cfg = worker_config(node, 1)
    line = encode_config(cfg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_config(line) == cfg


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b'{"bogus_key": 1}\n'])
def test_a_bad_config_line_is_refused(line: bytes) -> None:
    with pytest.raises(ConfigError):
        decode_config(line)
