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
from sfu.recording.tap import TapBuffer
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, PublisherSink
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsRole
from sfu.transport.mmsg import key_of_address
from sfu.transport.peer import PeerTransport, TransportState
from sfu.transport.srtp import SrtpContext, SrtpDirection, SrtpProfile
from sfu.transport.udp import MediaPort

HOST = "127.0.0.1"
PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80


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


def make_packets(count: int, size: int, ssrc: int, master: bytes) -> list[bytes]:
    tx = SrtpContext(PROFILE, master, SrtpDirection.OUTBOUND)
    out = []
    for i in range(count):
        seq = (1000 + i) & 0xFFFF
        header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + (i * 3000).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
        payload = bytes([0x10, 0x00 if i == 0 else 0x01]) + bytes((i + k) & 0xFF for k in range(size - 14))
        protected = tx.protect_rtp_bytes(header + payload)
        assert protected is not None
        out.append(protected)
    return out


def run(fanout: int, packets: int, batch: int, size: int, record: bool = False) -> dict[str, Any]:
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
        counters=counters, request_keyframe=lambda _ssrc: None,
    )
    participant.tracks[ssrc] = track
    taps = TapBuffer() if record else None
    if taps is not None:  # the track is recorded: its tap fills the recording's buffer
        track.tap = taps.make_tap(0)
    pub.sink = PublisherSink(participant, counters)
    sinks = []
    for i in range(fanout):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.bind((HOST, 0))
        sinks.append(s)
        sub = transport()
        connect_for_bench(sub, port, s.getsockname(), master)
        dt = DownTrack(
            peer=sub, kind="video", mid="0", ssrc=0x5000 + i, out_payload_types={"VP8": 100},
            out_ext_ids={}, counters=counters,
        )
        dt.bind(track, now)
    data = make_packets(packets, size, ssrc, master)
    to = (HOST, port.port)
    sendto = src_sock.sendto
    reader = port._on_readable

    def forward(_a: float, _b: float) -> float:
        t0 = time.process_time()
        for start in range(0, packets, batch):
            for d in data[start : start + batch]:
                sendto(d, to)
            reader()
            if taps is not None:  # what the flusher does every 20 ms: hand the buffer over
                taps.take()
        return time.process_time() - t0

    # the one call of C ``functools_reduce`` brackets the forwarding: callgrind can count only it
    # (``--collect-atstart=no --toggle-collect=functools_reduce``)
    cpu: float = functools.reduce(forward, [0.0, 0.0])
    result = {
        "fanout": fanout,
        "packets": packets,
        "rtp_in": sum(counters.rtp_in),
        "rtp_out": sum(counters.rtp_out),
        "drops": {k: v for k, v in counters.drop_counts().items() if v},
        "recorded": record,
        "cpu_s": round(cpu, 4),
        "us_per_out": round(cpu * 1e6 / max(1, sum(counters.rtp_out)), 3),
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
    args = ap.parse_args(argv)
    print(json.dumps(run(args.fanout, args.packets, args.batch, args.size, args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
