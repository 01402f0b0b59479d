"""``python -m bench.microfwd``: the node's forwarding path in one process, for profilers.

The real objects of the node's data path, without DTLS or signaling: one ``MediaPort`` on
127.0.0.1, a publisher ``PeerTransport`` with a ``PublisherSink``, one video ``PublishedTrack``
and ``--fanout`` subscriber transports each with a bound ``DownTrack``; their SRTP keys are
installed directly (``connect_for_bench``).  A client socket sends ``--packets`` SRTP packets
(1200 bytes, VP8 keyframe first, protected beforehand) in batches of ``--batch`` and the port's
reader (``MediaPort._on_readable``) is called after each batch, as the event loop would.  The
subscribers' sockets are bound and never read (the kernel drops what overflows them).

It prints one JSON line: packets in/out and the process CPU seconds of the forwarding part.  For
repeatable instruction counts on a busy machine, run it under callgrind:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        "$(python -c 'import sys; print(sys.executable)')" -m bench.microfwd --packets 2000

(``--toggle-collect=functools_reduce``: only the forwarding loop, which runs inside one
``functools.reduce`` call, is counted; packet generation and setup are not.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import sys
import time
from typing import Any

from sfu.counters import MediaCounters
from sfu.packet.twcc import TWCC_URI
from sfu.recording.tap import TapBuffer
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, PublisherSink
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsRole
from sfu.transport.mmsg import key_of_address
from sfu.transport.peer import PeerTransport, TransportState
from sfu.transport.srtp import SrtpContext, SrtpDirection, SrtpProfile
from sfu.transport.twcc_feedback import FeedbackTimer
from sfu.transport.udp import MediaPort

HOST = "127.0.0.1"
PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80
TWCC_EXT_ID = 5
#: ``--twcc``: the feedback timer's tick, in packets (100 ms at 10,000 packets a second)
TWCC_TICK_PACKETS = 1000


def connect_for_bench(peer: PeerTransport, port: MediaPort, addr: tuple[str, int], master: bytes) -> None:
    """Make ``peer`` CONNECTED at ``addr`` with ``master`` (key + salt) for both directions."""
    peer.addr = addr
    port.bind_address(addr, peer)
    peer._addr_key = key_of_address(*addr)
    peer.profile = PROFILE
    peer.rx = SrtpContext(PROFILE, master, SrtpDirection.INBOUND)
    peer.tx = SrtpContext(PROFILE, master, SrtpDirection.OUTBOUND)
    peer._tx_srtp = peer.tx.srtp
    peer._rtp_trailer = PROFILE.rtp_trailer_length
    peer._send_key = peer._addr_key
    peer.state = TransportState.CONNECTED


def make_packets(count: int, size: int, ssrc: int, master: bytes, tw_id: int = 0) -> list[bytes]:
    """``tw_id``: the packets carry a transport-wide seq under that id (a 4-byte extension block;
    the packet's size stays ``size``)."""
    tx = SrtpContext(PROFILE, master, SrtpDirection.OUTBOUND)
    out = []
    for i in range(count):
        seq = (1000 + i) & 0xFFFF
        header = bytes([0x90 if tw_id else 0x80, 96]) + seq.to_bytes(2, "big") + (i * 3000).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
        if tw_id:  # the transport-wide seq extension block, as bench.packet's TWCC_BLOCK
            header += bytes([0xBE, 0xDE, 0, 1, (tw_id << 4) | 1]) + (i & 0xFFFF).to_bytes(2, "big") + b"\x00"
        payload = bytes([0x10, 0x00 if i == 0 else 0x01]) + bytes((i + k) & 0xFF for k in range(size - len(header) - 2))
        protected = tx.protect_rtp_bytes(header + payload)
        assert protected is not None
        out.append(protected)
    return out


def run(fanout: int, packets: int, batch: int, size: int, transport_cc: str = "off", *, twcc: bool = False,
        record: bool = False) -> dict[str, Any]:
    """``transport_cc`` (the subscriber leg): "off" (no extension anywhere, unless ``twcc``), "on" (the
    publisher's packets carry a transport-wide seq and every subscriber negotiated it: each
    transport stamps its own in place), "publisher" (the packets carry it, no subscriber negotiated
    it).  ``twcc`` (the publisher leg): the packets carry a transport-wide seq (negotiated: the
    track knows the id) and the publisher transport records each arrival; its feedback is built and
    sent (to the client socket) every ``TWCC_TICK_PACKETS`` packets, about every 100 ms at 10,000
    packets a second.  ``record``: the track is recorded (its tap fills a recording's buffer)."""
    tw_id = TWCC_EXT_ID if twcc or transport_cc in ("on", "publisher") else 0
    sub_ext = {TWCC_URI: tw_id} if transport_cc == "on" else {}
    loop = asyncio.new_event_loop()
    counters = MediaCounters()
    port = MediaPort(HOST, 0, counters)
    port.open(loop)
    cert = Certificate.generate()
    master = os.urandom(PROFILE.key_length + PROFILE.salt_length)
    now = 1000

    def transport() -> PeerTransport:
        return PeerTransport(
            port=port, certificate=cert, dtls_role=DtlsRole.SERVER, remote_ufrag="x", remote_fingerprints=[("sha-256", cert.fingerprint())],
            srtp_profiles=[PROFILE], counters=counters, now_ms=now, loop=loop,
        )

    src_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src_sock.bind((HOST, 0))
    pub = transport()
    connect_for_bench(pub, port, src_sock.getsockname(), master)
    participant = Participant(identity="pub", room_id="r", kind=ParticipantKind.WHIP)
    ssrc = 0x1234ABCD
    track = PublishedTrack(
        kind="video", ssrc=ssrc, codecs=[TrackCodec("VP8", 90000, 96)], mid="0", owner="pub",
        counters=counters, request_keyframe=lambda _ssrc: None, ext_ids={TWCC_URI: tw_id} if tw_id else {},
    )
    timer = FeedbackTimer(loop, counters, 100)
    if twcc:
        pub.enable_twcc(TWCC_EXT_ID, 1, timer)
    participant.tracks[ssrc] = track
    taps = TapBuffer() if record else None
    if taps is not None:  # the track is recorded: its tap fills the recording's buffer
        track.tap = taps.make_tap(0)
    pub.sink = PublisherSink(participant, counters)
    sinks = []
    subs: list[PeerTransport] = []
    for i in range(fanout):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.bind((HOST, 0))
        sinks.append(s)
        sub = transport()
        connect_for_bench(sub, port, s.getsockname(), master)
        sub.foreign_ext_ids = frozenset()  # a WHEP offer with no extensions, as bench.traffic's sinks
        subs.append(sub)
        dt = DownTrack(
            peer=sub, kind="video", mid="0", ssrc=0x5000 + i, out_payload_types={"VP8": 100},
            out_ext_ids=sub_ext, counters=counters,
        )
        dt.bind(track, now)
    data = make_packets(packets, size, ssrc, master, tw_id)
    tick_every = max(1, TWCC_TICK_PACKETS // batch) if twcc else 0
    to = (HOST, port.port)
    sendto = src_sock.sendto
    reader = port._on_readable

    def forward(_a: float, _b: float) -> float:
        t0 = time.process_time()
        for k, start in enumerate(range(0, packets, batch)):
            for d in data[start : start + batch]:
                sendto(d, to)
            reader()
            if taps is not None:  # what the flusher does every 20 ms: hand the buffer over
                taps.take()
            if tick_every and k % tick_every == tick_every - 1:
                timer.tick()
        return time.process_time() - t0

    # the one call of C ``functools_reduce`` brackets the forwarding: callgrind can count only it
    # (``--collect-atstart=no --toggle-collect=functools_reduce``)
    cpu: float = functools.reduce(forward, [0.0, 0.0])
    result = {
        "fanout": fanout,
        "twcc_feedback": counters.twcc_feedback_out,
        "transport_cc": transport_cc,
        "packets": packets,
        "rtp_in": sum(counters.rtp_in),
        "rtp_out": sum(counters.rtp_out),
        "drops": {k: v for k, v in counters.drop_counts().items() if v},
        "recorded": record,
        "cpu_s": round(cpu, 4),
        "us_per_out": round(cpu * 1e6 / max(1, sum(counters.rtp_out)), 3),
        # packets the subscriber transports numbered with their own transport-wide seqs
        "stamped": sum(sub.sender.history.high + 1 for sub in subs if sub.sender is not None),
    }
    port.close()
    for s in [*sinks, src_sock]:
        s.close()
    loop.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.microfwd", description=__doc__.splitlines()[0])
    ap.add_argument("--fanout", type=int, default=16)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--record", action="store_true", help="the track is recorded (its tap fills a recording's buffer)")
    ap.add_argument("--twcc", action="store_true", help="packets carry a transport-wide seq; transport-cc feedback to the publisher")
    ap.add_argument("--transport-cc", choices=("off", "on", "publisher"), default="off",
                    help="subscribers: on = each stamps its own transport-wide seq; publisher = the packets carry one, no subscriber negotiated it")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.fanout, args.packets, args.batch, args.size, args.transport_cc, twcc=args.twcc, record=args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
