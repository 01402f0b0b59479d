"""The node's typed configuration: TOML file < environment (``LEVELCHAT_SFU_*``) < flags."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from levelchat.config import ConfigError, build, from_env, is_loopback, load_toml
from levelchat.httpserver import HttpConfig
from levelchat.webhooks.model import WebhookConfig
from sfu.transport.pacer import PacingConfig
from sfu.turn import TurnServer, validate_servers

ENV_PREFIX = "LEVELCHAT_SFU_"
SRTP_PROFILE_NAMES = ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80")
DEV_KEYS = {"devkey": "secret"}
#: HS256 secrets shorter than this are refused outside dev mode (RFC 7518 §3.2)
MIN_SECRET_LENGTH = 32
DEFAULT_CODECS = ("opus", "VP8", "VP9", "H264", "AV1")
MAX_CONTROL_URLS = 16
DEFAULT_TCP_PORT = 7881


@dataclass(frozen=True)
class NodeConfig(HttpConfig, WebhookConfig):
    node_id: str = ""
    region: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 7880
    media_host: str = "127.0.0.1"
    media_port: int = 7882
    #: ICE-TCP (RFC 6544): the TCP media port, offered as a passive candidate beside the UDP one
    #: (0 = any free port; unset: 7881, or any free port when ``media_port`` is 0);
    #: ``ice_tcp = false`` turns it off.  Connections in total and per client address; a
    #: connection not bound to a session by a valid STUN check this long after it opened is
    #: closed; unsent bytes a connection may hold before its packets are dropped
    ice_tcp: bool = True
    tcp_port: int | None = None
    tcp_max_connections: int = 8192
    tcp_max_connections_per_ip: int = 64
    tcp_bind_timeout_s: float = 5.0
    tcp_send_buffer_bytes: int = 131_072
    #: TURN relays (coturn with ``use-auth-secret``): ``[{urls = ["turn:host:3478?transport=udp",
    #: "turns:host:443?transport=tcp"], secret = "...", ttl_s = 3600}]``; each session is handed a
    #: credential minted from the secret, valid ``ttl_s`` (``sfu.turn``)
    turn_servers: tuple[TurnServer, ...] = ()
    #: the addresses put in ICE candidates (NAT 1:1): one, or a list of at most one IPv4 and one
    #: IPv6 address (a TOML list, or comma-separated in the environment and ``--public-ip``); an
    #: IPv6 one needs ``media_host = "::"`` (dual-stack) or an IPv6 address, an IPv4 one
    #: ``"::"`` or an IPv4 address.  Empty = ``media_host`` (which must then be specific)
    public_ip: tuple[str, ...] = ()
    #: the URL clients and the control plane reach this node's HTTP API at; empty = derived
    public_url: str = ""
    api_keys: dict[str, str] = field(default_factory=dict)
    project: str = "levelchat"
    control_url: str = ""
    #: several control-plane replicas (sharing one store): the agent fails over between them;
    #: ``control_url``, when also set, is tried first
    control_urls: tuple[str, ...] = ()
    dev: bool = False
    dev_allow_remote: bool = False
    auto_create_rooms: bool = True
    default_max_participants: int = 100
    max_participants: int = 1000  # node-wide
    max_rooms: int = 200
    default_codecs: tuple[str, ...] = DEFAULT_CODECS
    default_empty_timeout_s: int = 300
    srtp_profiles: tuple[str, ...] = SRTP_PROFILE_NAMES
    #: DTLS role answered to an ``actpass`` offer: "passive" (node is DTLS server) or "active"
    dtls_role: str = "passive"
    #: browser origins allowed to call the API from another origin; None: any (dev mode's default)
    cors_origins: tuple[str, ...] | None = ()
    #: token buckets on WHIP/WHEP/room API/signaling; a rate of 0 turns that limit off
    rate_limit_ip_per_s: float = 20.0
    rate_limit_ip_burst: int = 100
    rate_limit_key_per_s: float = 200.0
    rate_limit_key_burst: int = 1000
    #: SIGTERM or the admin drain call: how long live rooms may go on before they are closed
    drain_deadline_s: float = 300.0
    self_check_interval_s: float = 10.0
    self_check_deadline_ms: int = 1000
    self_check_failures: int = 3  # consecutive failures that make the node unhealthy
    self_check_recoveries: int = 2  # consecutive passes that make it healthy again
    max_loop_lag_ms: int = 500
    #: after a revocation, live sessions are kept this long, then closed
    revoke_drain_s: float = 30.0
    #: the bitrate each video publisher is told it may send (REMB, once a second, to publishers that
    #: negotiated goog-remb): enough for three simulcast layers up to 720p; 0 sends no REMB
    publisher_max_bitrate_bps: int = 3_000_000
    #: negotiate transport-wide congestion control with publishers that offer it (the
    #: transport-wide-cc header extension, ``transport-cc`` feedback): the node sends them
    #: transport-cc feedback every ``publisher_twcc_interval_ms`` while their packets arrive, so
    #: their own estimator adapts what they send to their uplink (the REMB above stays the upper
    #: bound); false: REMB only, as before
    publisher_transport_cc: bool = True
    publisher_twcc_interval_ms: int = 100
    #: pacing of each subscriber transport that has a bandwidth estimate (transport-cc or REMB):
    #: its packets leave at the estimate x ``pacer_factor``, up to ``pacer_burst_ms`` of that rate
    #: at once; the excess waits (audio never does, retransmissions before video) at most
    #: ``pacer_max_delay_ms`` (then it is dropped and counted: ``sfu_pacer_dropped_total``)
    pacer_factor: float = 2.5
    pacer_burst_ms: float = 5.0
    pacer_max_delay_ms: float = 500.0
    #: a subscriber offer unanswered this long is sent again; unanswered again, the session ends
    subscriber_offer_timeout_s: float = 10.0
    #: signaling WebSocket (``/v1/rtc``): a socket that has not joined a room this long after it
    #: opened is closed (1008); the node pings a socket quiet this long and drops it when the pong
    #: does not come within half as long; frames per second a socket may send (more are dropped and
    #: counted; requests among the first as many again get ``rate_limited``); bytes of frames queued
    #: for a client that does not read before the socket is closed (1008)
    signaling_join_timeout_s: float = 10.0
    signaling_heartbeat_s: float = 20.0
    signaling_frames_per_s: int = 50
    signaling_send_queue_bytes: int = 1_048_576
    #: a signaling participant whose socket was lost (no close frame, or a close other than 1000/1001)
    #: keeps its seat, tracks and media transports this long for a ``join`` with its ``resume``
    #: token; 0 frees the seat at once
    signaling_resume_grace_s: float = 15.0
    log_json: bool = False
    log_level: str = "INFO"
    #: forwarding worker processes: an integer >= 1, or "auto" (one per core); with more than one,
    #: ``python -m sfu`` is a front process (``sfu.workers``) and worker i uses ``media_port + i``
    workers: int | str = 1
    #: with several workers: spread every room's WebSocket participants evenly over the workers
    #: (relays carry the room between them, sfu.workers.relay); otherwise a room spreads only when
    #: its worker is full (its ``max_participants``).  For tests and operators who want it
    relay_spread: bool = False
    #: data channels: each participant's relayed messages and bytes per second (token buckets
    #: holding two seconds' worth); more is dropped and counted
    data_messages_per_s: float = 100.0
    data_bytes_per_s: float = 1_048_576.0
    #: a transport that has not completed ICE and DTLS this long after its offer is closed (and
    #: its session with it)
    session_setup_timeout_s: float = 30.0
    #: threads that run DTLS handshake steps (ECDHE, ECDSA) beside the forwarding loop; 0 runs
    #: them on the loop itself
    dtls_handshake_threads: int = 2
    #: what one offer (WHIP, WHEP, the WebSocket ``publish``) may declare: audio/video/data
    #: sections, and ``a=ssrc`` SSRCs over all of them (Chrome's simulcast video with RTX is 6)
    max_media_sections: int = 16
    max_ssrcs: int = 32
    #: tracks one participant may publish at once (a simulcast video is one per layer)
    max_published_tracks: int = 16
    #: serve the demo page (``/``, ``/static/``, the dev token helper); unset: in dev mode only
    demo_page: bool | None = None
    #: the node's state directory (empty: ``$XDG_STATE_HOME/levelchat``, else
    #: ``~/.local/state/levelchat``): the webhook queue (``WebhookConfig``: an empty
    #: ``webhooks_db`` is ``<data_dir>/webhooks-<node id>.db``; ``:memory:`` is not durable, for tests)
    data_dir: str = ""
    #: recordings (``sfu.recording``): the directory (empty: ``<data_dir>/recordings``, the
    #: state directory above when ``data_dir`` is empty), finished recordings kept this many days
    #: (0: forever; a sweeper removes older ones), recordings at once on this node, bytes one
    #: recording may write (its files stop growing there, marked ``truncated``), and how long a
    #: recorder process may take to start
    recordings_dir: str = ""
    recording_retention_days: float = 7.0
    max_recordings: int = 4
    recording_max_bytes: int = 2 << 30
    recording_start_timeout_s: float = 20.0

    @property
    def state_dir(self) -> str:
        return self.data_dir or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"), "levelchat"
        )

    @property
    def recordings_path(self) -> str:
        return self.recordings_dir or os.path.join(self.state_dir, "recordings")
    #: usage accounting (issue 14, ``levelchat.usage``): the SQLite file (empty:
    #: ``<data_dir>/usage-<node id>.db``; in dev mode without a ``data_dir``, ``:memory:``), the
    #: day of the month (UTC) each period starts, how often the meter is written to it, and the
    #: participant-minutes a period may use before new joins get ``quota_exceeded`` (0: no quota)
    usage_db: str = ""
    usage_period_start_day: int = 1
    usage_flush_s: float = 5.0
    quota_participant_minutes: float = 0.0

    def usage_db_at(self, http_port: int) -> str:
        if self.usage_db:
            return self.usage_db
        if self.dev and not self.data_dir:
            return ":memory:"
        return os.path.join(self.state_dir, f"usage-{self.node_id_at(http_port)}.db")


    def webhooks_db_at(self, http_port: int) -> str:
        """The webhook queue's SQLite file for the node bound to ``http_port``."""
        if self.webhooks_db:
            return self.webhooks_db
        return os.path.join(self.state_dir, f"webhooks-{self.node_id_at(http_port)}.db")

    @property
    def serves_demo_page(self) -> bool:
        return self.dev if self.demo_page is None else self.demo_page

    def pacing(self) -> PacingConfig:
        """How subscriber transports pace their packets (``sfu.transport.pacer``)."""
        return PacingConfig(factor=self.pacer_factor, burst_ms=self.pacer_burst_ms, max_delay_ms=self.pacer_max_delay_ms)

    def validate(self) -> None:
        for name in ("http_port", "media_port", "tcp_port"):
            value = getattr(self, name) if name != "tcp_port" else self.ice_tcp_port
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name}: {value} is not a port number")
        try:
            media = ipaddress.ip_address(self.media_host)
        except ValueError:
            raise ConfigError(f"media_host: {self.media_host!r} is not an IP address") from None
        if self.public_ip:
            check_public_ips(self.public_ip, media)
        elif self.media_host in ("0.0.0.0", "::"):
            raise ConfigError("public_ip must be set when media_host is a wildcard address")
        if not self.api_keys:
            raise ConfigError("api_keys: at least one API key is needed (or run with --dev)")
        if not self.dev:
            short = [kid for kid, secret in self.api_keys.items() if len(secret) < MIN_SECRET_LENGTH]
            if short:
                raise ConfigError(f"api_keys: the secret of {', '.join(short)} is shorter than {MIN_SECRET_LENGTH} characters")
        for name in self.srtp_profiles:
            if name not in SRTP_PROFILE_NAMES:
                raise ConfigError(f"srtp_profiles: unknown profile {name!r}")
        if not self.srtp_profiles:
            raise ConfigError("srtp_profiles: at least one profile is needed")
        for name in ("default_max_participants", "max_participants", "max_rooms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.dev and not self.dev_allow_remote:
            for name in ("http_host", "media_host"):
                if not is_loopback(getattr(self, name)):
                    raise ConfigError(
                        f"dev mode listens on loopback only ({name}={getattr(self, name)}); "
                        "pass --dev-allow-remote to override"
                    )
        for limit in ("rate_limit_ip", "rate_limit_key"):
            rate, burst = getattr(self, f"{limit}_per_s"), getattr(self, f"{limit}_burst")
            if rate < 0:
                raise ConfigError(f"{limit}_per_s: {rate} must be >= 0 (0 turns the limit off)")
            if rate > 0 and burst < 1:
                raise ConfigError(f"{limit}_burst: {burst} must be at least 1 while {limit}_per_s is on")
        if self.drain_deadline_s < 0:
            raise ConfigError("drain_deadline_s must be >= 0")
        if self.self_check_interval_s <= 0 or self.self_check_deadline_ms <= 0:
            raise ConfigError("self_check_interval_s and self_check_deadline_ms must be positive")
        if self.self_check_failures < 1 or self.self_check_recoveries < 1:
            raise ConfigError("self_check_failures and self_check_recoveries must be at least 1")
        if not 0 <= self.publisher_max_bitrate_bps <= 1 << 40:
            raise ConfigError(f"publisher_max_bitrate_bps: {self.publisher_max_bitrate_bps} must be between 0 and 2^40")
        if not 20 <= self.publisher_twcc_interval_ms <= 500:
            raise ConfigError(
                f"publisher_twcc_interval_ms: {self.publisher_twcc_interval_ms} must be between 20 and 500"
            )
        for name, low, high in (("pacer_factor", 1, 10), ("pacer_burst_ms", 1, 100), ("pacer_max_delay_ms", 50, 5000)):
            if not low <= getattr(self, name) <= high:  # PacingConfig's bounds
                raise ConfigError(f"{name}: {getattr(self, name)} must be between {low} and {high}")
        if self.subscriber_offer_timeout_s <= 0:
            raise ConfigError(f"subscriber_offer_timeout_s: {self.subscriber_offer_timeout_s} must be positive")
        for name in ("signaling_join_timeout_s", "signaling_heartbeat_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"{name}: {getattr(self, name)} must be positive (at most 3600)")
        if not 0 <= self.signaling_resume_grace_s <= 600:
            raise ConfigError(f"signaling_resume_grace_s: {self.signaling_resume_grace_s} must be between 0 and 600")
        if self.signaling_frames_per_s < 1:
            raise ConfigError(f"signaling_frames_per_s: {self.signaling_frames_per_s} must be at least 1")
        if not 4096 <= self.signaling_send_queue_bytes <= 1 << 30:
            raise ConfigError(f"signaling_send_queue_bytes: {self.signaling_send_queue_bytes} must be between 4096 and 2^30")
        if self.revoke_drain_s < 0:
            raise ConfigError(f"revoke_drain_s: {self.revoke_drain_s} must not be negative")
        if self.control_url and not self.control_url.startswith(("http://", "https://")):
            raise ConfigError(f"control_url: {self.control_url!r} must be an http(s) URL")
        for url in self.control_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"control_urls: {url!r} must be an http(s) URL")
        if len(self.control_urls) > MAX_CONTROL_URLS:
            raise ConfigError(f"control_urls: at most {MAX_CONTROL_URLS} URLs")
        if self.dtls_role not in ("passive", "active"):
            raise ConfigError(f"dtls_role: {self.dtls_role!r} must be 'passive' or 'active'")
        if self.data_messages_per_s <= 0 or self.data_bytes_per_s <= 0:
            raise ConfigError("data_messages_per_s and data_bytes_per_s must be positive")
        if not 0 <= self.dtls_handshake_threads <= 16:
            raise ConfigError(f"dtls_handshake_threads: {self.dtls_handshake_threads} must be from 0 to 16")
        if self.session_setup_timeout_s <= 0:
            raise ConfigError(f"session_setup_timeout_s: {self.session_setup_timeout_s} must be positive")
        for name, ceiling in (("max_media_sections", 64), ("max_ssrcs", 1024), ("max_published_tracks", 256)):
            if not 1 <= getattr(self, name) <= ceiling:
                raise ConfigError(f"{name}: {getattr(self, name)} must be from 1 to {ceiling}")
        for problem in self.http_limits.problems() + self.webhook_settings.problems():
            raise ConfigError(problem)
        for hook in self.webhooks:
            if hook.key and hook.key not in self.api_keys:
                raise ConfigError(f"webhooks: key {hook.key!r} of {hook.url} is not one of the API keys")
        if len(self.webhooks) > self.webhooks_max_endpoints:
            raise ConfigError(f"webhooks: at most {self.webhooks_max_endpoints} endpoints (webhooks_max_endpoints)")
        if not 1 <= self.usage_period_start_day <= 28:
            raise ConfigError(f"usage_period_start_day: {self.usage_period_start_day} must be from 1 to 28")
        if not 0.05 <= self.usage_flush_s <= 3600:
            raise ConfigError(f"usage_flush_s: {self.usage_flush_s} must be from 0.05 to 3600 seconds")
        if self.quota_participant_minutes < 0:
            raise ConfigError(f"quota_participant_minutes: {self.quota_participant_minutes} must be >= 0 (0: no quota)")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level: {self.log_level!r}")
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"workers: {self.workers!r} must be an integer >= 1 or \"auto\"")
        if self.media_port and self.media_port + self.worker_count - 1 > 65535:
            raise ConfigError(f"media_port: {self.media_port} + {self.worker_count} workers runs past port 65535")
        if self.ice_tcp and self.ice_tcp_port + self.worker_count - 1 > 65535:
            raise ConfigError(f"tcp_port: {self.ice_tcp_port} + {self.worker_count} workers runs past port 65535")
        for name, low, high in (
            ("tcp_max_connections", 1, 1_000_000),
            ("tcp_max_connections_per_ip", 1, 1_000_000),
            ("tcp_send_buffer_bytes", 4096, 1 << 30),
        ):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"{name}: {getattr(self, name)} must be from {low} to {high}")
        validate_servers(self.turn_servers)
        if not self.dev:
            for server in self.turn_servers:
                if len(server.secret) < MIN_SECRET_LENGTH:
                    raise ConfigError(
                        f"turn_servers: the secret of {server.urls[0]} is shorter than {MIN_SECRET_LENGTH} characters"
                        " (anyone who guesses it can mint TURN credentials)"
                    )
        if not 0 <= self.recording_retention_days <= 36500:
            raise ConfigError(f"recording_retention_days: {self.recording_retention_days} must be from 0 to 36500")
        if not 0 <= self.max_recordings <= 1000:
            raise ConfigError(f"max_recordings: {self.max_recordings} must be from 0 to 1000")
        if not 1 << 16 <= self.recording_max_bytes <= 1 << 50:
            raise ConfigError(f"recording_max_bytes: {self.recording_max_bytes} must be from 2^16 to 2^50")
        if not 0 < self.recording_start_timeout_s <= 600:
            raise ConfigError(f"recording_start_timeout_s: {self.recording_start_timeout_s} must be positive (at most 600)")
        if not 0 < self.tcp_bind_timeout_s <= 3600:
            raise ConfigError(f"tcp_bind_timeout_s: {self.tcp_bind_timeout_s} must be positive (at most 3600)")

    @property
    def ice_tcp_port(self) -> int:
        """The TCP port to listen on for ICE-TCP: ``tcp_port``, or when it is unset 7881 (any free
        port while ``media_port`` is 0, as in tests)."""
        if self.tcp_port is not None:
            return self.tcp_port
        return DEFAULT_TCP_PORT if self.media_port else 0

    @property
    def worker_count(self) -> int:
        """How many forwarding worker processes: ``workers``, or the number of cores for "auto"."""
        if isinstance(self.workers, int):
            return self.workers
        return max(1, os.cpu_count() or 1)

    @property
    def control_endpoints(self) -> tuple[str, ...]:
        """The control-plane URLs to register with, in order, without duplicates or a trailing
        slash: ``control_url`` first, then ``control_urls``; empty = no control plane."""
        urls = ((self.control_url,) if self.control_url else ()) + self.control_urls
        return tuple(dict.fromkeys(u.rstrip("/") for u in urls))

    @property
    def advertised_ips(self) -> tuple[str, ...]:
        """The addresses of the node's host candidates, IPv4 first: ``public_ip`` or ``media_host``."""
        ips = self.public_ip or (self.media_host,)
        return tuple(sorted(ips, key=lambda ip: ":" in ip))

    @property
    def advertised_ip(self) -> str:
        """The first of ``advertised_ips`` (the IPv4 one when there are two)."""
        return self.advertised_ips[0]

    @property
    def effective_node_id(self) -> str:
        return self.node_id_at(self.http_port)

    def node_id_at(self, http_port: int) -> str:
        """``node_id``, or one made of the host name and the HTTP port the node is bound to."""
        return self.node_id or f"node-{socket.gethostname()}-{http_port}"

    def url(self, http_port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.http_host if self.http_host not in ("0.0.0.0", "::") else self.advertised_ip
        if ":" in host:  # an IPv6 literal goes in brackets (RFC 3986)
            host = f"[{host}]"
        return f"http://{host}:{http_port or self.http_port}"


def check_public_ips(ips: tuple[str, ...], media: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """``public_ip``: at most one IPv4 and one IPv6 address, each usable as a candidate and each
    reachable through a socket bound to ``media`` (``::`` takes both families)."""
    seen: dict[int, str] = {}
    for text in ips:
        try:
            if "%" in text:  # a link-local scope means nothing to a remote client
                raise ValueError(text)
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"public_ip: {text!r} is not an IP address (without a %scope)") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"public_ip: {text} cannot be a candidate address (unspecified or multicast)")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            raise ConfigError(f"public_ip: {text} is an IPv4-mapped address: write {ip.ipv4_mapped}")
        if ip.version in seen:
            raise ConfigError(
                f"public_ip: at most one IPv4 and one IPv6 address, got two IPv{ip.version} ({seen[ip.version]}, {text})"
            )
        seen[ip.version] = text
        if media.version != ip.version and str(media) != "::":
            raise ConfigError(
                f"public_ip: {text} is IPv{ip.version} but media_host {media} listens on IPv{media.version} only"
                + (' (media_host = "::" listens on both)' if ip.version == 6 else "")
            )


DEV_DEFAULTS: Mapping[str, Any] = {
    "dev": True,
    "api_keys": DEV_KEYS,
    "project": "levelchat",
    "http_host": "127.0.0.1",
    "http_port": 7880,
    "media_host": "127.0.0.1",
    "media_port": 7882,
    "auto_create_rooms": True,
    "cors_origins": None,
}


class HttpBound:
    """The public address and identity of what serves the API (a node, or a multi-worker front)
    once its HTTP port is bound (``http_port``; 0 in ``config`` means any free port)."""

    config: NodeConfig
    http_port: int

    @property
    def url(self) -> str:
        return self.config.url(self.http_port)

    @property
    def node_id(self) -> str:
        return self.config.node_id_at(self.http_port)


def load(
    *,
    file: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    dev: bool = False,
) -> NodeConfig:
    layers: list[Mapping[str, Any]] = []
    if dev:
        layers.append(DEV_DEFAULTS)
    if file:
        layers.append(load_toml(file))
    layers.append(from_env(NodeConfig, ENV_PREFIX, environ))
    if flags:
        layers.append({k: v for k, v in flags.items() if v is not None})
    return build(NodeConfig, *layers)
