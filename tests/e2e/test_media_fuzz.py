"""Media-port fuzz (issue 11, fuzz stage): malformed datagrams of every RFC 7983 first-byte class at
a bounded rate for a bounded time, from 32 source addresses and from the live publisher's own
5-tuple, while the live session of ``test_bad_input.py`` (aiortc WHIP publisher, WHEP
subscriber) runs: nothing crashes, every datagram is dropped and counted under its reason, the
node stays ready and the subscriber's media keeps coming without a gap.

``test_bad_input.py`` sends each kind of bad input once, by hand; this sends thousands of random
variations of them, paced, including authenticated (SRTP-protected with the publisher's keys)
RTP with bad CSRC counts, extensions and padding and RTCP with bad lengths, and STUN messages of
random types and attributes.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aioice import stun

from sfu.counters import DropReason
from tests.e2e.clients import wait_for
from tests.e2e.test_bad_input import (  # noqa: F401  (live: the fixture)
    STUN_REASONS,
    Drops,
    Live,
    dtls_record,
    expected_class,
    live,
    received,
    still_flowing,
    stun_check,
)

D = DropReason
#: source addresses of the strangers: 127.0.0.2 ... 127.0.0.33
STRANGERS = 32
RATE_PER_S = 400
DURATION_S = 8.0
#: how the node may drop SRTP it cannot authenticate (forged tag, seen index, too short to hold one)
SRTP_REFUSALS = (D.SRTP_AUTH_FAILED, D.SRTP_REPLAY, D.SRTP_OTHER)
BINDING_INDICATION = 0x0011


@dataclass
class Expect:
    """What the fuzz must add to the node's counters."""

    exact: dict[DropReason, int] = field(default_factory=dict)
    groups: dict[tuple[DropReason, ...], int] = field(default_factory=dict)
    keepalives: int = 0

    def add(self, reason: DropReason | tuple[DropReason, ...]) -> None:
        if isinstance(reason, tuple):
            self.groups[reason] = self.groups.get(reason, 0) + 1
        else:
            self.exact[reason] = self.exact.get(reason, 0) + 1


# -- generators: each returns (datagram, the drop it must cause) ----------------------------------
def _stun_ish(rng: random.Random, ufrag: str, remote: str) -> bytes:
    """A STUN message that cannot authenticate: a check with a wrong password mutated (and its
    FINGERPRINT fixed up, so the parse goes on), or a header of a random type with random TLVs.
    Always with a STUN first byte; never a Binding indication (a keepalive, see the caller)."""
    while True:
        if rng.random() < 0.5:
            data = bytearray(stun_check(f"{ufrag}:{remote}", "wrong-password-wrong-pass", use_candidate=rng.random() < 0.5))
            body_end = len(data) - 8
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(body_end)] = rng.randrange(256)
            data[2:4] = struct.pack("!H", len(data) - 20)
            data[body_end:] = struct.pack("!HHI", 0x8028, 4, stun.message_fingerprint(bytes(data[:body_end])))
        else:
            attrs = b""
            for _ in range(rng.randint(0, 4)):
                value = rng.randbytes(rng.randint(0, 24))
                attrs += struct.pack("!HH", rng.choice((0x0006, 0x0008, 0x0020, 0x0024, 0x8028, 0x802A, rng.randrange(65536))), len(value))
                attrs += value + bytes(-len(value) % 4)
            kind = rng.randrange(0x0400)  # the first byte stays a STUN one (0-3)
            data = bytearray(struct.pack("!HHI12s", kind, len(attrs), stun.COOKIE, rng.randbytes(12)) + attrs)
        if data[0] < 4 and struct.unpack_from("!H", data)[0] != BINDING_INDICATION:
            return bytes(data)


def _dtls_ish(rng: random.Random) -> bytes:
    """A DTLS record header (any content type 20-63) whose length does not match the datagram."""
    body = rng.randbytes(rng.randint(0, 300))
    record = dtls_record(rng.randint(20, 63), rng.randrange(4), body, seq=rng.randrange(1 << 48))
    wrong = (len(body) + rng.randint(1, 500)) & 0xFFFF
    return record[:11] + struct.pack("!H", wrong) + record[13:]


def _rtp_ish(rng: random.Random, ssrc: int | None = None) -> bytes:
    """RTP (or RTCP, by its second byte) with a bad CSRC count, extension, padding or length."""
    b0 = 0x80 | rng.choice((0x0F, 0x10, 0x20, 0x30, rng.randrange(0x40)))  # CC 15, X, P
    b1 = rng.choice((rng.randrange(256), rng.randint(192, 223), 96, 96 | 0x80))
    ssrc = rng.randrange(1 << 32) if ssrc is None else ssrc
    head = struct.pack("!BBHII", b0, b1, rng.randrange(65536), rng.randrange(1 << 32), ssrc)
    tail = rng.choice((b"", struct.pack("!HH", 0xBEDE, rng.randrange(65536)), rng.randbytes(rng.randint(1, 1400))))
    return (head + tail)[: rng.choice((4, 8, 11, 12, 13, 20, 1500, 1500, 1500, 1500))]


def _other(rng: random.Random) -> bytes:
    b0 = rng.choice((rng.randint(4, 19), rng.randint(64, 127), rng.randint(192, 255)))
    return bytes([b0]) + rng.randbytes(rng.randint(3, 1500))


def stranger_datagram(rng: random.Random, ufrag: str, remote: str) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 3))  # too short to classify
    if roll < 0.08:
        return bytes([rng.choice((0, 22, 128, 200))]) + rng.randbytes(rng.choice((2100, 9000, 65000)))  # oversize
    if roll < 0.35:
        return _stun_ish(rng, ufrag, remote)
    if roll < 0.55:
        return _dtls_ish(rng)
    if roll < 0.85:
        return _rtp_ish(rng)
    return _other(rng)


def stranger_reason(data: bytes) -> DropReason | tuple[DropReason, ...]:
    """From a stranger: by first byte (RFC 7983), except that STUN is looked into."""
    reason = expected_class(data)
    if reason is D.STUN_MALFORMED:
        return STUN_REASONS
    return reason


# -- the publisher's own 5-tuple ----------------------------------------------------------------
def authenticated_garbage(rng: random.Random, tracks: set[int]) -> tuple[bytes, DropReason | tuple[DropReason, ...]]:
    """Clear RTP/RTCP to be protected with the publisher's keys: it passes SRTP and must then be
    refused by the routing layer.  RTP goes to SSRCs she does not publish (her own streams are hers
    to break); RTCP declares more bytes than it has, from a random sender SSRC (refused as
    ``rtcp_sender_limit`` before it is parsed once her transport keeps ``MAX_RTCP_SENDERS``)."""
    if rng.random() < 0.5:
        while (ssrc := rng.randrange(1 << 32)) in tracks:
            pass
        b0 = 0x80 | rng.choice((0x0F, 0x10, 0x20, 0x30, 0))
        head = struct.pack("!BBHII", b0, rng.choice((96, 100, 111, 127, 0xE0)), rng.randrange(65536), 0, ssrc)
        csrc = rng.randbytes(4 * (b0 & 0x0F))
        ext = struct.pack("!HH", 0xBEDE, 1) + rng.randbytes(4) if b0 & 0x10 else b""
        return head + csrc + ext + rng.randbytes(rng.randint(1, 600)), D.RTP_UNKNOWN_SSRC
    n_words = rng.randint(1, 30)
    declared = n_words + rng.randint(1, 200)  # always overruns
    packet = struct.pack("!BBHI", 0x80 | rng.randrange(32), rng.randint(192, 223), declared, rng.randrange(1 << 32))
    return packet + rng.randbytes(4 * (n_words - 1)), (D.RTCP_MALFORMED, D.RTCP_SENDER_LIMIT)


def own_address_datagram(rng: random.Random, ufrag: str, remote: str, ssrc: int) -> tuple[bytes, DropReason | tuple[DropReason, ...]]:
    """Unauthenticated input from the publisher's address: by class, looked into further."""
    roll = rng.random()
    if roll < 0.3:
        return _stun_ish(rng, ufrag, remote), STUN_REASONS
    if roll < 0.5:
        return _dtls_ish(rng), D.DTLS_REJECTED  # her DTLS association refuses a broken record
    if roll < 0.9:
        data = _rtp_ish(rng, ssrc if rng.random() < 0.3 else None)
        return data, (D.TOO_SHORT if len(data) < 4 else SRTP_REFUSALS)
    return _other(rng), D.UNKNOWN_PROTOCOL


# -- the test -----------------------------------------------------------------------------------
async def _paced(total: int, send: Callable[[int], None]) -> float:
    """Call ``send(i)`` for i < total at RATE_PER_S, yielding to the loop (where the node and the
    session run) between small bursts; returns the seconds it took."""
    start = time.monotonic()
    for i in range(total):
        send(i)
        if i % 8 == 7:
            delay = start + (i + 1) / RATE_PER_S - time.monotonic()
            await asyncio.sleep(max(delay, 0.001))
    return time.monotonic() - start


async def test_paced_fuzz_from_many_addresses_and_the_publishers_own(live: Live) -> None:  # noqa: F811
    alice_t = live.alice.publisher
    assert alice_t is not None and alice_t.remote_ufrag is not None
    ufrag, remote = alice_t.ice.ufrag, alice_t.remote_ufrag
    own_ssrc = next(iter(live.alice.tracks))
    rng = random.Random(11_2026)
    socks = []
    for i in range(STRANGERS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + i}", 0))
        sock.setblocking(False)
        socks.append(sock)
    indication = stun_check(None, None, use_candidate=False, cls=stun.Class.INDICATION)
    expect = Expect()
    plan: list[tuple[str, bytes]] = []
    total = int(RATE_PER_S * DURATION_S)
    for _ in range(total):
        roll = rng.random()
        if roll < 0.7:
            data = stranger_datagram(rng, ufrag, remote)
            expect.add(stranger_reason(data))
            plan.append(("stranger", data))
        elif roll < 0.9:
            data, reason = own_address_datagram(rng, ufrag, remote, own_ssrc)
            if not data:
                continue
            expect.add(reason)
            plan.append(("own", data))
        elif roll < 0.99:
            clear, reason = authenticated_garbage(rng, set(live.alice.tracks))
            expect.add(reason)
            plan.append(("authenticated", clear))
        else:
            expect.keepalives += 1  # RFC 8445 keepalives from her address: not drops
            plan.append(("own", indication))
    before, drops = live.frames(), Drops(live.node)
    keepalives = live.node.counters.stun_keepalives
    tx = live.dtls._tx_srtp  # aiortc's outbound libsrtp session: her keys

    def send(i: int) -> None:
        where, data = plan[i]
        if where == "stranger":
            socks[i % STRANGERS].sendto(data, live.media)
            return
        if where == "authenticated":
            data = tx.protect_rtcp(data) if 191 < data[1] < 224 else tx.protect(data)
        asyncio.ensure_future(live.conn.send(data))

    try:
        took = await _paced(len(plan), send)
        assert took < DURATION_S * 3, f"pacing took {took:.1f} s"
        await drops.expect(expect.exact, groups=expect.groups.items())
        assert live.node.counters.stun_keepalives - keepalives == expect.keepalives
        assert all(received(s) == [] for s in socks), "the node answered a stranger"
    finally:
        for s in socks:
            s.close()
    await still_flowing(live, before)
    async with aiohttp.ClientSession() as http:
        async with http.get(live.node.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
    await wait_for(lambda: live.node.self_check_ok, 10, "the self-check")
