"""One participant's transport on the shared media port: ICE-lite address, DTLS, SRTP.

It knows nothing of rooms.  Unprotected media goes to a ``MediaSink`` (the routing layer).
Media to send goes out one of two ways, both protected in place in a slot of the port's send
ring and sent with the port's next batch (``MediaPort.flush``):

* ``forward_rtp(src, length, b1, seq, ts, ssrc)``, the forwarding fast path: ``src`` copied
  as it is with the 11 header bytes after the first replaced (payload type and marker, sequence
  number, timestamp, SSRC);
* ``send_rtp(length)``: whatever the routing layer wrote into ``out_view`` (header extensions
  rewritten, retransmissions).

Two kinds of timers: consent freshness, the setup deadline and expired extra addresses are checked
by ``tick(now_ms)``, which the node's housekeeping calls for every transport; DTLS retransmission
runs on the transport's own event-loop timer (``_arm_timer``, while the handshake is in progress).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from struct import Struct
from typing import Any, Protocol

from pylibsrtp._binding import ffi, lib

from sfu import clock
from sfu.counters import Direction, DropReason, MediaCounters
from sfu.transport.bwe.pacer import ProbeCluster
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.dtls_pool import HandshakePool, OffloadedHandshake
from sfu.transport.ice import BindingCheck, IceCredentials
from sfu.transport.mmsg import SendRing
from sfu.transport.pacer import PacedKind, PacedQueue
from sfu.transport.ports import Address
from sfu.transport.sender import TransportSender
from sfu.transport.srtp import CONTEXT_CLOSED, SrtpContext, SrtpError, SrtpFailure, SrtpProfile
from sfu.transport.tcp import TcpLink
from sfu.transport.twcc_feedback import FeedbackTimer, PublisherFeedback
from sfu.transport.udp import SEND_LANE_DEPTH, MediaPort

log = logging.getLogger(__name__)

#: RFC 7675: consent expires 30 s after the last authenticated traffic from the client.  An
#: ICE-lite node sends no checks of its own, so any authenticated datagram counts: a Binding
#: request with MESSAGE-INTEGRITY, SRTP or SRTCP that unprotects, DTLS application data.  Clients
#: such as libnice (GStreamer's webrtcbin) only send Binding *indications* once connected, which
#: carry no MESSAGE-INTEGRITY: they keep NAT bindings open (RFC 8445 §11) but do not prove consent
#: (a spoofed source address could otherwise keep a gone client's session alive for ever).  SRTP
#: and DTLS reach this transport only from its selected address, or for EXTRA_ADDRESS_GRACE_MS from
#: one an authenticated check came on: the port routes no other address here.
CONSENT_TIMEOUT_MS = 30_000
#: A session that has not completed ICE and DTLS by then is dropped (``session_setup_timeout_s``).
SETUP_TIMEOUT_MS = 30_000
#: Media is still accepted this long from an address media moved away from (packets in flight on
#: the old pair while an ICE restart switches), and from one an authenticated check came on.
EXTRA_ADDRESS_GRACE_MS = 2_000
MAX_EXTRA_ADDRESSES = 4
#: libsrtp clones a stream (replay window, cipher contexts: several KB) for every new SSRC that
#: authenticates; a client holding its keys could make the node hold one per SSRC it invents.
#: RTCP sender SSRCs beyond this many are refused and their stream freed; RTP of an SSRC nobody
#: routes is freed by the sink (``forget_inbound``).
MAX_RTCP_SENDERS = 64
OUT_BUFFER_SIZE = 2048
#: payload type and marker, sequence number, timestamp, SSRC: the RTP header after its first byte
_B1_SEQ_TS_SSRC = Struct("!BHII")
_unpack_ssrc = Struct("!I").unpack_from
_srtp_protect = lib.srtp_protect
_srtp_unprotect = lib.srtp_unprotect
_memmove = ffi.memmove
_LANE_DEPTH = SEND_LANE_DEPTH
#: a probe's padding-only packets: this many bytes of padding each (RFC 3550: at most 255),
#: sent in ``PROBE_SLICES`` bursts spread over the cluster's time at its rate
PROBE_PADDING = 240
PROBE_SLICES = 5
PROBE_MAX_PACKETS = 128
_PADDING_HEADER = Struct("!BBHII")
_PADDING_ZEROS = bytes(PROBE_PADDING - 1)


class TransportState(enum.Enum):
    NEW = "new"  # waiting for the first connectivity check
    CONNECTING = "connecting"  # address known, DTLS under way
    CONNECTED = "connected"  # SRTP keys in place
    CLOSED = "closed"


class CloseReason(enum.Enum):
    LEFT = "left"
    CONSENT_EXPIRED = "consent_expired"
    SETUP_TIMEOUT = "setup_timeout"
    DTLS_FAILED = "dtls_failed"
    DTLS_CLOSED = "dtls_closed"
    REPLACED = "replaced"
    NODE_SHUTDOWN = "node_shutdown"
    ROOM_CLOSED = "room_closed"
    DRAINED = "drained"
    REMOVED = "removed"  # an operator removed the participant (the participants API)


class MediaSink(Protocol):
    def on_rtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None: ...

    def on_rtcp(self, data: bytes, now_ms: int) -> None: ...

    def on_connected(self, now_ms: int) -> None: ...

    def on_closed(self, reason: CloseReason) -> None: ...


_SRTP_DROP = {
    SrtpError.AUTH_FAIL: DropReason.SRTP_AUTH_FAILED,
    SrtpError.REPLAY_FAIL: DropReason.SRTP_REPLAY,
    SrtpError.REPLAY_OLD: DropReason.SRTP_REPLAY,
}


class PeerTransport:
    def __init__(
        self,
        *,
        port: MediaPort,
        certificate: Certificate,
        dtls_role: DtlsRole,
        remote_ufrag: str,
        remote_fingerprints: list[tuple[str, str]],
        srtp_profiles: list[SrtpProfile],
        counters: MediaCounters,
        now_ms: int,
        loop: asyncio.AbstractEventLoop,
        setup_timeout_ms: int = SETUP_TIMEOUT_MS,
        handshakes: HandshakePool | None = None,
    ) -> None:
        self._port = port
        self.setup_timeout_ms = setup_timeout_ms
        self._ice = IceCredentials.generate()
        self._remote_ufrag = remote_ufrag
        self._counters = counters
        self._loop = loop
        self.sink: MediaSink | None = None
        self.state = TransportState.NEW
        self.created_ms = now_ms
        #: the last authenticated datagram from the client (check, SRTP, SRTCP, DTLS data): the
        #: media path stores it with one attribute store per packet, ``tick`` reads it
        self.last_consent_ms = now_ms
        #: the last authenticated connectivity check (ICE restarts are watched with it)
        self.last_check_ms = now_ms
        self.addr: Address | None = None
        #: addresses media is also accepted from (receive only), and until when
        self._extra: dict[Address, int] = {}
        self._addr_key = 0  # the port's send key for ``addr`` (0: none, or an ICE-TCP one)
        ring = port.out_ring
        self._ring = ring
        self._ptrs = ring.ptrs
        self._views = ring.views
        self._iov_lens = ring.iov_lens
        self._names = ring.names
        self._fills = ring.fills
        # this peer's lane in the send ring: valid while ``_lane_epoch == ring.epoch``
        self._lane = 0
        self._lane_base = 0
        self._lane_fill = 0
        self._lane_epoch = -1
        self._len_p: Any = ffi.new("int *")
        self._tx_srtp: Any = None  # the outbound ``srtp_t`` while connected
        self._rtp_trailer = 0  # what protecting adds under the negotiated profile
        self._send_key = 0  # ``_addr_key`` once connected: queued RTP can go out
        #: the ICE-TCP connection ``addr`` is, if it is one (then ``_send_key`` stays 0 and RTP
        #: goes out through it, framed, instead of the port's send ring)
        self._tcp: TcpLink | None = None
        self._tcp_cbuf: Any = None  # 2-byte length prefix + a protected packet, made on first use
        self._tcp_view = memoryview(b"")
        #: the send side of transport-wide congestion control, when the subscriber negotiated it
        #: (``enable_transport_cc``): every RTP packet sent carries its seq (sfu.transport.sender)
        self.sender: TransportSender | None = None
        #: the sender's pacer (``sfu.transport.pacer``): every RTP packet pays its ``budget`` or waits
        self.pacer: PacedQueue | None = None
        self.rx: SrtpContext | None = None
        self._rtcp_senders: set[int] = set()
        self.tx: SrtpContext | None = None
        self.profile: SrtpProfile | None = None
        self.out_cbuf = ffi.new("unsigned char[]", OUT_BUFFER_SIZE)
        self.out_view = memoryview(ffi.buffer(self.out_cbuf))
        self.dtls = DtlsEndpoint(
            certificate=certificate,
            role=dtls_role,
            remote_fingerprints=remote_fingerprints,
            srtp_profiles=srtp_profiles,
            send=self._send_dtls,
        )
        #: handshake steps in the pool's threads, not on this loop (None: on the loop)
        self._offload = (
            OffloadedHandshake(self.dtls, handshakes, loop, self._send_dtls, self._after_dtls)
            if handshakes is not None
            else None
        )
        self._timer: asyncio.TimerHandle | None = None
        self._on_app_data: Callable[[bytes], None] | None = None
        #: transport-cc feedback to a publisher that negotiated transport-wide-cc (``enable_twcc``)
        self.twcc: PublisherFeedback | None = None
        #: a subscriber's: the header extension ids its offer uses for anything but transport-wide-cc,
        #: in any section (None: not known).  A downtrack may leave a publisher's transport-wide
        #: seq element in place at an id outside them (``DownTrack.bind``)
        self.foreign_ext_ids: frozenset[int] | None = None
        port.add_peer(self)

    # -- DatagramPeer ------------------------------------------------------------------------------
    @property
    def ice(self) -> IceCredentials:
        return self._ice

    @property
    def remote_ufrag(self) -> str | None:
        return self._remote_ufrag

    def set_remote(self, ufrag: str, fingerprints: list[tuple[str, str]]) -> None:
        """The client's ICE ufrag and DTLS fingerprints, when they come after construction (a
        node-offered transport learns them from the answer).  Only before ICE starts."""
        if self.state is not TransportState.NEW:
            raise ValueError("the remote ICE/DTLS identity is fixed once connectivity checks began")
        self._remote_ufrag = ufrag
        self.dtls.remote_fingerprints = list(fingerprints)

    def restart_ice(self, local: IceCredentials, remote_ufrag: str) -> None:
        """ICE restart (RFC 8445 §9): new credentials on both sides while DTLS and SRTP go on.
        Checks with the old ones are refused from now on; media keeps its address until a
        nominating check comes from another."""
        if self.state is TransportState.CLOSED:
            return
        old = self._ice.ufrag
        self._ice = local
        self._remote_ufrag = remote_ufrag
        self._port.rename_peer(old, self)

    def on_ice_check(self, addr: Address, check: BindingCheck, now_ms: int) -> None:
        if self.state is TransportState.CLOSED:
            return
        self.last_consent_ms = now_ms
        self.last_check_ms = now_ms
        if self.addr is None or (check.use_candidate and addr != self.addr):
            if self.addr is not None:
                self._also_receive(self.addr, now_ms)
            self._extra.pop(addr, None)
            self.addr = addr
            self._port.bind_address(addr, self)
            self._tcp = self._port.tcp_links.get(addr)
            old_key, self._addr_key = self._addr_key, self._port.send_key(addr)
            self._port.release_send_key(old_key)
            if self._tx_srtp is not None:
                self._send_key = self._addr_key
            self._lane_epoch = -1  # a lane carries one address: the next packet takes a new one
            self._ring.generation += 1
        elif addr != self.addr and self._port.peer_at(addr) in (None, self):
            self._also_receive(addr, now_ms)
        if self.state is TransportState.NEW:
            self.state = TransportState.CONNECTING
            self.dtls.start(now_ms)
            self._arm_timer()

    def _also_receive(self, addr: Address, now_ms: int) -> None:
        """Accept media from ``addr`` too for ``EXTRA_ADDRESS_GRACE_MS`` (SRTP authenticates it):
        the pair media moved away from, or one an authenticated check came on (an ICE restart's
        new pair, used by the client before its nominating check arrives).  At most
        ``MAX_EXTRA_ADDRESSES``; the oldest goes first."""
        extra = self._extra
        if addr not in extra and len(extra) >= MAX_EXTRA_ADDRESSES:
            oldest = min(extra, key=extra.__getitem__)
            del extra[oldest]
            if oldest != self.addr:
                self._port.unbind_address(oldest, self)
        extra[addr] = now_ms + EXTRA_ADDRESS_GRACE_MS
        self._port.bind_address(addr, self)

    def on_dtls(self, data: bytes, now_ms: int) -> None:
        if self.state is TransportState.CLOSED:
            return
        offload = self._offload
        if offload is not None and (offload.busy or self.state is not TransportState.CONNECTED):
            offload.feed(data, now_ms)  # -> _after_dtls, on this loop, when the pool is done
            return
        refused = sum(self.dtls.drops.values())
        app = self.dtls.feed(data, now_ms)
        self._after_dtls(app, sum(self.dtls.drops.values()) - refused, now_ms)

    def _after_dtls(self, app: list[bytes], refused: int, now_ms: int) -> None:
        if self.state is TransportState.CLOSED:
            return
        if refused:
            self._counters.drops[DropReason.DTLS_REJECTED] += refused
        if self.dtls.state is DtlsState.CONNECTED and self.state is not TransportState.CONNECTED:
            self._on_dtls_connected(now_ms)
        elif self.dtls.state is DtlsState.FAILED:
            log.info("DTLS failed for %s: %s", self.addr, self.dtls.failure_reason)
            self.close(CloseReason.DTLS_FAILED)
            return
        elif self.dtls.state is DtlsState.CLOSED:
            self.close(CloseReason.DTLS_CLOSED, send_alert=False)
            return
        else:
            self._arm_timer()
        if app:  # decrypted and authenticated under the session's DTLS keys
            self.last_consent_ms = now_ms
        if app and self._on_app_data is not None:
            for chunk in app:
                self._on_app_data(chunk)

    def on_srtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None:
        rx = self.rx
        sink = self.sink
        if rx is None or sink is None:
            self._counters.drops[DropReason.SRTP_NOT_READY] += 1
            return
        pt = view[1] & 0x7F
        if 63 < pt < 96:  # RFC 5761: RTCP packet types 192-223
            n = rx.unprotect_rtcp(cbuf, length)
            if n < 0:
                self._srtp_drop(n)
                return
            self.last_consent_ms = now_ms  # authenticated: the client is there (RFC 7675)
            sender = _unpack_ssrc(view, 4)[0]
            senders = self._rtcp_senders
            if sender not in senders:
                if len(senders) >= MAX_RTCP_SENDERS:
                    self.forget_inbound(sender)
                    self._counters.drops[DropReason.RTCP_SENDER_LIMIT] += 1
                    return
                senders.add(sender)
            self._counters.rtcp_in += 1
            sink.on_rtcp(bytes(view[:n]), now_ms)
        else:  # SrtpContext.unprotect_rtp, inlined
            srtp = rx.srtp
            if srtp is None:
                self._srtp_drop(-CONTEXT_CLOSED)
                return
            len_p = rx.len_p
            len_p[0] = length
            rc = _srtp_unprotect(srtp, cbuf, len_p)
            if rc:
                self._srtp_drop(-rc)
                return
            self.last_consent_ms = now_ms  # authenticated: the client is there (RFC 7675)
            twcc = self.twcc
            if twcc is not None:
                twcc.on_rtp(view, len_p[0])
            sink.on_rtp(cbuf, view, len_p[0], now_ms)

    def enable_twcc(self, ext_id: int, sender_ssrc: int, timer: FeedbackTimer) -> None:
        """Send transport-cc feedback for the packets carrying the transport-wide sequence number
        under ``ext_id`` (a publisher that negotiated it); once, later calls change nothing."""
        if self.twcc is None and self.state is not TransportState.CLOSED:
            self.twcc = PublisherFeedback(ext_id, sender_ssrc, self.send_rtcp, timer)

    def forget_inbound(self, ssrc: int) -> None:
        """Free the libsrtp stream of ``ssrc`` (a stream nothing routes: an unsignalled SSRC)."""
        rx = self.rx
        if rx is not None:
            try:
                rx.remove_stream(ssrc)
            except SrtpFailure:
                pass  # none was made

    def _srtp_drop(self, code: int) -> None:
        self._counters.srtp_errors[Direction.INBOUND] += 1
        self._counters.drops[_SRTP_DROP.get(SrtpError.from_code(-code), DropReason.SRTP_OTHER)] += 1

    # -- sending ---------------------------------------------------------------------------------
    def enable_transport_cc(self, ext_id: int) -> TransportSender:
        """Stamp this transport's own transport-wide seq under ``ext_id`` on every RTP packet
        from now on (the client negotiated the extension; one id per BUNDLE transport)."""
        if self.sender is None or self.sender.ext_id != ext_id:
            if self.pacer is not None and self.pacer.pending:
                self.drain_paced(clock.now_ms(), flush_all=True)
            self.sender = TransportSender(ext_id, self._counters.cc, pacing=self._port.pacing_config)
            self.pacer = self.sender.pacer
            self.pacer.on_paced = self._regroup
        return self.sender

    def send_rtp(self, length: int, now_ms: int = -1, kind: PacedKind = PacedKind.VIDEO) -> bool:
        """Protect ``out_view[:length]`` (in a send slot) and queue it on the port (with the
        transport-wide seq first, when ``sender`` is set: ``now_ms`` is its send time, -1: now).
        With a pacer whose budget is spent, a copy waits in its queue instead (True)."""
        pacer = self.pacer
        if pacer is not None:
            if pacer.budget > 0:
                pacer.budget -= length
            elif not pacer.admit(kind, length, clock.now_ms() if now_ms < 0 else now_ms):
                return self._queue_paced(kind, length, now_ms)
        return self._send_out(length, now_ms)

    def _regroup(self) -> None:
        """Pacing started or stopped: the fan-out groups form again (``ring.generation``)."""
        self._ring.generation += 1

    def _queue_paced(self, kind: PacedKind, length: int, now_ms: int) -> bool:
        """Put a copy of ``out_view[:length]`` in the pacer's queue (the timer sends it)."""
        pacer = self.pacer
        if pacer is None or self._tx_srtp is None or length + 8 + 16 > OUT_BUFFER_SIZE:
            return False
        pacer.push(kind, bytes(self.out_view[:length]), clock.now_ms() if now_ms < 0 else now_ms)
        self._port.pacing.arm(self, self._loop)
        return True

    def drain_paced(self, now_ms: int, *, flush_all: bool = False) -> bool:
        """The pacing timer's tick: send what the pacer's budget allows now (everything with
        ``flush_all``); False when nothing is left queued.  Each packet gets its transport-wide
        seq now: the send history holds its real send time."""
        pacer = self.pacer
        if pacer is None:
            return False
        if self.state is TransportState.CLOSED:
            pacer.clear()
            return False
        if flush_all:
            pacer.budget = float("inf")
        cc = self._counters.cc
        out = self.out_cbuf
        for _, data, waited_ms in pacer.drain(now_ms):
            _memmove(out, data, len(data))
            self._send_out(len(data), now_ms)
            cc.observe_pacer_delay(waited_ms)
        if pacer.pending:
            return True
        if pacer.regroup:  # fan-out groups left this transport out while it had a queue: they may take it back
            pacer.regroup = False
            self._regroup()
        return False

    def _send_out(self, length: int, now_ms: int) -> bool:
        """``send_rtp`` past the pacer."""
        sender = self.sender
        if sender is not None and length + 8 + 16 <= OUT_BUFFER_SIZE:
            length = sender.stamp(self.out_view, length, clock.now_ms() if now_ms < 0 else now_ms)
        if not self._send_key or length + 16 > OUT_BUFFER_SIZE:
            if self._tcp is not None and length + 16 <= OUT_BUFFER_SIZE:
                return self._tcp_send(self.out_cbuf, length, None)
            return False
        ring = self._ring
        fill = self._lane_fill
        if self._lane_epoch != ring.epoch or fill == _LANE_DEPTH:
            fill = self._take_lane()
        k = self._lane_base + fill
        ptr = self._ptrs[k]
        _memmove(ptr, self.out_cbuf, length)
        len_p = self._len_p
        len_p[0] = length
        if _srtp_protect(self._tx_srtp, ptr, len_p):
            self._counters.srtp_errors[Direction.OUTBOUND] += 1
            return False
        self._commit(k, fill, len_p[0])
        return True

    def forward_rtp(
        self, src: Any, length: int, b1: int, seq: int, ts: int, ssrc: int, tw_pos: int = 0, now_ms: int = -1,
        kind: PacedKind = PacedKind.VIDEO,
    ) -> bool:
        """Queue ``src[:length]`` with header bytes 1-11 replaced (``b1`` = marker | PT), protected.

        ``src`` is any buffer (or cffi pointer) holding a well-formed RTP packet of ``length``
        bytes, at most ``BUFFER_SIZE`` of the port; the values must fit their fields.  With a
        ``sender``, ``tw_pos`` is where the packet's 2-byte transport-wide seq element (under
        the sender's id) holds its value, overwritten in place; 0: it has none, the packet goes
        by ``send_rtp``, which adds it.  ``now_ms``: the send time (-1: now).  ``kind``: what the
        pacer makes of it (audio never waits).
        """
        key = self._send_key
        sender = self.sender
        if sender is not None:
            pacer = self.pacer
            if not tw_pos or not key:
                if length + 8 + 16 > OUT_BUFFER_SIZE:
                    return False
                _memmove(self.out_cbuf, src, length)
                _B1_SEQ_TS_SSRC.pack_into(self.out_view, 1, b1, seq, ts, ssrc)
                return self.send_rtp(length, now_ms, kind)
            if pacer is not None:
                if pacer.budget > 0:
                    pacer.budget -= length
                elif not pacer.admit(kind, length, clock.now_ms() if now_ms < 0 else now_ms):
                    if length + 8 + 16 > OUT_BUFFER_SIZE:
                        return False
                    _memmove(self.out_cbuf, src, length)
                    _B1_SEQ_TS_SSRC.pack_into(self.out_view, 1, b1, seq, ts, ssrc)
                    return self._queue_paced(kind, length, now_ms)
        if not key:
            if self._tcp is not None:
                return self._tcp_send(src, length, (b1, seq, ts, ssrc))
            return False
        ring = self._ring
        fill = self._lane_fill
        if self._lane_epoch != ring.epoch or fill == _LANE_DEPTH:
            fill = self._take_lane()
        k = self._lane_base + fill
        ptr = self._ptrs[k]
        _memmove(ptr, src, length)
        view = self._views[k]
        _B1_SEQ_TS_SSRC.pack_into(view, 1, b1, seq, ts, ssrc)
        if sender is not None:  # SendHistory.record, inlined, and the seq written in place
            history = sender.history
            ext = history.high + 1
            history.high = ext
            slot = ext & history.mask
            history.exts[slot] = ext
            history.send_times[slot] = clock.now_ms() if now_ms < 0 else now_ms
            history.sizes[slot] = length
            history.states[slot] = 0
            view[tw_pos] = (ext >> 8) & 0xFF
            view[tw_pos + 1] = ext & 0xFF
        len_p = self._len_p
        len_p[0] = length
        if _srtp_protect(self._tx_srtp, ptr, len_p):
            self._counters.srtp_errors[Direction.OUTBOUND] += 1
            return False
        self._iov_lens[2 * k + 1] = length + self._rtp_trailer
        self._names[2 * k] = key
        fill += 1
        self._lane_fill = fill
        self._fills[self._lane] = fill
        if ring.auto_flush:
            self._port.flush()
        return True

    def _tcp_send(self, src: Any, length: int, header: tuple[int, int, int, int] | None) -> bool:
        """``forward_rtp``/``send_rtp`` for a transport bound to an ICE-TCP connection: protect
        into this transport's own buffer after a 2-byte length and write it to the connection."""
        tcp = self._tcp
        srtp = self._tx_srtp
        if tcp is None or srtp is None or tcp.closed or length > OUT_BUFFER_SIZE - 16:
            return False
        cbuf = self._tcp_cbuf
        if cbuf is None:
            cbuf = self._tcp_cbuf = ffi.new("unsigned char[]", OUT_BUFFER_SIZE + 2)
            self._tcp_view = memoryview(ffi.buffer(cbuf))
        view = self._tcp_view
        _memmove(cbuf + 2, src, length)
        if header is not None:
            _B1_SEQ_TS_SSRC.pack_into(view, 3, *header)
        len_p = self._len_p
        len_p[0] = length
        if _srtp_protect(srtp, cbuf + 2, len_p):
            self._counters.srtp_errors[Direction.OUTBOUND] += 1
            return False
        n = len_p[0]
        view[0] = n >> 8
        view[1] = n & 0xFF
        return tcp.send_framed(bytes(view[: n + 2]))

    def send_probe(self, cluster: ProbeCluster, now_ms: int) -> int:
        """Send the probe ``cluster`` as padding-only packets on the sender's RTX stream, in
        ``PROBE_SLICES`` bursts spread at the cluster's rate (the first now, the others on the
        event loop); returns the packets it will send (0: no sender, padding stream or keys)."""
        sender = self.sender
        if sender is None or sender.padding is None or self._tx_srtp is None:
            return 0
        size = 12 + 8 + PROBE_PADDING
        packets = min(max(cluster.min_packets, -(-cluster.min_bytes // size)), PROBE_MAX_PACKETS)
        span_ms = packets * size * 8000 / max(cluster.rate_bps, 1)
        per_slice = -(-packets // PROBE_SLICES)
        left = packets
        for i in range(PROBE_SLICES):
            count = min(per_slice, left)
            if count <= 0:
                break
            left -= count
            if i == 0:
                self._send_padding(cluster.id, count)
            else:
                self._loop.call_later(span_ms * i / PROBE_SLICES / 1000, self._send_padding, cluster.id, count)
        return packets

    def _send_padding(self, cluster_id: int, count: int) -> None:
        sender = self.sender
        if sender is None or sender.padding is None or self.state is not TransportState.CONNECTED:
            return
        if self.pacer is not None and self.pacer.pending:
            return  # padding comes last: not while media waits (the link is full)
        pad = sender.padding
        out = self.out_view
        now_ms = clock.now_ms()
        end = 12 + PROBE_PADDING
        for _ in range(count):
            _PADDING_HEADER.pack_into(out, 0, 0xA0, pad[1] & 0x7F, pad[2], 0, pad[0])  # V=2, P=1
            out[12 : end - 1] = _PADDING_ZEROS
            out[end - 1] = PROBE_PADDING
            pad[2] = (pad[2] + 1) & 0xFFFF
            high = sender.history.high
            if self._send_out(end, now_ms) and sender.history.high != high:
                sender.probes.on_probe_sent(cluster_id, sender.history.high)
                sender.counters.probe_packets += 1

    @property
    def transport_kind(self) -> str:
        """``tcp`` when media goes over an ICE-TCP connection, else ``udp``."""
        return "tcp" if self._tcp is not None else "udp"

    def send_state(self) -> tuple[SendRing, Callable[[], int], Any, int, int] | None:
        """What a writer needs to queue protected RTP for this peer into its own lanes of the port's
        send ring: ``(ring, the port's flush, srtp_t, address key, trailer length)``, or None while
        it cannot send.
        Valid while ``ring.generation`` stays the same; the caller keeps ``tx`` alive with it."""
        if not self._send_key or self.tx is None:
            return None
        return self._ring, self._port.flush, self._tx_srtp, self._send_key, self._rtp_trailer

    def release_lane(self) -> None:
        """Queue the next packet in a new lane of the send ring: packets queued since this peer's
        current lane was taken (in a fan-out group's lanes) go out before it."""
        self._lane_epoch = -1

    def _take_lane(self) -> int:
        """Take the next free lane of the send ring (flushing it first when none is left)."""
        ring = self._ring
        lane = ring.used
        if lane == ring.lanes:
            self._port.flush()
            lane = 0
        ring.used = lane + 1
        ring.fills[lane] = 0
        self._lane = lane
        self._lane_base = lane * _LANE_DEPTH
        self._lane_epoch = ring.epoch
        self._lane_fill = 0
        return 0

    def _commit(self, k: int, fill: int, length: int) -> None:
        self._iov_lens[2 * k + 1] = length
        self._names[2 * k] = self._send_key
        fill += 1
        self._lane_fill = fill
        self._fills[self._lane] = fill
        if self._ring.auto_flush:
            self._port.flush()

    def send_rtcp(self, packet: bytes) -> bool:
        tx = self.tx
        addr = self.addr
        if tx is None or addr is None:
            return False
        protected = tx.protect_rtcp_bytes(packet)
        if protected is None:
            self._counters.srtp_errors[Direction.OUTBOUND] += 1
            return False
        self._counters.rtcp_out += 1
        return self._port.sendto(protected, addr)

    def send_app_data(self, data: bytes) -> None:
        if self.state is TransportState.CONNECTED:
            self.dtls.send_application(data)

    def set_app_data_handler(self, handler: Callable[[bytes], None] | None) -> None:
        self._on_app_data = handler

    def _send_dtls(self, datagram: bytes) -> None:
        if self.addr is not None:
            self._port.sendto(datagram, self.addr)

    # -- lifecycle -------------------------------------------------------------------------------
    def _on_dtls_connected(self, now_ms: int) -> None:
        keys = self.dtls.srtp_keys
        if keys is None:
            self.close(CloseReason.DTLS_FAILED)
            return
        self.profile = keys.profile
        self.rx = SrtpContext.inbound(keys)
        self.tx = SrtpContext.outbound(keys)
        self._tx_srtp = self.tx.srtp
        self._rtp_trailer = keys.profile.rtp_trailer_length
        self._send_key = self._addr_key
        self._ring.generation += 1
        self.state = TransportState.CONNECTED
        self.last_consent_ms = now_ms  # the handshake authenticated the client's certificate
        self._cancel_timer()
        if self.sink is not None:
            self.sink.on_connected(now_ms)

    def tick(self, now_ms: int) -> None:
        """Periodic housekeeping: consent freshness and setup deadline."""
        if self.state is TransportState.CLOSED:
            return
        if self._extra:
            for addr in [a for a, until in self._extra.items() if now_ms >= until]:
                del self._extra[addr]
                if addr != self.addr:
                    self._port.unbind_address(addr, self)
        if self.state is not TransportState.CONNECTED and now_ms - self.created_ms > self.setup_timeout_ms:
            self.close(CloseReason.SETUP_TIMEOUT)
        elif self.state is not TransportState.NEW and now_ms - self.last_consent_ms > CONSENT_TIMEOUT_MS:
            self.close(CloseReason.CONSENT_EXPIRED)

    def close(self, reason: CloseReason, send_alert: bool = True) -> None:
        if self.state is TransportState.CLOSED:
            return
        self.state = TransportState.CLOSED
        self._cancel_timer()
        if self._offload is not None:  # now, or when a running handshake step comes back
            self._offload.close(send_alert)
        elif send_alert:
            try:
                self.dtls.close()
            except Exception:  # never let a teardown path raise
                log.debug("DTLS close failed", exc_info=True)
        self._port.remove_peer(self)
        self._port.pacing.discard(self)
        if self.pacer is not None:
            self.pacer.clear()
            self.pacer.on_paced = None
        if self._offload is None:
            self.dtls.release()  # its send callback refers to this transport: no cycle outlives it
        self._on_app_data = None
        if self.twcc is not None:
            self.twcc.close()
            self.twcc = None
        self.rx = None
        self.tx = None
        self._tx_srtp = None
        self._send_key = 0
        self._port.release_send_key(self._addr_key)
        self._addr_key = 0
        self._tcp = None
        self._ring.generation += 1
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_closed(reason)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        deadline = self.dtls.next_timeout_ms()
        if deadline is None:
            return
        now_ms = clock.now_ms()
        self._timer = self._loop.call_later(max(0, deadline - now_ms) / 1000, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state is TransportState.CLOSED or self.state is TransportState.CONNECTED:
            return
        if self._offload is not None:
            if not self._offload.handle_timeout(clock.now_ms()):
                return  # a handshake step is running: its result re-arms the timer
        else:
            self.dtls.handle_timeout(clock.now_ms())
        if self.dtls.state is DtlsState.FAILED:
            self.close(CloseReason.DTLS_FAILED)
        else:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
