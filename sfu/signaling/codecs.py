"""Codec model, codec matching and the room's codec policy.

The node never decodes media, so "supporting" a codec means: both ends agree on the same
bitstream format, and the node knows how to forward it.  Matching therefore compares more
than names (see :func:`codecs_match`):

* name (case-insensitive), clock rate and channel count (absent channels mean 1);
* H264: ``packetization-mode`` equal (absent = 0) and the same profile, classified from
  ``profile-level-id`` as Chrome does (absent = ``42e01f``).  Baseline (``42001f``) and
  constrained baseline (``42e01f``) are one family: no WebRTC encoder emits the baseline-only
  tools (FMO/ASO), and Chrome offers both.  The level never blocks a match: a receiver that
  offered a lower level still gets the stream (decoders in browsers handle any level).
* VP9: ``profile-id`` equal (absent = 0); AV1: ``profile`` equal (absent = 0); H265:
  ``profile-id`` equal (absent = 1, Main).

:func:`variant_keys` names a variant for the forwarder's payload type map (one subscriber
payload type per variant, never per codec name).

RTX (``apt=``) and opus RED (``red/48000/2``, fmtp ``111/111``) are never policy entries:
they follow their primary codec and are kept only when it is.  ``telephone-event``, ``CN``,
``ulpfec``, ``flexfec-03`` and video RED are dropped.

Policy entries (:meth:`CodecPolicy.parse`), case-insensitive:

* ``NAME`` - any variant of a known codec (``opus``, ``PCMU``, ``PCMA``, ``G722``, ``VP8``,
  ``VP9``, ``H264``, ``H265``, ``AV1``);
* ``H264/<profile-level-id>`` - H264 of that profile (baseline family as above) at a level no
  higher than the one given, e.g. ``H264/42e01f``;
* ``VP9/<profile-id>`` and ``AV1/<profile>`` - that profile only, e.g. ``VP9/2``.

The list's order is the room's preference: codecs are answered in policy order, and for one
entry, in the order the client offered them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sfu.packet.twcc import TWCC_URI

DEFAULT_CODECS: tuple[str, ...] = ("opus", "VP8", "VP9", "H264", "AV1")


class MediaKind(enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"
    APPLICATION = "application"


#: Header extensions the node negotiates.  Not playout-delay.  Transport-wide-cc only with
#: publishers (``CodecPolicy.with_transport_cc``): the node sends them transport-cc feedback.
HDREXT_TRANSPORT_CC = TWCC_URI
HDREXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
HDREXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
HDREXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
HDREXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
HDREXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
HDREXT_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
SUPPORTED_HEADER_EXTENSIONS: frozenset[str] = frozenset(
    {
        HDREXT_MID,
        HDREXT_ABS_SEND_TIME,
        HDREXT_AUDIO_LEVEL,
        HDREXT_RID,
        HDREXT_REPAIRED_RID,
        HDREXT_VIDEO_ORIENTATION,
    }
)
#: transport-wide congestion control (sfu.packet.twcc.TWCC_URI): negotiated with subscribers
#: (``CodecPolicy.for_subscribers``), whose feedback drives the node's estimate for them
HDREXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTCP_FB_TRANSPORT_CC = "transport-cc"
#: Extensions that make sense only on one kind of media.
AUDIO_ONLY_EXTENSIONS: frozenset[str] = frozenset({HDREXT_AUDIO_LEVEL})
VIDEO_ONLY_EXTENSIONS: frozenset[str] = frozenset({HDREXT_VIDEO_ORIENTATION})

#: RTCP feedback the node understands ("type" or "type param").  transport-cc only with
#: publishers (``CodecPolicy.with_transport_cc``).
SUPPORTED_RTCP_FB: frozenset[str] = frozenset({"nack", "nack pli", "ccm fir", "goog-remb"})
TRANSPORT_CC_FB = "transport-cc"

# name (lower) -> (kind, clock rate, channels)
_KNOWN: Mapping[str, tuple[MediaKind, int, int | None]] = {
    "opus": (MediaKind.AUDIO, 48000, 2),
    "pcmu": (MediaKind.AUDIO, 8000, None),
    "pcma": (MediaKind.AUDIO, 8000, None),
    "g722": (MediaKind.AUDIO, 8000, None),
    "vp8": (MediaKind.VIDEO, 90000, None),
    "vp9": (MediaKind.VIDEO, 90000, None),
    "h264": (MediaKind.VIDEO, 90000, None),
    "h265": (MediaKind.VIDEO, 90000, None),
    "av1": (MediaKind.VIDEO, 90000, None),
}
_CANONICAL = {
    "opus": "opus",
    "pcmu": "PCMU",
    "pcma": "PCMA",
    "g722": "G722",
    "vp8": "VP8",
    "vp9": "VP9",
    "h264": "H264",
    "h265": "H265",
    "av1": "AV1",
}
_AUXILIARY = frozenset({"rtx", "red", "ulpfec", "flexfec-03", "telephone-event", "cn"})


@dataclass(frozen=True)
class CodecParams:
    """One payload type of a media section, as offered or answered."""

    pt: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: Mapping[str, str] = field(default_factory=dict)
    rtcp_fb: tuple[str, ...] = ()
    rtx_pt: int | None = None

    @property
    def lname(self) -> str:
        return self.name.lower()

    @property
    def is_rtx(self) -> bool:
        return self.lname == "rtx"

    @property
    def is_red(self) -> bool:
        return self.lname == "red"

    @property
    def is_primary(self) -> bool:
        """A codec that carries media itself (not RTX/RED/FEC/DTMF/comfort noise)."""
        return self.lname not in _AUXILIARY

    @property
    def apt(self) -> int | None:
        """The primary payload type of an RTX codec."""
        value = self.fmtp.get("apt")
        if value is None or not value.isdigit():
            return None
        return int(value)

    def red_primaries(self) -> tuple[int, ...]:
        """The payload types a RED codec wraps (``111/111`` -> ``(111,)``); () if malformed."""
        if len(self.fmtp) != 1:
            return ()
        (spec,) = self.fmtp
        if self.fmtp[spec] != "" or not re.fullmatch(r"\d{1,3}(/\d{1,3})*", spec):
            return ()
        return tuple(dict.fromkeys(int(p) for p in spec.split("/")))

    @property
    def effective_channels(self) -> int:
        return 1 if self.channels is None else self.channels

    def rtpmap_value(self) -> str:
        text = f"{self.pt} {self.name}/{self.clock_rate}"
        if self.channels is not None:
            text += f"/{self.channels}"
        return text

    def fmtp_value(self) -> str | None:
        if not self.fmtp:
            return None
        params = ";".join(k if v == "" else f"{k}={v}" for k, v in self.fmtp.items())
        return f"{self.pt} {params}"


# --- H264 profile-level-id -------------------------------------------------------------


class H264Profile(enum.Enum):
    CONSTRAINED_BASELINE = "constrained-baseline"
    BASELINE = "baseline"
    MAIN = "main"
    CONSTRAINED_HIGH = "constrained-high"
    HIGH = "high"
    PREDICTIVE_HIGH_444 = "predictive-high-444"

    @property
    def family(self) -> str:
        """Profiles the node forwards between each other."""
        if self in (H264Profile.CONSTRAINED_BASELINE, H264Profile.BASELINE):
            return "baseline"
        return str(self.value)


def _bit_pattern(pattern: str) -> tuple[int, int]:
    mask = value = 0
    for ch in pattern:
        mask <<= 1
        value <<= 1
        if ch != "x":
            mask |= 1
            value |= int(ch)
    return mask, value


# (profile_idc, (mask, value) over profile-iop, profile), first match wins, as in libwebrtc.
_H264_PATTERNS: tuple[tuple[int, tuple[int, int], H264Profile], ...] = (
    (0x42, _bit_pattern("x1xx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x4D, _bit_pattern("1xxx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x58, _bit_pattern("11xx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x42, _bit_pattern("x0xx0000"), H264Profile.BASELINE),
    (0x58, _bit_pattern("10xx0000"), H264Profile.BASELINE),
    (0x4D, _bit_pattern("0x0x0000"), H264Profile.MAIN),
    (0x64, _bit_pattern("00000000"), H264Profile.HIGH),
    (0x64, _bit_pattern("00001100"), H264Profile.CONSTRAINED_HIGH),
    (0xF4, _bit_pattern("00000000"), H264Profile.PREDICTIVE_HIGH_444),
)
_H264_LEVELS = frozenset({10, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52})
H264_DEFAULT_PROFILE_LEVEL_ID = "42e01f"


@dataclass(frozen=True)
class H264ProfileLevel:
    profile: H264Profile
    #: ``level_idc`` (31 = level 3.1); level 1b is 9.
    level: int

    @property
    def level_order(self) -> float:
        return 10.5 if self.level == 9 else float(self.level)

    @classmethod
    def parse(cls, text: str) -> H264ProfileLevel:
        if not re.fullmatch(r"[0-9A-Fa-f]{6}", text):
            raise ValueError(f"H264 profile-level-id {text!r} is not 6 hex digits")
        raw = int(text, 16)
        profile_idc, profile_iop, level_idc = raw >> 16, (raw >> 8) & 0xFF, raw & 0xFF
        if level_idc == 11 and profile_iop & 0x10:
            level = 9  # level 1b (constraint_set3_flag with level_idc 11)
        elif level_idc in _H264_LEVELS:
            level = level_idc
        else:
            raise ValueError(f"H264 profile-level-id {text!r} has unknown level_idc {level_idc}")
        for idc, (mask, value), profile in _H264_PATTERNS:
            if idc == profile_idc and profile_iop & mask == value:
                return cls(profile, level)
        raise ValueError(f"H264 profile-level-id {text!r} names no profile WebRTC knows")

    @classmethod
    def of(cls, codec: CodecParams) -> H264ProfileLevel | None:
        """The codec's profile and level; None when its profile-level-id is unusable."""
        try:
            return cls.parse(codec.fmtp.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID))
        except ValueError:
            return None


def _packetization_mode(codec: CodecParams) -> str:
    return codec.fmtp.get("packetization-mode", "0")


def _param(codec: CodecParams, key: str) -> str:
    return codec.fmtp.get(key, "0")


def codecs_match(a: CodecParams, b: CodecParams) -> bool:
    """True when a stream sent as ``a`` can be forwarded as ``b`` (see the module doc)."""
    if a.lname != b.lname or a.clock_rate != b.clock_rate:
        return False
    if a.effective_channels != b.effective_channels:
        return False
    if a.lname == "h264":
        pa, pb = H264ProfileLevel.of(a), H264ProfileLevel.of(b)
        if pa is None or pb is None:
            return False
        return pa.profile.family == pb.profile.family and _packetization_mode(a) == _packetization_mode(b)
    if a.lname == "vp9":
        return _param(a, "profile-id") == _param(b, "profile-id")
    if a.lname == "av1":
        return _param(a, "profile") == _param(b, "profile")
    if a.lname == "h265":
        return a.fmtp.get("profile-id", "1") == b.fmtp.get("profile-id", "1")
    return True


def variant_keys(codec: CodecParams) -> tuple[str, ...]:
    """Names of the bitstream variant ``codec`` carries, the most specific first.

    The forwarder labels a packet with the subscriber's payload type for the publisher's
    variant, so two variants of one codec must never share a key: H264 by the profile part of
    ``profile-level-id`` (profile_idc and constraint flags; the level never matters) and
    ``packetization-mode``, then by profile family (what :func:`codecs_match` forwards between,
    for a later publisher of the other spelling); VP9 by ``profile-id``, AV1 by ``profile``
    (absent = 0); H265 by ``profile-id`` (absent = 1, Main); other codecs by name.
    """
    name = codec.lname
    if name == "h264":
        mode = _packetization_mode(codec)
        pli = codec.fmtp.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID).lower()
        exact = f"h264/{pli[:4]}/{mode}"
        parsed = H264ProfileLevel.of(codec)
        return (exact,) if parsed is None else (exact, f"h264/{parsed.profile.family}/{mode}")
    if name == "vp9":
        return (f"vp9/{_param(codec, 'profile-id')}",)
    if name == "av1":
        return (f"av1/{_param(codec, 'profile')}",)
    if name == "h265":
        return (f"h265/{codec.fmtp.get('profile-id', '1')}",)
    return (name,)


def find_match(codec: CodecParams, candidates: Iterable[CodecParams]) -> CodecParams | None:
    """The primary codec among ``candidates`` that ``codec`` matches best.

    The first match wins, except that for H264 a candidate of the very same profile (not
    only the same family) is preferred: 42e01f goes to 42e01f before 42001f.
    """
    matches = [other for other in candidates if other.is_primary and codecs_match(codec, other)]
    if codec.lname == "h264" and len(matches) > 1:
        mine = H264ProfileLevel.of(codec)
        for other in matches:
            theirs = H264ProfileLevel.of(other)
            if mine is not None and theirs is not None and theirs.profile is mine.profile:
                return other
    return matches[0] if matches else None


def filter_rtcp_fb(codec: CodecParams, supported: frozenset[str] = SUPPORTED_RTCP_FB) -> CodecParams:
    kept = tuple(fb for fb in dict.fromkeys(codec.rtcp_fb) if fb in supported)
    return replace(codec, rtcp_fb=kept)


# --- policy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyEntry:
    """One allowed codec: a name, optionally narrowed to a profile (see the module doc)."""

    name: str  # canonical spelling
    kind: MediaKind
    clock_rate: int
    channels: int | None
    h264: H264ProfileLevel | None = None
    profile: str | None = None  # VP9 profile-id / AV1 profile

    @classmethod
    def parse(cls, text: str) -> PolicyEntry:
        raw = text.strip()
        base, sep, param = raw.partition("/")
        lname = base.lower()
        if lname in _AUXILIARY:
            raise ValueError(f"codec {text!r} cannot be allowed on its own: it follows its primary codec")
        known = _KNOWN.get(lname)
        if known is None:
            names = ", ".join(_CANONICAL.values())
            raise ValueError(f"unknown codec {text!r} (known: {names})")
        kind, clock, channels = known
        entry = cls(_CANONICAL[lname], kind, clock, channels)
        if not sep:
            return entry
        if lname == "h264":
            return replace(entry, h264=H264ProfileLevel.parse(param))
        if lname in ("vp9", "av1") and re.fullmatch(r"[0-3]", param):
            return replace(entry, profile=param)
        raise ValueError(
            f"codec {text!r}: only H264/<profile-level-id>, VP9/<profile-id> and AV1/<profile> take a parameter"
        )

    def admits(self, codec: CodecParams) -> bool:
        if codec.lname != self.name.lower() or codec.clock_rate != self.clock_rate:
            return False
        if self.channels is not None and codec.effective_channels != self.channels:
            return False
        if self.h264 is not None:
            offered = H264ProfileLevel.of(codec)
            return (
                offered is not None
                and offered.profile.family == self.h264.profile.family
                and offered.level_order <= self.h264.level_order
            )
        if self.profile is not None:
            key = "profile-id" if self.name == "VP9" else "profile"
            return _param(codec, key) == self.profile
        return True

    def __str__(self) -> str:
        if self.h264 is not None:
            return f"{self.name}/{self.h264.profile.value}"
        if self.profile is not None:
            return f"{self.name}/{self.profile}"
        return self.name


@dataclass(frozen=True)
class CodecPolicy:
    """A room's ordered allowed codecs and the RTP features the node negotiates."""

    entries: tuple[PolicyEntry, ...]
    #: Negotiate opus RED when offered.
    red: bool = True
    #: Put RED before its primary in answers, which makes Chrome send RED.  Off by default:
    #: forwarding RED to a subscriber without RED means unwrapping it.
    red_first: bool = False
    rtcp_feedback: frozenset[str] = SUPPORTED_RTCP_FB
    header_extensions: frozenset[str] = SUPPORTED_HEADER_EXTENSIONS

    @classmethod
    def parse(cls, names: Sequence[str] = DEFAULT_CODECS, *, red: bool = True) -> CodecPolicy:
        if isinstance(names, str):
            raise ValueError("codecs must be a list of names, not a string")
        if not names:
            raise ValueError("codecs must name at least one codec")
        entries: list[PolicyEntry] = []
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"codec name {name!r} is not a string")
            entry = PolicyEntry.parse(name)
            if entry in entries:
                raise ValueError(f"codec {name!r} is listed twice")
            entries.append(entry)
        return cls(tuple(entries), red=red)

    @classmethod
    def default(cls) -> CodecPolicy:
        return cls.parse(DEFAULT_CODECS)

    def with_transport_cc(self) -> CodecPolicy:
        """This policy, also negotiating the transport-wide-cc header extension and
        ``transport-cc`` feedback (when offered): for publishers, to whom the node sends
        transport-cc feedback (``sfu.transport.twcc_feedback``)."""
        return replace(
            self,
            rtcp_feedback=self.rtcp_feedback | {TRANSPORT_CC_FB},
            header_extensions=self.header_extensions | {HDREXT_TRANSPORT_CC},
        )

    def allowed_names(self, kind: MediaKind) -> list[str]:
        return [str(e) for e in self.entries if e.kind is kind]

    def rank(self, codec: CodecParams) -> int | None:
        """The index of the first policy entry admitting ``codec``; None if none does."""
        for index, entry in enumerate(self.entries):
            if entry.admits(codec):
                return index
        return None

    def select(self, offered: Sequence[CodecParams]) -> list[CodecParams]:
        """The offered codecs the room allows, in policy order, each followed by its RTX.

        Opus RED is placed after (or, with ``red_first``, before) the primaries it wraps,
        and only when all of them were chosen.  RTCP feedback is reduced to what the node
        supports.  Payload types stay the offerer's.
        """
        primaries = [c for c in offered if c.is_primary]
        chosen: list[CodecParams] = []
        for entry in self.entries:
            chosen.extend(c for c in primaries if c not in chosen and entry.admits(c))
        chosen_pts = {c.pt for c in chosen}
        by_pt = {c.pt: c for c in offered}
        out: list[CodecParams] = []
        for codec in chosen:
            out.append(filter_rtcp_fb(codec, self.rtcp_feedback))
            rtx = by_pt.get(codec.rtx_pt) if codec.rtx_pt is not None else None
            if rtx is not None:
                out.append(replace(rtx, rtcp_fb=()))
        if self.red:
            reds = [
                replace(c, rtcp_fb=())
                for c in offered
                if c.is_red
                and c.clock_rate == 48000
                and c.red_primaries()
                and all(pt in chosen_pts and by_pt[pt].lname == "opus" for pt in c.red_primaries())
            ][:1]
            out = reds + out if self.red_first else out + reds
        return out

    def for_subscribers(self) -> CodecPolicy:
        """The policy of a subscribe negotiation: the node stamps its own transport-wide seqs on
        what it sends and reads the subscriber's feedback, so the transport-wide-cc extension and
        ``transport-cc`` feedback are negotiated there whatever the publish side does (issue 12).
        REMB (``goog-remb``) stays for subscribers that offer only that."""
        return replace(
            self,
            header_extensions=self.header_extensions | {HDREXT_TRANSPORT_CC},
            rtcp_feedback=self.rtcp_feedback | {RTCP_FB_TRANSPORT_CC},
        )

    def header_extensions_for(self, kind: MediaKind, offered: Mapping[str, int]) -> dict[str, int]:
        """The offered header extensions the node negotiates for ``kind``, with the offer's ids."""
        skip = VIDEO_ONLY_EXTENSIONS if kind is MediaKind.AUDIO else AUDIO_ONLY_EXTENSIONS
        return {
            uri: ext_id
            for uri, ext_id in offered.items()
            if uri in self.header_extensions and uri not in skip
        }
