"""The lite client over ICE-TCP (RFC 6544 active side, RFC 4571 framing).

``TcpLiteEndpoint`` is a ``LiteEndpoint`` that connects to the node's passive TCP candidate
instead of its UDP one: every STUN, DTLS and SRTP packet goes out as one frame (a 2-byte
length, then the packet) on that connection, and frames read from it are handled as datagrams.
Writes the kernel does not take at once wait in a bounded buffer (``MAX_PENDING``; more is
dropped, as a real client would lose it).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Callable

from sfu.client.lite import LiteEndpoint
from sfu.transport.certificate import Certificate
from sfu.transport.srtp import SrtpProfile

_TCP_CANDIDATE = re.compile(r"^a=candidate:\S+ 1 tcp \d+ (\S+) (\d+) typ host tcptype passive$", re.MULTILINE)
_LEN = struct.Struct("!H")
MAX_PENDING = 4 * 1024 * 1024
MAX_FRAME = 2048


def tcp_candidate(answer_text: str, *, ipv6: bool | None = None) -> tuple[str, int]:
    """The (first IPv4 or IPv6, when ``ipv6`` says) passive TCP host candidate of an answer;
    ValueError when it has none."""
    for ip, port in _TCP_CANDIDATE.findall(answer_text.replace("\r\n", "\n")):
        if ipv6 is None or (":" in ip) == ipv6:
            return ip, int(port)
    raise ValueError("the answer has no passive TCP candidate" + ("" if ipv6 is None else " of the client's family"))


class TcpLiteEndpoint(LiteEndpoint):
    """A lite client whose media goes over one TCP connection to the node's TCP candidate."""

    def __init__(
        self,
        certificate: Certificate,
        *,
        host: str = "127.0.0.1",
        srtp_profiles: list[SrtpProfile] | None = None,
        on_rtp: Callable[[memoryview, int], None] | None = None,
        on_rtcp: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(certificate, host=host, srtp_profiles=srtp_profiles, on_rtp=on_rtp, on_rtcp=on_rtcp)
        self._host = host
        self._inbuf = bytearray()
        self._pending = bytearray()
        self.dropped_writes = 0
        self.reading = True
        #: SO_RCVBUF of the connection when set before ``connect`` (a small one stalls sooner)
        self.recv_buffer = 0

    async def connect(
        self, answer_text: str, timeout_s: float = 5.0, address: tuple[str, int] | None = None
    ) -> None:
        """Connect to the answer's TCP candidate (or ``address``), then ICE and DTLS over it."""
        target = address or tcp_candidate(answer_text, ipv6=":" in self._host)
        loop = asyncio.get_running_loop()
        self.sock.close()
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.recv_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
        sock.bind((self._host, 0))
        sock.setblocking(False)
        self.sock = sock
        await asyncio.wait_for(loop.sock_connect(sock, target), timeout_s)
        await super().connect(answer_text, timeout_s, address=target)

    def stop_reading(self) -> None:
        """Read nothing more (a stalled client): what the node sends piles up."""
        self.reading = False
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass

    def _send_raw(self, data: bytes | memoryview) -> None:
        if self.sock.fileno() < 0:
            return
        framed = _LEN.pack(len(data)) + bytes(data)
        if self._pending:
            self._queue(framed)
            return
        try:
            sent = self.sock.send(framed)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(framed):
            self._queue(framed[sent:])

    def _queue(self, data: bytes) -> None:
        if len(self._pending) + len(data) > MAX_PENDING:
            self.dropped_writes += 1
            return
        first = not self._pending
        self._pending += data
        if first and self._loop is not None:
            self._loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(self._pending)
        del self._pending[:sent]
        if not self._pending and self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the node closed the connection
            if self._loop is not None:
                try:
                    self._loop.remove_reader(self.sock.fileno())
                except (ValueError, OSError):
                    pass
            return
        buf = self._inbuf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if pos + 2 + n > len(buf):
                break
            if 0 < n <= MAX_FRAME:
                self.view[:n] = buf[pos + 2 : pos + 2 + n]
                self._on_datagram(n)
            pos += 2 + n
        del buf[:pos]

    def close(self) -> None:
        if self._loop is not None and self._pending:
            try:
                self._loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass
        super().close()
