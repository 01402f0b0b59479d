"""TURN servers in the node's config, the credentials it mints, and a real coturn taking them.

The credentials are those of coturn's ``use-auth-secret`` (TURN REST API): checked here against
``turnserver`` itself with aioice's TURN client (an Allocate over UDP, TCP and TLS), and a
credential past its expiry, or minted from another secret, is refused by it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from levelchat.config import ConfigError
from sfu.__main__ import main
from sfu.config import load
from sfu.turn import (
    IceServer,
    Transport,
    TurnServer,
    TurnUrl,
    credential_for,
    mint,
    mint_all,
    parse_link,
    username_for,
)
from tests.coturn import TURNSERVER, Coturn

KEYS = {"LEVELCHAT_SFU_API_KEYS": "k1=s1-" + "x" * 32}
SECRET = "s3cret-" + "x" * 32
GOOD = {"urls": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:443?transport=tcp"], "secret": SECRET}
needs_coturn = pytest.mark.skipif(not shutil.which("turnserver"), reason=f"{TURNSERVER} is missing: apt-get install coturn")


def test_turn_servers_load_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[[turn_servers]]\nurls = ["turn:10.0.0.5"]\nsecret = "{SECRET}"\nttl_s = 600\n')
    cfg = load(file=str(path), environ=KEYS)
    assert cfg.turn_servers == (TurnServer(urls=("turn:10.0.0.5",), secret=SECRET, ttl_s=600),)
    env = {**KEYS, "LEVELCHAT_SFU_TURN_SERVERS": f'[{{"urls": ["turns:t.example:5349"], "secret": "{SECRET}"}}]'}
    assert load(environ=env).turn_servers == (TurnServer(urls=("turns:t.example:5349",), secret=SECRET, ttl_s=3600),)
    assert load(environ=KEYS).turn_servers == ()


def test_a_short_turn_secret_is_refused_outside_dev_mode() -> None:
    server = {"urls": ["turn:10.0.0.5"], "secret": "change-me"}
    with pytest.raises(ConfigError, match="turn_servers: the secret of turn:10.0.0.5 is shorter than 32 characters"):
        load(environ=KEYS, flags={"turn_servers": [server]})
    assert load(dev=True, environ={}, flags={"turn_servers": [server]}).turn_servers[0].secret == "change-me"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("turn:10.0.0.5", TurnUrl(False, "10.0.0.5", 3478, Transport.UDP)),
        ("turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=udp"),
        ("turn:turn.example.com:80?transport=tcp", "turn:turn.example.com:80?transport=tcp"),
        ("turns:turn.example.com", "turns:turn.example.com:5349?transport=tcp"),
        ("turns:turn.example.com:443?transport=tcp", "turns:turn.example.com:443?transport=tcp"),
        ("turn:[2001:db8::1]:3478", "turn:[2001:db8::1]:3478?transport=udp"),
    ],
)
def test_turn_urls_parse_and_render_in_full(text: str, parsed: object) -> None:
    url = TurnUrl.parse(text)
    if isinstance(parsed, str):
        assert str(url) == parsed
    else:
        assert url == parsed


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"urls": [], "secret": "s"}, "at least one turn: or turns: URL"),
        ({"urls": ["stun:turn.example.com"], "secret": "s"}, "is not a TURN URL"),
        ({"urls": ["http://turn.example.com"], "secret": "s"}, "is not a TURN URL"),
        ({"urls": ["turn:"], "secret": "s"}, "is not a TURN URL"),
        ({"urls": ["turn:turn.example.com:0"], "secret": "s"}, "port 0 is not from 1 to 65535"),
        ({"urls": ["turn:turn.example.com:70000"], "secret": "s"}, "port 70000"),
        ({"urls": ["turn:turn.example.com?transport=sctp"], "secret": "s"}, "transport 'sctp' must be udp or tcp"),
        ({"urls": ["turns:turn.example.com?transport=udp"], "secret": "s"}, "turns \\(TLS\\) runs over tcp"),
        ({"urls": ["turn:bad_host!:3478"], "secret": "s"}, "is not a host name"),
        ({"urls": ["turn:[::zz]:3478"], "secret": "s"}, "is not an IPv6 address"),
        ({"urls": ["turn:user@host"], "secret": "s"}, "is not a TURN URL"),
        ({"urls": ["turn:a.example"]}, "secret: the coturn static-auth-secret is needed"),
        ({"urls": ["turn:a.example"], "secret": " s "}, "secret"),
        ({"urls": ["turn:a.example"], "secret": "s", "ttl_s": 10}, "ttl_s: 10 must be from 60 to 604800"),
        ({"urls": ["turn:a.example"], "secret": "s", "ttl": 600}, "unknown setting 'ttl'"),
        ({"urls": ["turn:a.example"] * 17, "secret": "s"}, "at most 16"),
        ("turn:a.example", "is not a table"),
    ],
)
def test_a_malformed_turn_server_is_refused_by_name(server: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^turn_servers: .*{message}"):
        load(environ=KEYS, flags={"turn_servers": [server]})


def test_at_most_eight_turn_servers() -> None:
    with pytest.raises(ConfigError, match="turn_servers: at most 8"):
        load(environ=KEYS, flags={"turn_servers": [GOOD] * 9})


def test_the_node_refuses_to_start_on_a_malformed_turn_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text('api_keys = {k1 = "' + "x" * 40 + '"}\n[[turn_servers]]\nurls = ["turn:turn.example.com:99999"]\nsecret = "s"\n')
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "configuration error: turn_servers: urls: 'turn:turn.example.com:99999': port 99999 is not from 1 to 65535" in err


def test_credentials_are_those_of_the_turn_rest_api() -> None:
    server = TurnServer(urls=tuple(GOOD["urls"]), secret="s3cret", ttl_s=600)
    ice = mint(server, "alice", now_s=1_000_000.7)
    assert ice.username == "1000600:alice"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1000600:alice", hashlib.sha1).digest()).decode()
    assert ice.credential == expected == credential_for("s3cret", "1000600:alice") == "WArXTW1V1HCEEN+krrm2umr8b4c="  # openssl dgst -sha1 -hmac s3cret -binary | base64
    assert ice.to_json() == {"urls": list(GOOD["urls"]), "username": "1000600:alice", "credential": expected}
    assert mint_all((server, server), "bob", 0.0)[1].username == "600:bob"


@pytest.mark.parametrize(
    ("identity", "username"),
    [
        ("alice", "5:alice"),
        ("a.b-c_d@example.com+1", "5:a.b-c_d@example.com+1"),
        ('quote"back\\slash', "5:h-" + hashlib.sha256(b'quote"back\\slash').hexdigest()[:24]),
        ("émile", "5:h-" + hashlib.sha256("émile".encode()).hexdigest()[:24]),
        ("with:colon", "5:h-" + hashlib.sha256(b"with:colon").hexdigest()[:24]),
        ("x" * 129, "5:h-" + hashlib.sha256(b"x" * 129).hexdigest()[:24]),
    ],
)
def test_identities_that_are_not_plain_tokens_are_digested(identity: str, username: str) -> None:
    assert username_for(identity, 5) == username


def test_link_headers_round_trip() -> None:
    ice = IceServer(("turn:h:1?transport=udp", "turns:h:443?transport=tcp"), '7:a"b', "c\\d=")
    values = ice.link_values()
    assert values[0] == '<turn:h:1?transport=udp>; rel="ice-server"; username="7:a\\"b"; credential="c\\\\d="; credential-type="password"'
    assert [parse_link(v) for v in values] == [IceServer((u,), '7:a"b', "c\\d=") for u in ice.urls]
    assert parse_link('<https://example.com/>; rel="next"') is None
    with pytest.raises(ValueError, match="not a Link header value"):
        parse_link("turn:h:1")


# -- a real coturn -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if not shutil.which("turnserver"):
        pytest.skip(f"{TURNSERVER} is missing: apt-get install coturn")
    with Coturn(tmp_path_factory.mktemp("coturn")) as c:
        yield c


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, object]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait((data, addr))


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # coturn's certificate is the test's own self-signed one
    return ctx


async def _allocate(coturn: Coturn, ice: IceServer, transport: str, tls: bool = False) -> tuple[str, int]:
    port = coturn.tls_port if tls else coturn.port
    turn, _sink = await asyncio.wait_for(
        create_turn_endpoint(
            Sink, ("127.0.0.1", port), ice.username, ice.credential, transport=transport, ssl=_tls() if tls else None
        ),
        10,
    )
    try:
        relayed: tuple[str, int] = turn.get_extra_info("sockname")
        return relayed
    finally:
        turn.close()


@needs_coturn
@pytest.mark.parametrize(("transport", "tls"), [("udp", False), ("tcp", False), ("tcp", True)])
def test_coturn_allocates_with_a_minted_credential(coturn: Coturn, transport: str, tls: bool) -> None:
    ice = mint(TurnServer(urls=("turn:127.0.0.1",), secret=coturn.secret, ttl_s=300), "alice", time.time())
    host, port = asyncio.run(_allocate(coturn, ice, transport, tls))
    assert host == "127.0.0.1" and port in coturn.relay_ports, (host, port)


@needs_coturn
@pytest.mark.parametrize(
    ("secret", "expired"),
    [("other-secret", False), (None, True)],
    ids=["another-secret", "expired"],
)
def test_coturn_refuses_a_wrong_or_expired_credential(coturn: Coturn, secret: str | None, expired: bool) -> None:
    server = TurnServer(urls=("turn:127.0.0.1",), secret=secret or coturn.secret, ttl_s=60)
    ice = mint(server, "mallory", time.time() - (3600 if expired else 0))  # expired an hour ago less a minute
    with pytest.raises(stun.TransactionFailed) as info:
        asyncio.run(_allocate(coturn, ice, "udp"))
    assert info.value.response.attributes["ERROR-CODE"][0] == 401, info.value.response


@needs_coturn
def test_coturn_takes_two_secrets_while_one_is_rotated(tmp_path: Path) -> None:
    """docs/operations.md: add the new static-auth-secret, switch the nodes, drop the old one."""
    new = "n3w-" + "y" * 32
    with Coturn(tmp_path, extra=(f"static-auth-secret={new}",)) as c:
        for secret in (c.secret, new):
            ice = mint(TurnServer(urls=("turn:127.0.0.1",), secret=secret, ttl_s=300), "alice", time.time())
            assert asyncio.run(_allocate(c, ice, "udp"))[1] in c.relay_ports
