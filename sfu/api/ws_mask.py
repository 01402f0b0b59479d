"""RFC 6455 §5.1 on the server side: "a server MUST close the connection upon receiving a frame
that is not masked" (close code 1002).

aiohttp's ``WebSocketReader`` unmasks a masked frame and takes an unmasked one as it is, on both
sides.  ``MaskedWebSocketResponse`` puts ``MaskCheck`` in front of the reader it installs: it
follows the frame headers in the byte stream (headers only: payloads are skipped by length, never
copied) and, at the first frame without the MASK bit, stops feeding the reader and fails the
socket with a 1002 ``WebSocketError``, which ``receive()`` answers with a close frame.

The hook uses two private attributes of aiohttp's ``RequestHandler`` (``_payload_parser``,
``_message_tail``: present from 3.9, the project's floor, to 3.14 at least).  Should a future
aiohttp lack them, the socket is served unchecked and a warning is logged once.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

log = logging.getLogger(__name__)
_warned = False


class MaskCheck:
    """A stand-in for the WebSocket parser of one connection that refuses unmasked frames."""

    __slots__ = ("_inner", "_fail", "_head", "_skip", "_failed", "discard")

    def __init__(self, inner: Any, fail: Any) -> None:
        self._inner = inner
        # called once with the WebSocketError to raise in the reader; a bound method is held
        # weakly: the response holds this check, and a strong one back to it would make a cycle
        self._fail: Callable[[], Any] = weakref.WeakMethod(fail) if inspect.ismethod(fail) else (lambda: fail)
        self._head = b""  # the header bytes of the frame being read, until complete
        self._skip = 0  # payload bytes left in the current frame
        self._failed = False
        #: set: what arrives is read off the socket and thrown away, not parsed
        self.discard = False

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        if self.discard:
            return False, b""
        data = bytes(data)
        bad = self._scan(data)
        if bad < 0:
            result: tuple[bool, bytes] = self._inner.feed_data(data)
            return result
        if bad:  # the frames before the unmasked one are read as usual
            self._inner.feed_data(data[:bad])
        self._failed = True
        fail = self._fail()
        if fail is not None:
            fail(WebSocketError(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked (RFC 6455 §5.1)"))
        return True, b""

    def _scan(self, data: bytes) -> int:
        """Follow the frame headers in ``data``: where the first unmasked frame starts in it (0
        when its header began in an earlier chunk), or -1."""
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            head = self._head
            start = pos if not head else 0
            take = min(_header_length(head) - len(head), n - pos)
            head += data[pos : pos + take]
            pos += take
            if len(head) >= 2 and not head[1] & 0x80:
                return start
            if len(head) == _header_length(head):
                self._skip = _payload_length(head)
                head = b""
            self._head = head
        return -1


def _header_length(head: bytes) -> int:
    """The length of the header that starts with ``head`` (2 while that is not known yet)."""
    if len(head) < 2:
        return 2
    short = head[1] & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytes) -> int:
    short = head[1] & 0x7F
    if short == 126:
        return int.from_bytes(head[2:4], "big")
    if short == 127:
        return int.from_bytes(head[2:10], "big")
    return short


class MaskedWebSocketResponse(web.WebSocketResponse):
    """A server WebSocket that closes with 1002 at the first unmasked client frame."""

    _mask_check: MaskCheck | None = None

    def discard_input(self) -> None:
        """Parse nothing more the client sends (it is still read off the socket, so that the
        connection can end with a FIN rather than a reset once the client stops sending)."""
        if self._mask_check is not None:
            self._mask_check.discard = True

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        global _warned
        handler = request.protocol
        if not (hasattr(handler, "_payload_parser") and hasattr(handler, "_message_tail")):
            super()._post_start(request, protocol, writer)
            if not _warned:
                _warned = True
                log.warning("this aiohttp has no hook for the WebSocket mask check: unmasked frames are accepted")
            return
        tail = handler._message_tail  # bytes after the upgrade request: fed through the check below
        handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        inner = handler._payload_parser
        check = MaskCheck(inner, self._unmasked)
        handler._payload_parser = self._mask_check = check
        if tail:
            check.feed_data(tail)

    def _unmasked(self, exc: WebSocketError) -> None:
        reader = self._reader
        if reader is not None:
            reader.set_exception(exc)
