"""TURN servers (a coturn with ``use-auth-secret``) and the credentials the node mints for them.

``turn_servers = [{urls = [...], secret = "...", ttl_s = 3600}]`` in the node's config
(``shared/design/contracts.md``, "Connectivity").  Each session gets, per server, a credential of
the TURN REST API that coturn's ``use-auth-secret`` checks: username ``<expiry unix>:<identity>``,
credential ``base64(HMAC-SHA1(secret, username))``.  The node hands them out as WHIP/WHEP
``Link: <url>; rel="ice-server"; ...`` headers (RFC 9725 §4.6) and as RTCIceServer objects in the
WebSocket ``join`` result.

An identity that is not a plain token (``IDENTITY_SAFE``) is replaced in the username by a digest
of it: coturn only reads the timestamp, and a username must survive a quoted HTTP header
parameter and a STUN USERNAME attribute unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

from levelchat.config import ConfigError

MAX_SERVERS = 8
MAX_URLS = 16
MAX_URL_LENGTH = 512
MIN_TTL_S = 60
MAX_TTL_S = 7 * 86400
DEFAULT_PORTS = {"turn": 3478, "turns": 5349}
IDENTITY_SAFE = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
#: ``turn[s]:host[:port][?transport=udp|tcp]`` (RFC 7065), IPv6 literals in brackets
TURN_URL = re.compile(r"(?P<scheme>turns?):(?P<host>\[[^\]]*\]|[^:?\[\]/@]+)(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>[a-z]+))?")
#: one ``Link`` header value of an ICE server (RFC 9725 §4.6), as ``parse_link`` reads it back
LINK = re.compile(r'\s*<(?P<url>[^>]*)>(?P<params>(?:\s*;\s*[a-z-]+="(?:[^"\\]|\\.)*")*)\s*')
LINK_PARAM = re.compile(r'\s*;\s*(?P<name>[a-z-]+)="(?P<value>(?:[^"\\]|\\.)*)"')


class Transport(Enum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class TurnUrl:
    """A ``turn:``/``turns:`` URI: TURN over UDP or TCP, or over TLS (``turns``, TCP only: no
    browser speaks TURN over DTLS)."""

    secure: bool
    host: str
    port: int
    transport: Transport

    @classmethod
    def parse(cls, text: str) -> TurnUrl:
        if len(text) > MAX_URL_LENGTH:
            raise ValueError(f"{text[:40]!r}... is longer than {MAX_URL_LENGTH} characters")
        m = TURN_URL.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a TURN URL (turn:host[:port][?transport=udp|tcp], or turns:)")
        secure = m["scheme"] == "turns"
        host = m["host"]
        if host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
        elif not HOST_NAME.fullmatch(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or IPv4 address")
        port = int(m["port"]) if m["port"] else DEFAULT_PORTS[m["scheme"]]
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is not from 1 to 65535")
        name = m["transport"] or ("tcp" if secure else "udp")
        try:
            transport = Transport(name)
        except ValueError:
            raise ValueError(f"{text!r}: transport {name!r} must be udp or tcp") from None
        if secure and transport is Transport.UDP:
            raise ValueError(f"{text!r}: turns (TLS) runs over tcp; TURN over DTLS is not offered to browsers")
        return cls(secure, host, port, transport)

    def __str__(self) -> str:
        return f"{'turns' if self.secure else 'turn'}:{self.host}:{self.port}?transport={self.transport.value}"


@dataclass(frozen=True)
class TurnServer:
    """One coturn (or several behind the same secret): its URLs, the ``static-auth-secret`` it
    shares with the node, and how long a minted credential lives."""

    urls: tuple[str, ...] = ()
    secret: str = ""
    ttl_s: int = 3600

    def validate(self) -> None:
        if not self.urls:
            raise ConfigError("urls: at least one turn: or turns: URL is needed")
        if len(self.urls) > MAX_URLS:
            raise ConfigError(f"urls: at most {MAX_URLS}")
        for url in self.urls:
            try:
                TurnUrl.parse(url)
            except ValueError as exc:
                raise ConfigError(f"urls: {exc}") from None
        if not self.secret or self.secret.strip() != self.secret:
            raise ConfigError("secret: the coturn static-auth-secret is needed (non-empty, no surrounding spaces)")
        if not MIN_TTL_S <= self.ttl_s <= MAX_TTL_S:
            raise ConfigError(f"ttl_s: {self.ttl_s} must be from {MIN_TTL_S} to {MAX_TTL_S}")

    @property
    def parsed_urls(self) -> tuple[TurnUrl, ...]:
        return tuple(TurnUrl.parse(u) for u in self.urls)


@dataclass(frozen=True)
class IceServer:
    """An RTCIceServer: URLs and the credential minted for them."""

    urls: tuple[str, ...]
    username: str
    credential: str

    def to_json(self) -> dict[str, object]:
        return {"urls": list(self.urls), "username": self.username, "credential": self.credential}

    def link_values(self) -> list[str]:
        """One ``Link`` header value per URL (RFC 9725 §4.6)."""
        user, cred = _quote(self.username), _quote(self.credential)
        return [
            f'<{url}>; rel="ice-server"; username="{user}"; credential="{cred}"; credential-type="password"'
            for url in self.urls
        ]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def username_for(identity: str, expires_s: int) -> str:
    """``<expiry unix>:<identity>``; an identity outside ``IDENTITY_SAFE`` by a digest of it."""
    if not IDENTITY_SAFE.fullmatch(identity):
        identity = "h-" + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{expires_s}:{identity}"


def credential_for(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, coturn's ``use-auth-secret`` password."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def mint(server: TurnServer, identity: str, now_s: float) -> IceServer:
    username = username_for(identity, int(now_s) + server.ttl_s)
    return IceServer(tuple(str(u) for u in server.parsed_urls), username, credential_for(server.secret, username))


def mint_all(servers: tuple[TurnServer, ...], identity: str, now_s: float) -> list[IceServer]:
    return [mint(s, identity, now_s) for s in servers]


def parse_link(value: str) -> IceServer | None:
    """An ICE server from one ``Link`` header value, or None when it is another kind of link;
    ``ValueError`` when it is not a link at all (what a WHIP/WHEP client reads)."""
    m = LINK.fullmatch(value)
    if m is None:
        raise ValueError(f"{value[:80]!r} is not a Link header value")
    params = {p["name"]: re.sub(r"\\(.)", r"\1", p["value"]) for p in LINK_PARAM.finditer(m["params"])}
    if params.get("rel") != "ice-server":
        return None
    return IceServer((m["url"],), params.get("username", ""), params.get("credential", ""))


def validate_servers(servers: tuple[TurnServer, ...]) -> None:
    if len(servers) > MAX_SERVERS:
        raise ConfigError(f"turn_servers: at most {MAX_SERVERS} entries")
