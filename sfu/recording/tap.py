"""A recording's packet buffer and the taps that fill it (``PublishedTrack.tap``, per packet).

The buffer is preallocated (``BUFFER_BYTES``); a tap writes a frame header (``wire.HEADER``) and
the packet into it, or drops the packet and counts it when it is full (the recorder is behind and
the buffer was not handed to it).  ``take`` hands what is buffered over (a copy) and empties it.
"""

from __future__ import annotations

from collections.abc import Callable

from cffi import FFI

from sfu.recording.wire import HEADER, MAX_TRACKS, Kind

_ffi = FFI()
_memmove = _ffi.memmove

BUFFER_BYTES = 1 << 20
_RTP = Kind.RTP

Tap = Callable[[memoryview, int, int], None]


class TapBuffer:
    def __init__(self, size: int = BUFFER_BYTES) -> None:
        self.buf = bytearray(size)
        self._base = _ffi.from_buffer(self.buf)  # the buffer's address, for the taps' copies
        self.fill = 0
        self.dropped = [0] * MAX_TRACKS  # per track index

    def make_tap(self, index: int) -> Tap:
        buf = self.buf
        cap = len(buf)
        size = HEADER.size
        pack = HEADER.pack_into
        dropped = self.dropped
        base = self._base

        def tap(view: memoryview, length: int, now_ms: int) -> None:
            f = self.fill
            end = f + size + length
            if end > cap:
                dropped[index] += 1
                return
            pack(buf, f, _RTP, index, length, now_ms & 0xFFFFFFFF)
            _memmove(base + (f + size), view, length)  # no slice objects (a third of the cost)
            self.fill = end

        return tap

    def put(self, data: bytes) -> bool:
        """A control frame after what is buffered; False when it does not fit."""
        if self.fill + len(data) > len(self.buf):
            return False
        self.buf[self.fill : self.fill + len(data)] = data
        self.fill += len(data)
        return True

    def take(self) -> bytes:
        """What is buffered (one copy: the pipe's transport may keep what it is given), emptied."""
        data = bytes(memoryview(self.buf)[: self.fill])
        self.fill = 0
        return data
