"""deploy/'s coturn configurations: the TURN REST API on, and not an open relay.

``deploy/config/turnserver.conf`` (compose, Kubernetes) and ``deploy/systemd/turnserver.conf``
run in a real ``turnserver`` (the
test's ports, certificate and log after it, and ``allow-loopback-peers`` since everything here is
on loopback): a credential the node mints allocates; a peer named by ``allowed-peer-ip`` (the SFU
node) gets a channel, any other address is refused (403) by the deny-everything list (without
that list coturn grants it: see tests/coturn.py's default configuration).  The systemd example
carries a placeholder secret to replace."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol

from sfu.turn import TurnServer, mint
from tests.coturn import TURNSERVER, Coturn
from tests.deploy.support import DEPLOY

COMPOSE_CONF = DEPLOY / "config" / "turnserver.conf"
SYSTEMD_CONF = DEPLOY / "systemd" / "turnserver.conf"
SFU = "127.0.0.1"  # the node coturn may relay to
OTHER = "127.0.0.2"  # any other address


def settings(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


@pytest.mark.parametrize("path", [COMPOSE_CONF, SYSTEMD_CONF], ids=["compose-k8s", "systemd"])
def test_coturn_config_is_the_rest_api_and_no_open_relay(path: Path) -> None:
    conf = settings(path)
    keys = [k for k, _ in conf]
    assert "use-auth-secret" in keys and ("realm" in keys)
    assert ("denied-peer-ip", "0.0.0.0-255.255.255.255") in conf
    assert ("denied-peer-ip", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") in conf
    for forbidden in ("allow-loopback-peers", "lt-cred-mech", "no-auth"):
        assert forbidden not in keys, (path, forbidden)
    assert {"no-cli", "no-multicast-peers", "no-tlsv1", "no-tlsv1_1"} <= set(keys)
    ports = dict(conf)
    assert (ports["listening-port"], ports["tls-listening-port"]) == ("3478", "443")
    assert int(ports["min-port"]) < int(ports["max-port"])
    if path == COMPOSE_CONF:  # the secret and the allowed peers come from the environment
        assert "static-auth-secret" not in keys and "allowed-peer-ip" not in keys
    else:
        assert ports["static-auth-secret"] == "change-me" and "allowed-peer-ip" in keys


async def _channel_to(c: Coturn, peer: str) -> None:
    ice = mint(TurnServer(urls=("turn:127.0.0.1",), secret=c.secret, ttl_s=300), "alice", time.time())
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(("127.0.0.1", c.port), ice.username, ice.credential, 600, 300),
        remote_addr=("127.0.0.1", c.port),
    )
    try:
        await asyncio.wait_for(client.connect(), 10)  # Allocate
        # a ChannelBind installs a permission for the peer: coturn checks the peer's address
        await asyncio.wait_for(client.channel_bind(0x4000, (peer, 9)), 10)
    finally:
        transport.close()


@pytest.mark.skipif(not shutil.which("turnserver"), reason=f"{TURNSERVER} is missing: apt-get install coturn")
@pytest.mark.parametrize("path", [COMPOSE_CONF, SYSTEMD_CONF], ids=["compose-k8s", "systemd"])
def test_the_deployed_coturn_relays_to_the_sfu_only(tmp_path: Path, path: Path) -> None:
    with Coturn(tmp_path, base=path, extra=(f"allowed-peer-ip={SFU}",)) as c:
        asyncio.run(_channel_to(c, SFU))
        with pytest.raises(stun.TransactionFailed) as info:
            asyncio.run(_channel_to(c, OTHER))
        assert info.value.response.attributes["ERROR-CODE"][0] == 403, info.value.response
