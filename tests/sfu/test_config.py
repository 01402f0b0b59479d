"""The node's configuration: TOML file < LEVELCHAT_SFU_* environment < flags, rejected keys and
values named in the error, the dev-mode loopback guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from levelchat.config import ConfigError
from sfu.config import DEV_KEYS, SRTP_PROFILE_NAMES, NodeConfig, load

S1 = "s1-" + "x" * 32
KEYS = {"LEVELCHAT_SFU_API_KEYS": f"k1={S1}"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sfu.toml"
    path.write_text(text)
    return str(path)


# -- layers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flags", "expected"),
    [
        (None, None, None, 7880),
        (1001, None, None, 1001),
        (1001, "2002", None, 2002),
        (1001, "2002", 3003, 3003),
        (None, "2002", 3003, 3003),
        (1001, None, 3003, 3003),
        (None, "2002", None, 2002),
    ],
)
def test_file_then_env_then_flags(
    tmp_path: Path, in_file: int | None, in_env: str | None, in_flags: int | None, expected: int
) -> None:
    file = write(tmp_path, f"http_port = {in_file}\n") if in_file is not None else None
    env = dict(KEYS)
    if in_env is not None:
        env["LEVELCHAT_SFU_HTTP_PORT"] = in_env
    flags = {"http_port": in_flags} if in_flags is not None else {"http_port": None}
    cfg = load(file=file, environ=env, flags=flags)
    assert cfg.http_port == expected


def test_every_kind_of_value_from_each_layer(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        """
node_id = "n1"
api_keys = { "filekey" = "filesecret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }
default_codecs = ["opus", "VP8"]
auto_create_rooms = false
max_rooms = 7
srtp_profiles = ["AEAD_AES_128_GCM"]
""",
    )
    env = {
        "LEVELCHAT_SFU_REGION": "eu-1",
        "LEVELCHAT_SFU_MAX_PARTICIPANTS": "50",
        "LEVELCHAT_SFU_LOG_JSON": "yes",
        "LEVELCHAT_SFU_CORS_ORIGINS": "https://a.example,https://b.example",
        "LEVELCHAT_CONTROL_WHATEVER": "ignored: another prefix",
        "PATH": "/usr/bin",
    }
    cfg = load(file=file, environ=env, flags={"media-port": 9000, "dtls_role": "active"})
    assert cfg.node_id == "n1" and cfg.region == "eu-1"
    assert cfg.api_keys == {"filekey": "filesecret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
    assert cfg.default_codecs == ("opus", "VP8")
    assert cfg.auto_create_rooms is False and cfg.log_json is True
    assert cfg.max_rooms == 7 and cfg.max_participants == 50
    assert cfg.srtp_profiles == ("AEAD_AES_128_GCM",)
    assert cfg.cors_origins == ("https://a.example", "https://b.example")
    assert cfg.media_port == 9000 and cfg.dtls_role == "active"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k1=s1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", {"k1": "s1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}),
        (
            "k1=s1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx,k2=s2xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            {"k1": "s1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "k2": "s2xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
        ),
        ('{"k3": "s3xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}', {"k3": "s3xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}),
    ],
)
def test_api_keys_from_the_environment(value: str, expected: dict[str, str]) -> None:
    assert load(environ={"LEVELCHAT_SFU_API_KEYS": value}).api_keys == expected


def test_defaults() -> None:
    cfg = load(environ=KEYS)
    assert (cfg.http_host, cfg.http_port, cfg.media_host, cfg.media_port) == (
        "127.0.0.1",
        7880,
        "127.0.0.1",
        7882,
    )
    assert cfg.srtp_profiles == SRTP_PROFILE_NAMES and cfg.dtls_role == "passive" and not cfg.dev
    assert cfg.advertised_ip == "127.0.0.1"
    assert cfg.url() == "http://127.0.0.1:7880" and cfg.url(9999) == "http://127.0.0.1:9999"
    assert (cfg.signaling_join_timeout_s, cfg.signaling_heartbeat_s) == (10.0, 20.0)
    assert (cfg.signaling_frames_per_s, cfg.signaling_send_queue_bytes) == (50, 1 << 20)
    assert cfg.signaling_resume_grace_s == 15.0


# -- rejected keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("file", "unknown setting 'bogus_key'"),
        ("env", "unknown environment setting LEVELCHAT_SFU_BOGUS_KEY"),
        ("flags", "unknown setting 'bogus_key'"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, layer: str, message: str) -> None:
    env = dict(KEYS)
    file = None
    flags: dict[str, Any] = {}
    if layer == "file":
        file = write(tmp_path, "bogus_key = 1\n")
    elif layer == "env":
        env["LEVELCHAT_SFU_BOGUS_KEY"] = "1"
    else:
        flags["bogus-key"] = 1
    with pytest.raises(ConfigError) as info:
        load(file=file, environ=env, flags=flags)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('http_port = "eighty"', "http_port"),
        ("max_rooms = true", "max_rooms"),
        ("dev = 3", "dev"),
        ('api_keys = "not a table"', "api_keys"),
        ("node_id = 5", "node_id"),
        ("srtp_profiles = 1", "srtp_profiles"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(file=write(tmp_path, toml + "\n"), environ=KEYS)
    assert str(info.value).startswith(key)


@pytest.mark.parametrize(
    "problem",
    ["missing", "not-toml"],
)
def test_unreadable_files(tmp_path: Path, problem: str) -> None:
    path = (
        tmp_path / "missing.toml" if problem == "missing" else Path(write(tmp_path, "this is = = not toml"))
    )
    with pytest.raises(ConfigError, match=str(path.name)):
        load(file=str(path), environ=KEYS)


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"http_port": 70000}, "http_port"),
        ({"media_port": -1}, "media_port"),
        ({"media_host": "media.example"}, "media_host"),
        ({"public_ip": "not-an-ip"}, "public_ip"),
        ({"media_host": "0.0.0.0"}, "public_ip"),
        ({"srtp_profiles": ["SRTP_NULL"]}, "srtp_profiles"),
        ({"srtp_profiles": []}, "srtp_profiles"),
        ({"default_max_participants": 0}, "default_max_participants"),
        ({"max_participants": 0}, "max_participants"),
        ({"max_rooms": 0}, "max_rooms"),
        ({"dtls_role": "actpass"}, "dtls_role"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"rate_limit_ip_per_s": -1.0}, "rate_limit_ip_per_s"),
        ({"rate_limit_key_per_s": 5.0, "rate_limit_key_burst": 0}, "rate_limit_key_burst"),
        ({"self_check_interval_s": 0.0}, "self_check_interval_s"),
        ({"self_check_failures": 0}, "self_check_failures"),
        ({"control_url": "ftp://control"}, "control_url"),
        ({"session_setup_timeout_s": 0.0}, "session_setup_timeout_s"),
        ({"dtls_handshake_threads": -1}, "dtls_handshake_threads"),
        ({"dtls_handshake_threads": 17}, "dtls_handshake_threads"),
        ({"max_media_sections": 65}, "max_media_sections"),
        ({"max_ssrcs": 0}, "max_ssrcs"),
        ({"max_published_tracks": 257}, "max_published_tracks"),
        ({"signaling_join_timeout_s": 0.0}, "signaling_join_timeout_s"),
        ({"signaling_heartbeat_s": -1.0}, "signaling_heartbeat_s"),
        ({"signaling_frames_per_s": 0}, "signaling_frames_per_s"),
        ({"signaling_send_queue_bytes": 100}, "signaling_send_queue_bytes"),
        ({"signaling_resume_grace_s": -1.0}, "signaling_resume_grace_s"),
        ({"signaling_resume_grace_s": 601.0}, "signaling_resume_grace_s"),
        ({"recording_retention_days": -1.0}, "recording_retention_days"),
        ({"max_recordings": 1001}, "max_recordings"),
        ({"recording_max_bytes": 1000}, "recording_max_bytes"),
        ({"recording_start_timeout_s": 0.0}, "recording_start_timeout_s"),
        ({"pacer_factor": 0.5}, "pacer_factor"),
        ({"pacer_burst_ms": 0.0}, "pacer_burst_ms"),
        ({"pacer_max_delay_ms": 10_000.0}, "pacer_max_delay_ms"),
    ],
)
def test_validation_errors_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=KEYS, flags=settings)
    assert key in str(info.value)


def test_api_keys_are_required_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="api_keys"):
        load(environ={})


def test_wildcard_media_host_with_a_public_ip() -> None:
    cfg = load(environ=KEYS, flags={"media_host": "0.0.0.0", "public_ip": "127.0.0.2"})
    assert cfg.advertised_ip == "127.0.0.2"


# -- public_ip: one address, or an IPv4 and an IPv6 (issue 13) ------------------------------------


@pytest.mark.parametrize(
    ("media_host", "given", "advertised"),
    [
        ("127.0.0.1", None, ("127.0.0.1",)),
        ("::1", None, ("::1",)),
        ("0.0.0.0", "203.0.113.5", ("203.0.113.5",)),
        ("::", "203.0.113.5", ("203.0.113.5",)),
        ("::", "2001:db8::5", ("2001:db8::5",)),
        ("::", ["2001:db8::5", "203.0.113.5"], ("203.0.113.5", "2001:db8::5")),  # IPv4 first
        ("::", "203.0.113.5,2001:db8::5", ("203.0.113.5", "2001:db8::5")),  # the environment's form
        ("::", '["203.0.113.5", "2001:db8::5"]', ("203.0.113.5", "2001:db8::5")),
        ("2001:db8::9", "2001:db8::5", ("2001:db8::5",)),
        ("10.0.0.2", ["203.0.113.5"], ("203.0.113.5",)),
    ],
)
def test_public_ip_takes_one_address_or_one_per_family(media_host: str, given: Any, advertised: tuple[str, ...]) -> None:
    flags: dict[str, Any] = {"media_host": media_host}
    if given is not None:
        flags["public_ip"] = given
    cfg = load(environ=KEYS, flags=flags)
    assert cfg.advertised_ips == advertised and cfg.advertised_ip == advertised[0]


def test_public_ip_from_the_environment_and_a_toml_list(tmp_path: Path) -> None:
    env = {**KEYS, "LEVELCHAT_SFU_MEDIA_HOST": "::", "LEVELCHAT_SFU_PUBLIC_IP": "2001:db8::5,198.51.100.7"}
    assert load(environ=env).advertised_ips == ("198.51.100.7", "2001:db8::5")
    path = tmp_path / "sfu.toml"
    path.write_text('media_host = "::"\npublic_ip = ["198.51.100.7", "2001:db8::5"]\n')
    assert load(file=str(path), environ=KEYS).public_ip == ("198.51.100.7", "2001:db8::5")


@pytest.mark.parametrize(
    ("media_host", "given", "message"),
    [
        ("::", "not-an-ip", "'not-an-ip' is not an IP address"),
        ("::", "fe80::1%eth0", "is not an IP address"),
        ("::", ["198.51.100.7", "203.0.113.5"], "at most one IPv4 and one IPv6 address, got two IPv4"),
        ("::", ["2001:db8::5", "2001:db8::6"], "got two IPv6"),
        ("::", ["198.51.100.7", "2001:db8::5", "203.0.113.5"], "got two IPv4"),
        ("0.0.0.0", "2001:db8::5", 'is IPv6 but media_host 0.0.0.0 listens on IPv4 only (media_host = "::"'),
        ("127.0.0.1", ["127.0.0.1", "::1"], "::1 is IPv6 but media_host 127.0.0.1 listens on IPv4 only"),
        ("::1", "127.0.0.1", "127.0.0.1 is IPv4 but media_host ::1 listens on IPv6 only"),
        ("::", "0.0.0.0", "cannot be a candidate address"),
        ("::", "::", "cannot be a candidate address"),
        ("::", "ff02::1", "cannot be a candidate address"),
        ("::", "::ffff:198.51.100.7", "IPv4-mapped address: write 198.51.100.7"),
        ("::", 42, "public_ip"),
        ("::", [], "public_ip must be set when media_host is a wildcard"),
    ],
)
def test_public_ip_errors_say_what_is_wrong(media_host: str, given: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=KEYS, flags={"media_host": media_host, "public_ip": given})
    assert message in str(info.value)


# -- dev mode -------------------------------------------------------------------------------------------


def test_dev_mode_defaults() -> None:
    cfg = load(dev=True, environ={})
    assert cfg.dev and cfg.api_keys == DEV_KEYS and cfg.project == "levelchat"
    assert (cfg.http_host, cfg.http_port, cfg.media_host, cfg.media_port) == (
        "127.0.0.1",
        7880,
        "127.0.0.1",
        7882,
    )
    assert cfg.auto_create_rooms


@pytest.mark.parametrize(
    ("flags", "refused_key"),
    [
        ({"http_host": "0.0.0.0"}, "http_host"),
        ({"media_host": "10.1.2.3"}, "media_host"),
        ({"http_host": "192.168.1.5", "media_host": "127.0.0.1"}, "http_host"),
        ({"http_host": "127.0.0.5", "media_host": "127.0.0.9"}, None),
        ({"http_host": "::1", "media_host": "::1"}, None),
        ({"http_host": "localhost"}, None),
        ({"http_host": "0.0.0.0", "dev_allow_remote": True}, None),
        ({"media_host": "10.1.2.3", "dev-allow-remote": "true"}, None),
    ],
)
def test_dev_mode_loopback_guard(flags: dict[str, Any], refused_key: str | None) -> None:
    if refused_key is None:
        cfg = load(dev=True, environ={}, flags=flags)
        assert cfg.dev
    else:
        with pytest.raises(ConfigError) as info:
            load(dev=True, environ={}, flags=flags)
        message = str(info.value)
        assert f"{refused_key}=" in message and "--dev-allow-remote" in message


def test_dev_guard_applies_to_hosts_from_the_file_and_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http_host"):
        load(dev=True, file=write(tmp_path, 'http_host = "0.0.0.0"\n'), environ={})
    with pytest.raises(ConfigError, match="media_host"):
        load(dev=True, environ={"LEVELCHAT_SFU_MEDIA_HOST": "10.0.0.1"})


def test_the_config_is_frozen() -> None:
    cfg = NodeConfig(api_keys={"k": "s" * 32})
    cfg.validate()
    with pytest.raises(AttributeError):
        cfg.http_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({}, "http://127.0.0.1:7880"),
        (
            {"http_host": "0.0.0.0", "media_host": "0.0.0.0", "public_ip": "127.0.0.7"},
            "http://127.0.0.7:7880",
        ),
        ({"http_host": "::1"}, "http://[::1]:7880"),
        (
            {"http_host": "::", "media_host": "::", "public_ip": "2001:db8::1"},
            "http://[2001:db8::1]:7880",
        ),
        ({"public_url": "https://sfu.example/"}, "https://sfu.example"),
    ],
)
def test_url_is_a_valid_url_for_every_host(settings: dict[str, Any], url: str) -> None:
    assert load(environ=KEYS, flags=settings).url() == url


def test_short_secrets_are_refused_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="k1 is shorter than 32"):
        load(environ={"LEVELCHAT_SFU_API_KEYS": "k1=short"})
    assert load(dev=True, environ={}).api_keys == DEV_KEYS  # the dev key is short on purpose


def test_api_keys_accept_the_control_planes_kid_colon_secret_form_too() -> None:
    secret = "s" * 32
    cfg = load(environ={"LEVELCHAT_SFU_API_KEYS": f"a:{secret},b={secret}:x"})
    assert cfg.api_keys == {"a": secret, "b": f"{secret}:x"}


def test_cross_origin_calls_are_off_outside_dev_mode() -> None:
    assert load(environ=KEYS).cors_origins == ()
    assert load(dev=True, environ={}).cors_origins is None  # dev allows any origin


# -- forwarding workers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("", None, 1),  # the default: one process, no front
        ("workers = 3", None, 3),
        ('workers = "auto"', None, "auto"),
        ('workers = "auto"', "2", 2),  # a number per host from the environment
        ("workers = 3", "auto", "auto"),
    ],
)
def test_workers_from_file_and_env(tmp_path: Path, toml: str, env: str | None, expected: int | str) -> None:
    environ = {**KEYS, **({"LEVELCHAT_SFU_WORKERS": env} if env is not None else {})}
    cfg = load(file=write(tmp_path, toml), environ=environ)
    assert cfg.workers == expected
    if expected == "auto":
        assert cfg.worker_count >= 1
    else:
        assert cfg.worker_count == expected


@pytest.mark.parametrize("value", [0, -2, "many", "", True])
def test_workers_must_be_a_positive_number_or_auto(value: Any) -> None:
    with pytest.raises(ConfigError, match="workers"):
        load(environ=KEYS, flags={"workers": value})


def test_the_media_port_range_must_fit() -> None:
    with pytest.raises(ConfigError, match="media_port"):
        load(environ=KEYS, flags={"workers": 4, "media_port": 65534})
    assert load(environ=KEYS, flags={"workers": 2, "media_port": 65534}).worker_count == 2


def test_recordings_directory_defaults_under_the_state_directory(tmp_path: Path) -> None:
    cfg = load(environ=KEYS, flags={"data_dir": str(tmp_path)})
    assert cfg.recordings_path == str(tmp_path / "recordings")
    assert load(environ=KEYS, flags={"recordings_dir": "/srv/recs"}).recordings_path == "/srv/recs"
    env = {**KEYS, "LEVELCHAT_SFU_RECORDINGS_DIR": str(tmp_path / "r"), "LEVELCHAT_SFU_MAX_RECORDINGS": "2"}
    cfg = load(environ=env)
    assert (cfg.recordings_path, cfg.max_recordings) == (str(tmp_path / "r"), 2)


def test_pacing_settings_reach_the_pacer() -> None:
    config = load(environ=KEYS, flags={"pacer_factor": 1.5, "pacer_max_delay_ms": 250.0})
    pacing = config.pacing()
    assert (pacing.factor, pacing.burst_ms, pacing.max_delay_ms) == (1.5, 5.0, 250.0)
