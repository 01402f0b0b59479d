"""A real coturn (Debian's ``turnserver``) for tests: ``use-auth-secret`` with a generated secret,
on loopback, with a self-signed certificate for TURN over TLS, every port chosen free.

``Coturn`` writes its ``turnserver.conf`` (and the pid file, the user database and the log) in
a directory of its own, starts it, and is ready once it answers a STUN Binding request on its
UDP port.  ``allow-loopback-peers`` is needed because the SFU node is on 127.0.0.1 too (coturn
refuses loopback peers by default, as it should in production).
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
REALM = "levelchat.test"
RELAY_PORTS = 64  # relay ports per coturn: plenty for a test's few allocations


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def free_range(count: int) -> int:
    """The first of ``count`` consecutive UDP ports that are free now, in the ephemeral range's
    upper part (so other tests' ports rarely collide with it)."""
    for _ in range(200):
        first = 40000 + secrets.randbelow(20000)
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def self_signed(directory: Path, name: str = "turn.test") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def stun_binding_answered(port: int, timeout_s: float = 0.2) -> bool:
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data = s.recv(2048)
        except OSError:
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == request[8:20]


@dataclass
class Coturn:
    """``turnserver`` on 127.0.0.1: ``port`` (TURN over UDP and TCP), ``tls_port`` (TURN over TLS),
    relayed addresses from ``relay_ports`` (``min_port`` .. ``max_port``)."""

    directory: Path
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    tls_port: int = 0
    min_port: int = 0
    extra: tuple[str, ...] = ()
    #: a turnserver.conf (deploy/'s) that the test's settings follow, and so override
    base: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def max_port(self) -> int:
        return self.min_port + RELAY_PORTS - 1

    @property
    def relay_ports(self) -> range:
        return range(self.min_port, self.max_port + 1)

    @property
    def log_path(self) -> Path:
        return self.directory / "turnserver.log"

    def config(self) -> str:
        cert, key = self_signed(self.directory)
        lines = [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={self.port}",
            f"tls-listening-port={self.tls_port}",
            f"min-port={self.min_port}",
            f"max-port={self.max_port}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={REALM}",
            "allow-loopback-peers",
            "no-multicast-peers",
            "no-cli",
            "no-dtls",
            "no-tlsv1",
            "no-tlsv1_1",
            f"cert={cert}",
            f"pkey={key}",
            f"pidfile={self.directory / 'turnserver.pid'}",
            f"userdb={self.directory / 'turndb'}",
            f"log-file={self.log_path}",
            "simple-log",
            "no-stdout-log",
            "verbose",
            *self.extra,
        ]
        head = self.base.read_text() + "\n" if self.base is not None else ""
        return head + "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 20.0) -> Coturn:
        self.port = self.port or free_port()
        self.tls_port = self.tls_port or free_port()
        self.min_port = self.min_port or free_range(RELAY_PORTS)
        conf = self.directory / "turnserver.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(
            [TURNSERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while not stun_binding_answered(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver did not answer STUN in {timeout_s} s: {self.log()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
