"""Offline SDP fuzz: 10,000 mutations of real offers either parse or are refused cleanly, fast.

Seeds are real offers (Chrome 120, Firefox, GStreamer's webrtcbin, aiortc, the lite client,
Chrome's SSRC-signalled simulcast with RTX).  Each mutant gets one to four line mutations
(duplicate, truncate, delete, swap, insert junk, huge numbers, unicode, NUL, ...) from a fixed
seed, then goes where a WHIP offer goes: ``SessionService.parse_offer``'s steps (parse, the
node's offer limits), and for those that pass, the publish negotiation and the tracks it would
make (``negotiate_publish``, ``publish_track_specs``, the published-track limit).  Each must
succeed or raise ``ValueError`` or ``ApiError`` with ``bad_request`` (``codec/unsupported`` for a
mutant left with no allowed codec), nothing else, within ``PER_OFFER_S``; the whole run within
``TOTAL_S``.
"""

from __future__ import annotations

import random
import time
from collections import Counter

from aiortc import RTCConfiguration, RTCPeerConnection

from levelchat.errors import ApiError
from sfu.api.sessions import publish_track_specs
from sfu.config import DEFAULT_CODECS
from sfu.signaling.codecs import CodecPolicy
from sfu.signaling.limits import OfferLimits
from sfu.signaling.sdp import negotiate_publish, parse_sdp
from tests.sfu.signaling.offers import chrome_ssrc_simulcast_offer, fixture, lite_offer

SEED = 20261204
MUTANTS = 10_000
PER_OFFER_S = 0.5  # a parse takes about a millisecond: this only catches superlinear work
TOTAL_S = 30.0  # 2.5 s on an idle machine, 10 s on a loaded one
ALLOWED_CODES = {"bad_request", "codec/unsupported"}
JUNK = ["", "x", "a=", "=", "m=", "a=ssrc:", "a=rtpmap:96", "a=group:BUNDLE", "v=0", "\x00", "a=mid:",
        "m=video 0 UDP/TLS/RTP/SAVPF", "a=fmtp:96 apt=", "a=ssrc-group:FID", "a=rid:h send max-width=",
        "a=simulcast:send ~", "a=extmap:15 x", "a=fingerprint:sha-256 ZZ", "a=setup:", "\t", "\r", " "]
HUGE = ["0", "-1", "127", "128", "255", "256", "65535", "65536", "4294967295", "4294967296",
        "18446744073709551616", "9" * 40, "1e9", "0x10", "٣", "²", "１２"]
UNICODE = ["é", "\u200b", "\ufeff", "\ud800", "𝓥", "\u0663", "\u00b2", "ß", "\u202e", "\uffff"]


async def _aiortc_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def _mutate(lines: list[str], rng: random.Random) -> None:
    i = rng.randrange(len(lines))
    op = rng.randrange(11)
    if op == 0:
        lines.insert(i, lines[i])  # duplicate
    elif op == 1:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]  # truncate
    elif op == 2 and len(lines) > 1:
        del lines[i]
    elif op == 3:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]  # swap
    elif op == 4:
        lines.insert(i, rng.choice(JUNK) + "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(12))))
    elif op == 5:  # a number becomes a huge (or odd) one
        tokens = lines[i].split(" ")
        k = rng.randrange(len(tokens))
        head = tokens[k].rstrip("0123456789")
        tokens[k] = head + rng.choice(HUGE) if head != tokens[k] or tokens[k].isdigit() else rng.choice(HUGE)
        lines[i] = " ".join(tokens)
    elif op == 6:
        at = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:at] + rng.choice(UNICODE) + lines[i][at:]
    elif op == 7:
        at = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:at] + "\x00" + lines[i][at:]
    elif op == 8:  # a line repeated many times (bounded: the offer stays about as large as Chrome's)
        lines[i:i] = [lines[i]] * rng.randrange(2, 200)
    elif op == 9:  # a colon or separator swapped
        lines[i] = lines[i].replace(rng.choice([":", " ", "/", "=", ";"]), rng.choice(["", "::", "  ", "/", ";"]), 1)
    else:  # a line from elsewhere in the offer moved into another section
        lines.insert(rng.randrange(len(lines)), lines[i])


def _take(text: str, policy: CodecPolicy, limits: OfferLimits) -> str:
    """What a WHIP offer goes through before the node makes anything: the outcome's name."""
    try:
        offer = parse_sdp(text)
        limits.check_offer(offer)
        negotiation = negotiate_publish(offer, policy)
        specs = publish_track_specs(offer, negotiation)
        limits.check_tracks(len(specs))
    except ValueError:
        return "ValueError"
    except ApiError as exc:
        assert exc.code in ALLOWED_CODES, f"{exc.code}: {exc.detail}"
        return exc.code
    return "ok"


async def test_mutated_offers_parse_or_are_refused_cleanly() -> None:
    seeds = [fixture("chrome120"), fixture("firefox"), fixture("gstreamer"), lite_offer(),
             chrome_ssrc_simulcast_offer(), await _aiortc_offer()]
    policy = CodecPolicy.parse(DEFAULT_CODECS)
    limits = OfferLimits()
    for text in seeds:
        assert _take(text, policy, limits) == "ok"
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    started = time.perf_counter()
    for n in range(MUTANTS):
        lines = rng.choice(seeds).split("\r\n")
        for _ in range(rng.randrange(1, 5)):
            _mutate(lines, rng)
        text = rng.choice(["\r\n", "\n"]).join(lines)
        t0 = time.perf_counter()
        try:
            outcome = _take(text, policy, limits)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"mutant {n} raised {type(exc).__name__}: {exc}\n{text}") from exc
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, elapsed)
        assert elapsed < PER_OFFER_S, f"mutant {n} took {elapsed:.3f} s:\n{text[:2000]}"
        outcomes[outcome] += 1
    total = time.perf_counter() - started
    assert total < TOTAL_S, f"{MUTANTS} mutants took {total:.1f} s"
    assert sum(outcomes.values()) == MUTANTS
    # the fuzz reaches both sides: many mutants still parse, many are refused
    assert outcomes["ok"] > MUTANTS // 10 and outcomes["ValueError"] > MUTANTS // 10, outcomes
