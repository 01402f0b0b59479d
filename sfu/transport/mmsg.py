"""Batched UDP I/O for the media port: Linux ``recvmmsg``/``sendmmsg`` through cffi's ABI mode.

A ring is ``count`` packet slots in one block of memory allocated through pylibsrtp's ffi (so
libsrtp protects and unprotects them in place), plus the ``mmsghdr``/``iovec`` vectors that point
at them and one ``sockaddr_in`` per slot.  The hot path touches those vectors only through
integer-indexed memoryviews (``lens``, ``iov_lens``, ``names``): no cffi attribute access and no
per-packet objects.

Addresses are IPv4 only (the media port is an ``AF_INET`` socket).  An address is carried as its
*key*: the first 8 bytes of its ``sockaddr_in`` (family, port, address) read as one native
integer, so a received datagram's sender is one dict lookup away from its peer and a send slot
is addressed with one store.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

import cffi
from pylibsrtp._binding import ffi as srtp_ffi

__all__ = ["MAX_VLEN", "RecvRing", "SendRing", "address_of_key", "key_of_address"]

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen;
    int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout);
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""

MSG_DONTWAIT = 0x40
#: Kernel cap on one sendmmsg/recvmmsg call (UIO_MAXIOV).
MAX_VLEN = 1024
_SOCKADDR_IN = 16

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_libc: Any = _ffi.dlopen(None)

_HDR = _ffi.sizeof("struct mmsghdr")
_LEN_OFF = _ffi.offsetof("struct mmsghdr", "msg_len")
_IOV = _ffi.sizeof("struct iovec")
_IOV_LEN_OFF = _ffi.offsetof("struct iovec", "iov_len")
assert _HDR % 4 == 0 and _LEN_OFF % 4 == 0 and _IOV % 8 == 0 and _IOV_LEN_OFF % 8 == 0
_FAMILY = struct.pack("=H", socket.AF_INET)


def key_of_address(host: str, port: int) -> int:
    """The key of an IPv4 ``(host, port)``; ValueError when it is not one."""
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    try:
        packed = socket.inet_aton(host)
    except OSError:
        raise ValueError(f"not an IPv4 address: {host!r}") from None
    return int.from_bytes(_FAMILY + struct.pack("!H", port) + packed, sys.byteorder)


def address_of_key(key: int) -> tuple[str, int]:
    """The ``(host, port)`` behind a key."""
    raw = key.to_bytes(8, sys.byteorder)
    return socket.inet_ntoa(raw[4:8]), (raw[2] << 8) | raw[3]


class _Ring:
    def __init__(self, count: int, slot_size: int) -> None:
        if not 0 < count <= MAX_VLEN:
            raise ValueError(f"ring size must be 1..{MAX_VLEN}, got {count}")
        if slot_size <= 0 or slot_size % 16:
            raise ValueError(f"slot size must be a positive multiple of 16, got {slot_size}")
        self.count = count
        self.slot_size = slot_size
        self._mem: Any = srtp_ffi.new("unsigned char[]", count * slot_size)
        base = int(srtp_ffi.cast("uintptr_t", self._mem))
        #: slot pointers typed for pylibsrtp's ``lib`` (``srtp_protect`` takes them as they are)
        self.ptrs: list[Any] = [srtp_ffi.cast("unsigned char *", base + i * slot_size) for i in range(count)]
        whole = memoryview(srtp_ffi.buffer(self._mem))
        #: one writable view per slot, ``slot_size`` bytes each
        self.views: list[memoryview] = [whole[i * slot_size : (i + 1) * slot_size] for i in range(count)]
        self._iovs: Any = _ffi.new("struct iovec[]", count)
        self._msgs: Any = _ffi.new("struct mmsghdr[]", count)
        self._names: Any = _ffi.new("unsigned char[]", count * _SOCKADDR_IN)
        names_base = int(_ffi.cast("uintptr_t", self._names))
        for i in range(count):
            self._iovs[i].iov_base = _ffi.cast("void *", base + i * slot_size)
            self._iovs[i].iov_len = slot_size
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = _ffi.addressof(self._iovs, i)
            hdr.msg_iovlen = 1
            hdr.msg_name = _ffi.cast("void *", names_base + i * _SOCKADDR_IN)
            hdr.msg_namelen = _SOCKADDR_IN
        #: ``lens[i * LEN_STRIDE + LEN_INDEX]`` is slot i's ``msg_len``
        self.lens = memoryview(_ffi.buffer(self._msgs)).cast("I")
        #: ``iov_lens[i * 2 + 1]`` is slot i's ``iov_len``
        self.iov_lens = memoryview(_ffi.buffer(self._iovs)).cast("Q")
        #: ``names[i * 2]`` is slot i's address key (the rest of its sockaddr_in stays zero)
        self.names = memoryview(_ffi.buffer(self._names)).cast("Q")


LEN_STRIDE = _HDR // 4
LEN_INDEX = _LEN_OFF // 4
assert _IOV == 16 and _IOV_LEN_OFF == 8


class RecvRing(_Ring):
    """Receive slots: ``recv`` fills slots ``0..n-1``; slot i's length is ``length(i)`` and its
    sender's key ``names[2 * i]``."""

    def recv(self, fd: int, vlen: int) -> int:
        """Up to ``vlen`` datagrams without blocking: their count, or ``-errno`` (EAGAIN too)."""
        n: int = _libc.recvmmsg(fd, self._msgs, vlen, MSG_DONTWAIT, _ffi.NULL)
        if n < 0:
            return -int(_ffi.errno)
        return n

    def length(self, i: int) -> int:
        return int(self.lens[i * LEN_STRIDE + LEN_INDEX])


class SendRing(_Ring):
    """Send slots filled in order: write slot ``n``, set ``iov_lens[2n + 1]`` and ``names[2n]``,
    then ``n += 1``; ``send`` hands slots ``0..n-1`` to the kernel and empties the ring."""

    def __init__(self, count: int, slot_size: int) -> None:
        super().__init__(count, slot_size)
        #: slots filled and not sent yet
        self.n = 0
        #: false while the owner batches (it flushes itself); true: a writer sends each packet
        self.auto_flush = True

    def send(self, fd: int) -> tuple[int, list[int]]:
        """Send the filled slots; returns (sent, errnos of the datagrams the kernel refused).

        A refused datagram is dropped and the rest still go out; on EAGAIN/ENOBUFS (socket
        buffer full) every remaining one is dropped, one errno each.
        """
        vlen = self.n
        self.n = 0
        done = 0
        sent = 0
        refused: list[int] = []
        msgs = self._msgs
        while done < vlen:
            k: int = _libc.sendmmsg(fd, _ffi.addressof(msgs, done), vlen - done, 0)
            if k > 0:
                done += k
                sent += k
                continue
            err = int(_ffi.errno) if k < 0 else 0
            if err in (11, 105):  # EAGAIN, ENOBUFS: the rest would fail the same way now
                refused.extend([err] * (vlen - done))
                break
            refused.append(err)  # e.g. ECONNREFUSED left by an earlier ICMP error: skip this one
            done += 1
        return sent, refused

    def discard(self) -> None:
        self.n = 0
