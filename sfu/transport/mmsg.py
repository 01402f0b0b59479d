"""Batched UDP I/O for the media port: Linux ``recvmmsg``/``sendmmsg`` through cffi's ABI mode.

A ring is ``count`` packet slots in one block of memory allocated through pylibsrtp's ffi (so
libsrtp protects and unprotects them in place), plus the ``mmsghdr``/``iovec`` vectors that point
at them and one ``sockaddr_in`` per slot.  The hot path touches those vectors only through
integer-indexed memoryviews (``lens``, ``iov_lens``, ``names``): no cffi attribute access and no
per-packet objects.

An IPv4 port (an ``AF_INET`` socket) carries an address as its *key*: the first 8 bytes of its
``sockaddr_in`` (family, port, address) read as one native integer, so a received datagram's
sender is one dict lookup away from its peer and a send slot is addressed with one store.

An IPv6 port (an ``AF_INET6`` socket, dual-stack when bound to ``::``: IPv4 peers arrive as
v4-mapped ``::ffff:a.b.c.d``) has 32-byte name slots (a 28-byte ``sockaddr_in6``) read as four
native words ``q0..q3`` (family and port, address high half, address low half, scope id).  The
receive key is ``key6 = (q0 ^ q2) | q1 << 64 | q3 << 128``: exact (the kernel leaves the flow
label 0 and the padding is never written), and one word for every address whose high half is
zero, v4-mapped ones included, so an IPv4 peer of a dual-stack port costs two more word reads
and an XOR.  Its send key is the address (a pointer) of a ``sockaddr_in6`` the port keeps for
each transport's selected address (``Sockaddr6Table``): writers store one word per slot as for IPv4,
and ``SendRing.send`` copies those words into the messages' ``msg_name`` (one strided copy).
Peers see one normalised address form either way (``normalize_host``): ``a.b.c.d`` for a
v4-mapped peer, the compressed text otherwise.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

import cffi
from pylibsrtp._binding import ffi as srtp_ffi

__all__ = [
    "MAX_VLEN",
    "RecvRing",
    "SendRing",
    "Sockaddr6Table",
    "address_of_key",
    "address_of_sockaddr6",
    "gso_supported",
    "key6_of_address",
    "key_of_address",
    "normalize_host",
    "sockaddr6",
]

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
_SOCKADDR_IN6 = 28
#: an IPv6 ring's name slot: a sockaddr_in6 and 4 bytes of padding (four words)
_NAME6 = 32

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_libc: Any = _ffi.dlopen(None)
#: the cffi namespace and libc handle for recvmmsg/sendmmsg (ABI mode: no compiler needed)
ffi = _ffi
libc = _libc

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


_FAMILY6 = struct.pack("=H", socket.AF_INET6)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_WORDS6 = struct.Struct("=4Q")


def normalize_host(host: str) -> str:
    """One text per address: a v4-mapped IPv6 address (``::ffff:a.b.c.d``) as its IPv4 address,
    an IPv6 address compressed (a ``%scope`` suffix kept); ValueError for anything else."""
    ip, sep, scope = host.partition("%")
    try:
        if ":" not in ip:
            if sep:
                raise OSError
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, ip))
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if packed[:12] == _V4_MAPPED and not sep:
        return socket.inet_ntoa(packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed) + sep + scope


def sockaddr6(host: str, port: int) -> bytes:
    """The 32-byte name slot of ``(host, port)`` for an IPv6 socket: a ``sockaddr_in6`` (an IPv4
    host as its v4-mapped address; ``fe80::1%eth0`` or ``%2`` sets the scope id), zero-padded."""
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    ip, _, scope = host.partition("%")
    scope_id = 0
    try:
        if ":" in ip:
            packed = socket.inet_pton(socket.AF_INET6, ip)
        else:
            packed = _V4_MAPPED + socket.inet_aton(ip)
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None
    return _FAMILY6 + struct.pack("!HI", port, 0) + packed + struct.pack("=I", scope_id) + bytes(4)


def key6_of_words(q0: int, q1: int, q2: int, q3: int) -> int:
    """The receive key of an IPv6 name slot read as four native words (see the module docstring)."""
    return (q0 ^ q2) | (q1 << 64) | (q3 << 128)


def key6_of_address(host: str, port: int) -> int:
    """The receive key of ``(host, port)`` on an IPv6 port; ValueError when it is no address."""
    return key6_of_words(*_WORDS6.unpack(sockaddr6(host, port)))


def address_of_sockaddr6(raw: bytes | memoryview) -> tuple[str, int]:
    """The normalised ``(host, port)`` of a received ``sockaddr_in6`` (28 bytes or more)."""
    port = (raw[2] << 8) | raw[3]
    packed = bytes(raw[8:24])
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntoa(packed[12:]), port
    host = socket.inet_ntop(socket.AF_INET6, packed)
    scope_id = int.from_bytes(raw[24:28], sys.byteorder)
    return (f"{host}%{scope_id}" if scope_id else host), port


class Sockaddr6Table:
    """The ``sockaddr_in6`` an IPv6 port's send slots point at: one per holder (a transport's
    selected address), never shared, so one holder's release cannot pull memory from under
    another that sends to the same address.

    ``new_key(addr)`` allocates one and returns its address (the send key; 0 for no address).
    A released one stays allocated until ``collect()``, which the port calls right after each
    send: a packet queued to it before the release still goes out from valid memory.
    """

    def __init__(self) -> None:
        self._entries: dict[int, Any] = {}
        self._retired: list[Any] = []

    def new_key(self, addr: tuple[str, int]) -> int:
        try:
            raw = sockaddr6(addr[0], addr[1])
        except (ValueError, TypeError, IndexError):
            return 0
        buf = _ffi.new("unsigned char[]", _NAME6)
        _ffi.memmove(buf, raw, _NAME6)
        key = int(_ffi.cast("uintptr_t", buf))
        self._entries[key] = buf
        return key

    def release(self, key: int) -> None:
        buf = self._entries.pop(key, None)
        if buf is not None:
            self._retired.append(buf)

    def collect(self) -> None:
        if self._retired:
            self._retired.clear()

    def __len__(self) -> int:
        return len(self._entries)


class _Ring:
    def __init__(self, count: int, slot_size: int, name_size: int = _SOCKADDR_IN, namelen: int = _SOCKADDR_IN) -> None:
        if not 0 < count <= 4 * MAX_VLEN:
            raise ValueError(f"ring size must be 1..{4 * MAX_VLEN}, got {count}")
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
        self._names: Any = _ffi.new("unsigned char[]", count * name_size)
        names_base = int(_ffi.cast("uintptr_t", self._names))
        for i in range(count):
            self._iovs[i].iov_base = _ffi.cast("void *", base + i * slot_size)
            self._iovs[i].iov_len = slot_size
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = _ffi.addressof(self._iovs, i)
            hdr.msg_iovlen = 1
            hdr.msg_name = _ffi.cast("void *", names_base + i * name_size)
            hdr.msg_namelen = namelen
        #: ``lens[i * LEN_STRIDE + LEN_INDEX]`` is slot i's ``msg_len``
        self.lens = memoryview(_ffi.buffer(self._msgs)).cast("I")
        #: ``iov_lens[i * 2 + 1]`` is slot i's ``iov_len``
        self.iov_lens = memoryview(_ffi.buffer(self._iovs)).cast("Q")
        #: IPv4: ``names[i * 2]`` is slot i's address key (the rest of its sockaddr_in stays
        #: zero); an IPv6 receive ring: ``names[i * 4 : i * 4 + 4]`` its sockaddr_in6's words
        self.names = memoryview(_ffi.buffer(self._names)).cast("Q")


LEN_STRIDE = _HDR // 4
LEN_INDEX = _LEN_OFF // 4
_MSG_WORDS = _HDR // 8
assert _IOV == 16 and _IOV_LEN_OFF == 8 and _HDR % 8 == 0 and _ffi.offsetof("struct mmsghdr", "msg_hdr") == 0


class RecvRing(_Ring):
    """Receive slots: ``recv`` fills slots ``0..n-1``; slot i's length is ``length(i)`` and its
    sender's key ``names[2 * i]`` (IPv4), or ``key6_of_words(*names[4 * i : 4 * i + 4])``
    (``family=AF_INET6``; ``name(i)`` is its sockaddr_in6)."""

    def __init__(self, count: int, slot_size: int, *, family: int = socket.AF_INET) -> None:
        if family == socket.AF_INET6:
            super().__init__(count, slot_size, _NAME6, _SOCKADDR_IN6)
        else:
            super().__init__(count, slot_size)
        self.family = family
        self._name_bytes = memoryview(_ffi.buffer(self._names))

    def name(self, i: int) -> memoryview:
        """Slot i's sender as the kernel wrote it (a sockaddr_in6 on an IPv6 ring)."""
        return self._name_bytes[i * _NAME6 : i * _NAME6 + _SOCKADDR_IN6]

    def recv(self, fd: int, vlen: int) -> int:
        """Up to ``vlen`` datagrams without blocking: their count, or ``-errno`` (EAGAIN too)."""
        n: int = _libc.recvmmsg(fd, self._msgs, vlen, MSG_DONTWAIT, _ffi.NULL)
        if n < 0:
            return -int(_ffi.errno)
        return n

    def length(self, i: int) -> int:
        return int(self.lens[i * LEN_STRIDE + LEN_INDEX])


class SendRing(_Ring):
    """Send slots in ``lanes`` lanes of ``depth`` slots; a lane holds packets for one address.

    A writer takes a lane (``lane = used; used += 1``, ``fills[lane] = 0``), fills its slots in
    order: slot ``k = lane * depth + i`` gets the packet, ``iov_lens[2k + 1]`` its length and
    ``names[2k]`` the address key, then ``fills[lane] = i + 1``.  ``epoch`` changes whenever the
    ring is emptied, which tells a writer that its lane is gone.  ``send`` hands everything to
    the kernel in lane order and empties the ring.

    With ``gso`` (UDP generic segmentation offload, Linux 4.18+) the packets of a lane go out as
    few ``sendmmsg`` messages as their sizes allow: one per run of equal sizes (a shorter one
    may end a run), each with a ``UDP_SEGMENT`` control message, so the kernel walks its stack
    once per run instead of once per packet.  Without it, one message per packet.
    """

    def __init__(
        self, lanes: int, depth: int, slot_size: int, *, gso: bool = False, family: int = socket.AF_INET
    ) -> None:
        if not 0 < depth <= 64:
            raise ValueError(f"lane depth must be 1..64, got {depth}")
        namelen = _SOCKADDR_IN6 if family == socket.AF_INET6 else _SOCKADDR_IN
        super().__init__(lanes * depth, slot_size, _SOCKADDR_IN, namelen)
        #: IPv6: a slot's key (``names[2k]``) is a ``Sockaddr6Table`` pointer, copied into its
        #: message's ``msg_name`` when the ring is sent
        self.indirect = family == socket.AF_INET6
        self.family = family
        self._msg_words = memoryview(_ffi.buffer(self._msgs)).cast("Q")
        self.lanes = lanes
        self.depth = depth
        self.gso = gso
        #: packets in each lane taken since the ring was last emptied
        self.fills = [0] * lanes
        #: lanes taken since the ring was last emptied
        self.used = 0
        #: changes each time the ring is emptied
        self.epoch = 0
        #: changes whenever a writer's sending state changes (connected, closed, moved): whoever
        #: caches writers' send states (``PublishedTrack``'s fan-out group) checks it per packet
        self.generation = 0
        #: false while the owner batches (it flushes itself); true: a writer sends each packet
        self.auto_flush = True
        self._max_gso_bytes = 65000
        # one GSO message per slot at worst, each with its own UDP_SEGMENT control message
        self._gmsgs: Any = _ffi.new("struct mmsghdr[]", self.count)
        self._ctrl: Any = _ffi.new("unsigned char[]", self.count * _CMSG_SPACE)
        ctrl_base = int(_ffi.cast("uintptr_t", self._ctrl))
        ctrl = memoryview(_ffi.buffer(self._ctrl))
        for i in range(self.count):
            struct.pack_into("=QiiH", ctrl, i * _CMSG_SPACE, _CMSG_LEN, socket.SOL_UDP, UDP_SEGMENT, 0)
            hdr = self._gmsgs[i].msg_hdr
            hdr.msg_namelen = namelen
            hdr.msg_control = _ffi.cast("void *", ctrl_base + i * _CMSG_SPACE)
        #: ``gso_sizes[i * (CMSG_SPACE // 2) + 8]`` is message i's segment size
        self._gso_sizes = ctrl.cast("H")
        self._iov_ptrs = [_ffi.addressof(self._iovs, k) for k in range(self.count)]
        self._name_ptrs = [self._msgs[k].msg_hdr.msg_name for k in range(self.count)]
        self._msg_ptrs = [_ffi.addressof(self._msgs, k) for k in range(self.count)]
        self._gmsg_ptrs = [_ffi.addressof(self._gmsgs, k) for k in range(self.count)]

    @property
    def n(self) -> int:
        """Packets queued."""
        fills = self.fills
        return sum(fills[i] for i in range(self.used))

    def discard(self) -> None:
        self.used = 0
        self.epoch += 1

    def send(self, fd: int) -> tuple[int, list[int]]:
        """Send the queued packets; returns (sent, errnos of the datagrams the kernel refused).

        A refused datagram is dropped and the rest still go out; on EAGAIN/ENOBUFS (socket
        buffer full) every remaining one is dropped, one errno each.  A GSO message the kernel
        refuses is retried packet by packet.
        """
        used = self.used
        self.used = 0
        self.epoch += 1
        if self.indirect and used:  # each message's msg_name (its first word) := its slot's key
            n = used * self.depth
            self._msg_words[0 : n * _MSG_WORDS : _MSG_WORDS] = self.names[0 : 2 * n : 2]
        if self.gso:
            return self._send_gso(fd, used)
        sent = 0
        refused: list[int] = []
        for lane in range(used):
            fill = self.fills[lane]
            if fill:
                s, r = self._send_plain(fd, lane * self.depth, fill)
                sent += s
                refused += r
        return sent, refused

    def _send_plain(self, fd: int, start: int, count: int) -> tuple[int, list[int]]:
        done = 0
        sent = 0
        refused: list[int] = []
        msg_ptrs = self._msg_ptrs
        while done < count:
            k: int = _libc.sendmmsg(fd, msg_ptrs[start + done], count - done, 0)
            if k > 0:
                done += k
                sent += k
                continue
            err = int(_ffi.errno) if k < 0 else 0
            if err in _FULL:  # the rest would fail the same way now
                refused.extend([err] * (count - done))
                break
            refused.append(err)  # e.g. ECONNREFUSED left by an earlier ICMP error: skip this one
            done += 1
        return sent, refused

    def _send_gso(self, fd: int, used: int) -> tuple[int, list[int]]:
        gmsgs = self._gmsgs
        sizes_out = self._gso_sizes
        iov_lens = self.iov_lens
        iov_ptrs = self._iov_ptrs
        name_ptrs = self._name_ptrs
        depth = self.depth
        cap = self._max_gso_bytes
        runs: list[tuple[int, int]] = []  # (first slot, packets) of each message
        for lane in range(used):
            fill = self.fills[lane]
            if not fill:
                continue
            base = lane * depth
            sizes = iov_lens[2 * base + 1 : 2 * (base + fill) : 2].tolist()
            size = sizes[0]
            # one message when every packet but the last has the first one's size (the kernel
            # cuts the message every ``size`` bytes: a shorter or longer one inside would be cut
            # across two packets, corrupting both)
            if sizes[:-1].count(size) == fill - 1 and sizes[-1] <= size and size * fill <= cap:
                runs.append((base, fill))
                continue
            start = 0  # split into runs of equal sizes, each ended by at most one shorter packet
            while start < fill:
                size = sizes[start]
                end = start + 1
                limit = min(fill, start + max(1, cap // size))
                while end < limit and sizes[end] == size:
                    end += 1
                if end < limit and sizes[end] < size:
                    end += 1
                runs.append((base + start, end - start))
                start = end
        step = _CMSG_SPACE // 2
        names = self.names
        indirect = self.indirect
        for i, (first, count) in enumerate(runs):
            hdr = gmsgs[i].msg_hdr
            hdr.msg_name = _ffi.cast("void *", names[2 * first]) if indirect else name_ptrs[first]
            hdr.msg_iov = iov_ptrs[first]
            hdr.msg_iovlen = count
            if count > 1:
                sizes_out[i * step + 8] = iov_lens[2 * first + 1]
                hdr.msg_controllen = _CMSG_SPACE
            else:
                hdr.msg_controllen = 0
        total = len(runs)
        done = 0
        sent = 0
        refused: list[int] = []
        while done < total:
            k: int = _libc.sendmmsg(fd, self._gmsg_ptrs[done], total - done, 0)
            if k > 0:
                sent += sum(runs[j][1] for j in range(done, done + k))
                done += k
                continue
            err = int(_ffi.errno) if k < 0 else 0
            first, count = runs[done]
            if err in _FULL:
                refused.extend([err] * sum(c for _, c in runs[done:]))
                break
            if count > 1:  # the kernel would not segment this one: packet by packet
                if err == _EIO:  # the device cannot checksum segments: never again on this ring
                    self.gso = False
                s, r = self._send_plain(fd, first, count)
                sent += s
                refused += r
            else:
                refused.append(err)
            done += 1
        return sent, refused


UDP_SEGMENT = 103
_CMSG_LEN = 16 + 2  # struct cmsghdr (size_t len, int level, int type) + the u16 segment size
_CMSG_SPACE = 24
_FULL = (11, 105)  # EAGAIN, ENOBUFS
_EIO = 5


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel segments UDP for this socket (``UDP_SEGMENT`` is known)."""
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)
    except OSError:
        return False
    return True
