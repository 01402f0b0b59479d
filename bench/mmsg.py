"""recvmmsg/sendmmsg from libc through cffi's ABI mode (no compiler needed), on preallocated slots.

A ``Ring`` owns ``count`` packet slots of ``SLOT_SIZE`` bytes (allocated through pylibsrtp's ffi so
libsrtp can work on them in place) and an ``mmsghdr`` array pointing at them.  Slot ``i`` can carry
a fixed destination address (for sending) or none (for receiving).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from pylibsrtp._binding import ffi as srtp_ffi

from bench.srtpkit import SLOT_SIZE
from sfu.transport.mmsg import MAX_VLEN, MSG_DONTWAIT, ffi, libc  # one cffi definition of the calls

EAGAIN = 11


def sockaddr_in(host: str, port: int) -> bytes:
    """A ``struct sockaddr_in`` as bytes (little-endian host, x86-64/aarch64 Linux)."""
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)


class Ring:
    """``count`` packet slots plus the mmsghdr vector that points at them."""

    def __init__(self, count: int, dests: list[bytes] | None = None) -> None:
        if not 0 < count <= MAX_VLEN:
            raise ValueError(f"ring size must be 1..{MAX_VLEN}, got {count}")
        self.count = count
        self.mem: Any = srtp_ffi.new("unsigned char[]", count * SLOT_SIZE)
        base = int(srtp_ffi.cast("uintptr_t", self.mem))
        #: Slot pointers typed for pylibsrtp's lib (srtp_protect/unprotect take them directly).
        self.ptrs: list[Any] = [srtp_ffi.cast("void *", base + i * SLOT_SIZE) for i in range(count)]
        #: A writable view of all slots: slot i starts at i * SLOT_SIZE.
        self.view = memoryview(srtp_ffi.buffer(self.mem))
        self.iovs: Any = ffi.new("struct iovec[]", count)
        self.msgs: Any = ffi.new("struct mmsghdr[]", count)
        self._names: list[Any] = []
        for i in range(count):
            self.iovs[i].iov_base = ffi.cast("void *", base + i * SLOT_SIZE)
            self.iovs[i].iov_len = SLOT_SIZE
            hdr = self.msgs[i].msg_hdr
            hdr.msg_iov = ffi.addressof(self.iovs, i)
            hdr.msg_iovlen = 1
            if dests:
                name = ffi.new("unsigned char[]", dests[i % len(dests)])
                self._names.append(name)
                hdr.msg_name = name
                hdr.msg_namelen = len(dests[i % len(dests)])

    def recv(self, fd: int, vlen: int) -> int:
        """Receive up to ``vlen`` datagrams without blocking; 0 when nothing is queued."""
        for i in range(vlen):
            self.iovs[i].iov_len = SLOT_SIZE
        n = int(libc.recvmmsg(fd, self.msgs, vlen, MSG_DONTWAIT, ffi.NULL))
        if n < 0:
            if ffi.errno == EAGAIN:
                return 0
            raise OSError(ffi.errno, "recvmmsg failed")
        return n

    def length(self, i: int) -> int:
        return int(self.msgs[i].msg_len)

    def set_length(self, i: int, length: int) -> None:
        self.iovs[i].iov_len = length

    def send(self, fd: int, vlen: int) -> int:
        """Send slots ``0..vlen-1`` to their addresses; returns how many the kernel refused."""
        done = 0
        refused = 0
        while done < vlen:
            n = int(libc.sendmmsg(fd, ffi.addressof(self.msgs, done), vlen - done, 0))
            if n <= 0:
                if n < 0 and ffi.errno not in (EAGAIN, 111):  # 111: ECONNREFUSED from an earlier ICMP
                    raise OSError(ffi.errno, "sendmmsg failed")
                done += 1  # drop the datagram the kernel would not take
                refused += 1
                continue
            done += n
        return refused
