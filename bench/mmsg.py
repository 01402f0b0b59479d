"""recvmmsg/sendmmsg from libc through cffi's ABI mode (no compiler needed), on preallocated slots.

A ``Ring`` owns ``count`` packet slots of ``SLOT_SIZE`` bytes (allocated through pylibsrtp's ffi so
libsrtp can work on them in place) and an ``mmsghdr`` array pointing at them.  Slot ``i`` can carry
a fixed destination address (for sending) or none (for receiving).  ``lens``/``iov_lens`` are
integer views of the vectors, so a hot loop reads a received length or sets a send length with one
index operation instead of a cffi attribute chain.

``StampedRecvRing`` is a receive ring with one control buffer per slot for the kernel's receive
timestamp (``SO_TIMESTAMPNS``, turned on per socket with ``enable_rx_timestamps``): when the
datagram was queued to the socket, before the reader got to it.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from pylibsrtp._binding import ffi as srtp_ffi

from bench.srtpkit import SLOT_SIZE
from sfu.transport.mmsg import MAX_VLEN, MSG_DONTWAIT, ffi, libc  # one cffi definition of the calls

EAGAIN = 11
#: ``SO_TIMESTAMPNS`` (= ``SCM_TIMESTAMPNS``) of Linux's asm-generic socket.h (not in Python's socket)
SO_TIMESTAMPNS = 35
_HDR = ffi.sizeof("struct mmsghdr")
_LEN_OFF = ffi.offsetof("struct mmsghdr", "msg_len")
_CTLLEN_OFF = ffi.offsetof("struct mmsghdr", "msg_hdr") + ffi.offsetof("struct msghdr", "msg_controllen")
assert _HDR % 8 == 0 and _LEN_OFF % 4 == 0 and _CTLLEN_OFF % 8 == 0
#: ``lens[i * LEN_STRIDE + LEN_INDEX]`` is slot i's ``msg_len``
LEN_STRIDE, LEN_INDEX = _HDR // 4, _LEN_OFF // 4
#: one control message: ``struct cmsghdr`` (len, level, type) + ``struct timespec`` = CMSG_SPACE(16)
CTL_SIZE = 32
_CMSG = struct.Struct("=QiiqQ")
assert _CMSG.size == CTL_SIZE
#: the cmsghdr's (level, type) read as one native 64-bit integer: a timestamp is there
TS_TAG: int = struct.unpack("=q", struct.pack("=ii", socket.SOL_SOCKET, SO_TIMESTAMPNS))[0]


def enable_rx_timestamps(sock: socket.socket) -> None:
    """Have the kernel stamp every datagram ``sock`` receives (``CLOCK_REALTIME``, ns).

    The first socket of the machine that asks turns stamping on through deferred work
    (``net_enable_timestamp``): until a kworker has run it, datagrams are queued unstamped and
    get the time they are *read* instead.  ``wait_for_arrival_stamps`` waits for that."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def wait_for_arrival_stamps(timeout_s: float = 5.0, pause_s: float = 0.002) -> bool:
    """Wait until the kernel stamps datagrams when they arrive, not when they are read (see
    ``enable_rx_timestamps``; on a loaded 2-core machine the deferred switch took > 200 ms, and a
    test's packets read 200 ms after they arrived showed 200 ms).  Probes loopback: a datagram
    read ``pause_s`` after it was sent must carry a stamp from before the read.  False if none did
    within ``timeout_s`` (or loopback cannot be used)."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            enable_rx_timestamps(rx)
            while True:
                tx.sendto(b"stamp?", rx.getsockname())
                time.sleep(pause_s)
                rx.settimeout(max(0.001, deadline - time.monotonic()))
                read_ns = time.time_ns()
                _, ancillary, _, _ = rx.recvmsg(16, CTL_SIZE)
                for level, kind, data in ancillary:
                    if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS) and len(data) >= 16:
                        sec, nsec = struct.unpack_from("=qq", data)
                        if sec * 1_000_000_000 + nsec < read_ns:
                            return True
                if time.monotonic() > deadline:
                    return False
    except OSError:  # no loopback here, or the probe timed out
        return False


def clock_offset_ns(
    realtime: Callable[[], int] = time.time_ns, monotonic: Callable[[], int] = time.monotonic_ns, tries: int = 3
) -> int:
    """``CLOCK_REALTIME - CLOCK_MONOTONIC`` (the kernel's stamps are the former, the senders' the
    latter): the real-time read between two monotonic ones, the tightest of ``tries`` pairs.  A
    reader preempted between two plain reads was off by the whole preemption (tens of ms on a
    loaded machine), and every latency of that batch with it."""
    if tries < 1:
        raise ValueError(f"tries must be >= 1, got {tries}")
    best_gap = best = 0
    for i in range(tries):
        m0 = monotonic()
        r = realtime()
        m1 = monotonic()
        if i == 0 or m1 - m0 < best_gap:
            best_gap, best = m1 - m0, r - (m0 + m1) // 2
    return best


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
        #: ``lens[i * LEN_STRIDE + LEN_INDEX]``: slot i's received length (``msg_len``)
        self.lens = memoryview(ffi.buffer(self.msgs)).cast("I")
        #: ``iov_lens[2 * i + 1]``: slot i's send length (``iov_len``)
        self.iov_lens = memoryview(ffi.buffer(self.iovs)).cast("Q")

    def recv(self, fd: int, vlen: int) -> int:
        """Receive up to ``vlen`` datagrams without blocking; 0 when nothing is queued."""
        for i in range(vlen):
            self.iovs[i].iov_len = SLOT_SIZE
        return self._recvmmsg(fd, vlen)

    def _recvmmsg(self, fd: int, vlen: int) -> int:
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


class StampedRecvRing(Ring):
    """Receive slots with the kernel's receive timestamp of each datagram.

    Slot i's control buffer is ``ctl[4 * i : 4 * i + 4]`` (int64 view): ``[1]`` is the (level,
    type) tag (``TS_TAG`` when a timestamp is there), ``[2]`` and ``[3]`` its seconds and
    nanoseconds (``CLOCK_REALTIME``).  ``recv`` leaves the iovec lengths alone (nothing sends from
    these slots); a reader that finds no tag calls ``reset_control`` (the kernel shrinks
    ``msg_controllen`` to what it wrote).
    """

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self._ctl: Any = ffi.new("unsigned char[]", count * CTL_SIZE)
        base = int(ffi.cast("uintptr_t", self._ctl))
        for i in range(count):
            self.msgs[i].msg_hdr.msg_control = ffi.cast("void *", base + i * CTL_SIZE)
        self.ctl = memoryview(ffi.buffer(self._ctl)).cast("q")
        self._ctllens = memoryview(ffi.buffer(self.msgs)).cast("Q")
        self.reset_control()

    def reset_control(self) -> None:
        step, at = _HDR // 8, _CTLLEN_OFF // 8
        for i in range(self.count):
            self._ctllens[i * step + at] = CTL_SIZE
            self.ctl[4 * i + 1] = 0

    def recv(self, fd: int, vlen: int) -> int:
        """As ``Ring.recv``, without first resetting the slots' iov lengths."""
        return self._recvmmsg(fd, vlen)

    def stamp_ns(self, i: int) -> int:
        """Slot i's kernel receive time (``CLOCK_REALTIME`` ns), or -1 if it carries none."""
        ctl = self.ctl
        if ctl[4 * i + 1] != TS_TAG:
            return -1
        return int(ctl[4 * i + 2]) * 1_000_000_000 + int(ctl[4 * i + 3])
