"""SDP offer/answer for the node: a parsed model, the publish/subscribe negotiation, answers.

The node is ICE-lite on one UDP port, always BUNDLE + rtcp-mux, DTLS-SRTP.  ``parse_sdp``
accepts only offers (or answers) a browser makes for such a peer and refuses anything else
with a ``ValueError`` naming the line or section at fault; the HTTP layer maps that to
``bad_request``.  A refusal on policy grounds (no allowed codec) is an ``ApiError``
``codec/unsupported`` with status 406.

Flows:

* WHIP publish: ``negotiate_publish(offer, policy)`` then ``build_answer(offer, neg, local)``.
* WHEP subscribe: ``negotiate_subscribe(offer, tracks, policy, cname=...)`` then
  ``build_answer``; each delivered track carries its payload-type and header-extension-id
  mappings and the SSRCs the node sends with.
* Server-offered subscriber transport: ``build_offer(tracks, policy, local, cname=...)``
  then ``apply_answer(offer_plan, answer_text)`` once the client answered.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from levelchat.errors import ApiError
from sfu.signaling.codecs import (
    HDREXT_MID,
    HDREXT_REPAIRED_RID,
    HDREXT_RID,
    RTCP_FB_TRANSPORT_CC,
    CodecParams,
    CodecPolicy,
    MediaKind,
    codecs_match,
    filter_rtcp_fb,
    find_match,
    variant_keys,
)

__all__ = [
    "CodecParams",
    "MediaKind",
    "MAX_SDP_BYTES",
    "MAX_MEDIA_SECTIONS",
    "MAX_SDP_LINES",
    "Direction",
    "Setup",
    "Fingerprint",
    "SsrcInfo",
    "SsrcGroup",
    "Rid",
    "SimulcastLayer",
    "Simulcast",
    "MediaSection",
    "SessionDesc",
    "parse_sdp",
    "SectionOutcome",
    "SendStream",
    "AnsweredSection",
    "PublishTrack",
    "PublishNegotiation",
    "negotiate_publish",
    "TrackDescription",
    "OutgoingTrack",
    "PtMapping",
    "SubscribeTrack",
    "TrackRefusal",
    "SubscribeNegotiation",
    "negotiate_subscribe",
    "LocalParams",
    "answer_setup",
    "build_answer",
    "OfferPlan",
    "build_offer",
    "apply_answer",
]

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 64
#: Parsing bounds (each parsed in linear time; the node's configurable limits on sections and
#: SSRCs, ``sfu.signaling.limits``, are checked on the result): lines in an SDP, payload types on
#: an m= line, a=rtcp-fb and a=rid lines in a section, mids in a=group lines.
MAX_SDP_LINES = 8192
MAX_PAYLOAD_TYPES = 128
MAX_RTCP_FB = 512
MAX_RIDS = 16
MAX_GROUP_MIDS = 256
#: Simulcast layers the node receives per section; further ones are left out of the answer.
MAX_SIMULCAST_LAYERS = 4
SCTP_PORT = 5000
MAX_MESSAGE_SIZE = 262144
RTP_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP"})
SCTP_PROTO = "UDP/DTLS/SCTP"
DATACHANNEL_FMT = "webrtc-datachannel"

# Static payload types a browser may list without a=rtpmap (RFC 3551).
_STATIC_PTS: Mapping[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, None),
    3: ("GSM", 8000, None),
    4: ("G723", 8000, None),
    8: ("PCMA", 8000, None),
    9: ("G722", 8000, None),
    13: ("CN", 8000, None),
    18: ("G729", 8000, None),
}

_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+")
_RID_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)


class Setup(enum.Enum):
    ACTPASS = "actpass"
    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(frozen=True)
class Fingerprint:
    algorithm: str  # lower case, e.g. "sha-256"
    value: str  # upper-case hex pairs separated by ':'


@dataclass(frozen=True)
class SsrcInfo:
    ssrc: int
    cname: str | None = None
    msid: str | None = None  # "stream track" as signalled in a=ssrc:<n> msid:


@dataclass(frozen=True)
class SsrcGroup:
    semantics: str  # "FID", "SIM", "FEC-FR", ...
    ssrcs: tuple[int, ...]


@dataclass(frozen=True)
class Rid:
    id: str
    direction: str  # "send" | "recv"
    params: str = ""  # restrictions as offered, e.g. "max-width=1280;max-height=720"


@dataclass(frozen=True)
class SimulcastLayer:
    """One simulcast stream: its alternative rids, each possibly paused ("~")."""

    alternatives: tuple[tuple[str, bool], ...]  # (rid, paused)

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(rid for rid, _ in self.alternatives)

    def __str__(self) -> str:
        return ",".join(("~" if paused else "") + rid for rid, paused in self.alternatives)


@dataclass(frozen=True)
class Simulcast:
    direction: str  # "send" | "recv": the direction of the first (or only) list
    layers: tuple[SimulcastLayer, ...]

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(rid for layer in self.layers for rid in layer.rids)

    def value(self) -> str:
        return f"{self.direction} " + ";".join(str(layer) for layer in self.layers)


@dataclass(frozen=True)
class MediaSection:
    index: int  # m-line index, from 0
    kind: MediaKind
    port: int
    proto: str
    fmts: tuple[str, ...]
    mid: str
    direction: Direction = Direction.SENDRECV
    codecs: tuple[CodecParams, ...] = ()
    header_extensions: Mapping[str, int] = field(default_factory=dict)
    #: the a=extmap lines that named a direction (uri -> it); the others are sendrecv
    header_extension_directions: Mapping[str, Direction] = field(default_factory=dict)
    extmap_allow_mixed: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: tuple[Fingerprint, ...] = ()
    setup: Setup | None = None
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    bundle_only: bool = False
    ssrcs: tuple[SsrcInfo, ...] = ()
    ssrc_groups: tuple[SsrcGroup, ...] = ()
    msid: tuple[str, str] | None = None  # (stream id, track id); track id may be "-"? kept as sent
    rids: tuple[Rid, ...] = ()
    simulcast: Simulcast | None = None
    sctp_port: int | None = None
    max_message_size: int | None = None
    candidates: int = 0  # a=candidate lines seen (trickle is not needed: the node is ICE-lite)

    @property
    def rejected(self) -> bool:
        """Port 0 without a=bundle-only: the offerer rejected (or stopped) this section."""
        return self.port == 0 and not self.bundle_only

    @property
    def is_rtp(self) -> bool:
        return self.kind is not MediaKind.APPLICATION

    @property
    def is_datachannel(self) -> bool:
        return (
            self.kind is MediaKind.APPLICATION
            and self.proto == SCTP_PROTO
            and self.fmts == (DATACHANNEL_FMT,)
        )

    def codec(self, pt: int) -> CodecParams | None:
        for codec in self.codecs:
            if codec.pt == pt:
                return codec
        return None

    @property
    def primary_codecs(self) -> tuple[CodecParams, ...]:
        return tuple(c for c in self.codecs if c.is_primary)

    def rtx_ssrc_of(self, ssrc: int) -> int | None:
        for group in self.ssrc_groups:
            if group.semantics == "FID" and len(group.ssrcs) == 2 and group.ssrcs[0] == ssrc:
                return group.ssrcs[1]
        return None

    @property
    def media_ssrcs(self) -> tuple[int, ...]:
        """SSRCs that carry media (not the RTX/FEC halves of a group), in signalled order."""
        secondary = {s for g in self.ssrc_groups if g.semantics in ("FID", "FEC-FR") for s in g.ssrcs[1:]}
        return tuple(dict.fromkeys(s.ssrc for s in self.ssrcs if s.ssrc not in secondary))

    @property
    def cname(self) -> str | None:
        for info in self.ssrcs:
            if info.cname:
                return info.cname
        return None

    @property
    def where(self) -> str:
        return f"m-line {self.index} (mid {self.mid!r})"


@dataclass(frozen=True)
class SessionDesc:
    session_id: str
    session_version: int
    media: tuple[MediaSection, ...]
    bundle: tuple[str, ...] = ()
    ice_lite: bool = False
    extmap_allow_mixed: bool = False
    ice_ufrag: str | None = None  # session-level values; see ``transport`` for effective ones
    ice_pwd: str | None = None
    fingerprints: tuple[Fingerprint, ...] = ()
    setup: Setup | None = None

    @classmethod
    def parse(cls, text: str) -> SessionDesc:
        return _Parser(text).parse()

    def section(self, mid: str) -> MediaSection | None:
        for media in self.media:
            if media.mid == mid:
                return media
        return None

    def ice_credentials(self, media: MediaSection) -> tuple[str, str]:
        ufrag = media.ice_ufrag or self.ice_ufrag
        pwd = media.ice_pwd or self.ice_pwd
        if ufrag is None or pwd is None:
            raise ValueError(f"{media.where}: no a=ice-ufrag/a=ice-pwd (the node needs ICE)")
        return ufrag, pwd

    def fingerprints_of(self, media: MediaSection) -> tuple[Fingerprint, ...]:
        return media.fingerprints or self.fingerprints

    def setup_of(self, media: MediaSection) -> Setup | None:
        return media.setup or self.setup

    @property
    def bundle_tag(self) -> MediaSection | None:
        """The section whose transport parameters the bundle uses."""
        for mid in self.bundle:
            media = self.section(mid)
            if media is not None and not media.rejected:
                return media
        return None

    @property
    def transport(self) -> tuple[str, str, tuple[Fingerprint, ...], Setup | None]:
        """(ice ufrag, ice pwd, fingerprints, setup) of the bundle."""
        tag = self.bundle_tag
        if tag is None:
            raise ValueError("no media section is bundled")
        ufrag, pwd = self.ice_credentials(tag)
        return ufrag, pwd, self.fingerprints_of(tag), self.setup_of(tag)


def parse_sdp(text: str) -> SessionDesc:
    """Parse and check an SDP from a WebRTC peer; ValueError says precisely what is wrong."""
    return SessionDesc.parse(text)


# --- parser ------------------------------------------------------------------------------


def _int(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit() or len(text) > 10:
        raise ValueError(f"{what}: {text!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value} is outside {lo}..{hi}")
    return value


def _parse_fmtp(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in params.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        out[key.strip().lower() if sep else part] = value.strip() if sep else ""
    return out


def _parse_simulcast(value: str, where: str) -> Simulcast:
    # RFC 8853: "send <list> [recv <list>]"; the node only uses the first list.
    parts = value.split()
    if len(parts) not in (2, 4) or parts[0] not in ("send", "recv"):
        raise ValueError(f"{where}: malformed a=simulcast:{value}")
    layers: list[SimulcastLayer] = []
    for stream in parts[1].split(";"):
        alternatives: list[tuple[str, bool]] = []
        for alt in stream.split(","):
            paused = alt.startswith("~")
            rid = alt[1:] if paused else alt
            if not _RID_ID.fullmatch(rid):
                raise ValueError(f"{where}: a=simulcast has a malformed rid {alt!r}")
            alternatives.append((rid, paused))
        layers.append(SimulcastLayer(tuple(alternatives)))
    return Simulcast(parts[0], tuple(layers))


@dataclass
class _MediaBuilder:
    index: int
    kind: MediaKind
    port: int
    proto: str
    fmts: tuple[str, ...]
    line_no: int
    mid: str | None = None
    direction: Direction = Direction.SENDRECV
    rtpmap: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    fmtp: dict[int, dict[str, str]] = field(default_factory=dict)
    rtcp_fb: dict[str, list[str]] = field(default_factory=dict)  # pt or "*"
    extmap: dict[str, int] = field(default_factory=dict)
    extmap_ids: dict[int, str] = field(default_factory=dict)
    extmap_dirs: dict[str, Direction] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_groups: list[SsrcGroup] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    rids: list[Rid] = field(default_factory=list)
    candidates: int = 0
    rtcp_fb_lines: int = 0


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self._group_items = 0

    def parse(self) -> SessionDesc:
        text = self.text
        if not isinstance(text, str):
            raise ValueError("SDP must be text")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SDP_BYTES:
            raise ValueError(f"SDP is {size} bytes; at most {MAX_SDP_BYTES} are accepted")
        if not text.strip():
            raise ValueError("SDP is empty")
        lines = text.split("\n")
        if len(lines) > MAX_SDP_LINES:
            raise ValueError(f"SDP has {len(lines)} lines; at most {MAX_SDP_LINES} are accepted")
        session: dict[str, object] = {}
        fingerprints: list[Fingerprint] = []
        groups: list[tuple[str, tuple[str, ...]]] = []
        media: list[_MediaBuilder] = []
        seen_v = False
        for number, raw in enumerate(lines, start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line:
                continue
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise ValueError(f"line {number}: {line[:40]!r} is not '<type>=<value>'")
            kind, value = line[0], line[2:]
            if not seen_v:
                if kind != "v" or value != "0":
                    raise ValueError(f"line {number}: an SDP starts with 'v=0'")
                seen_v = True
                continue
            where = f"line {number}"
            if kind == "m":
                if len(media) >= MAX_MEDIA_SECTIONS:
                    raise ValueError(f"{where}: more than {MAX_MEDIA_SECTIONS} media sections")
                media.append(self._m_line(value, len(media), number))
            elif kind == "o" and not media:
                parts = value.split()
                if len(parts) != 6:
                    raise ValueError(f"{where}: malformed o= line")
                session["session_id"] = parts[1]
                session["session_version"] = _int(parts[2], f"{where}: o= session version", 0, 2**64 - 1)
            elif kind == "a":
                name, _, attr = value.partition(":")
                if media:
                    self._media_attr(media[-1], name, attr, where)
                else:
                    self._session_attr(session, fingerprints, groups, name, attr, where)
        if not seen_v:
            raise ValueError("SDP has no v=0 line")
        if "session_id" not in session:
            raise ValueError("SDP has no o= line")
        sections = tuple(self._finish(b) for b in media)
        desc = SessionDesc(
            session_id=str(session["session_id"]),
            session_version=int(str(session["session_version"])),
            media=sections,
            bundle=self._bundle(groups, sections),
            ice_lite=bool(session.get("ice_lite", False)),
            extmap_allow_mixed=bool(session.get("extmap_allow_mixed", False)),
            ice_ufrag=_opt_str(session.get("ice_ufrag")),
            ice_pwd=_opt_str(session.get("ice_pwd")),
            fingerprints=tuple(fingerprints),
            setup=session.get("setup") if isinstance(session.get("setup"), Setup) else None,  # type: ignore[arg-type]
        )
        _check_transport(desc)
        return desc

    @staticmethod
    def _m_line(value: str, index: int, number: int) -> _MediaBuilder:
        parts = value.split()
        if len(parts) < 4:
            raise ValueError(f"line {number}: malformed m= line {value!r}")
        try:
            kind = MediaKind(parts[0])
        except ValueError:
            raise ValueError(
                f"line {number}: media kind {parts[0]!r} is not audio, video or application"
            ) from None
        port = _int(parts[1].split("/")[0], f"line {number}: m= port", 0, 65535)
        fmts = tuple(parts[3:])
        if len(fmts) > MAX_PAYLOAD_TYPES:
            raise ValueError(f"line {number}: {len(fmts)} formats on an m= line; at most {MAX_PAYLOAD_TYPES}")
        if kind is not MediaKind.APPLICATION:
            for fmt in fmts:
                _int(fmt, f"line {number}: m= payload type", 0, 127)
        return _MediaBuilder(index, kind, port, parts[2], fmts, number)

    @staticmethod
    def _fingerprint(attr: str, where: str) -> Fingerprint:
        parts = attr.split()
        if len(parts) != 2 or not _FINGERPRINT.fullmatch(parts[1]):
            raise ValueError(f"{where}: malformed a=fingerprint:{attr}")
        return Fingerprint(parts[0].lower(), parts[1].upper())

    @staticmethod
    def _setup(attr: str, where: str) -> Setup:
        try:
            return Setup(attr.strip())
        except ValueError:
            raise ValueError(f"{where}: a=setup:{attr} is not actpass, active or passive") from None

    def _session_attr(
        self,
        session: dict[str, object],
        fingerprints: list[Fingerprint],
        groups: list[tuple[str, tuple[str, ...]]],
        name: str,
        attr: str,
        where: str,
    ) -> None:
        if name == "group":
            parts = attr.split()
            if not parts:
                raise ValueError(f"{where}: empty a=group")
            self._group_items += len(parts)  # the semantics and its mids
            if self._group_items > MAX_GROUP_MIDS:
                raise ValueError(f"{where}: a=group lines name more than {MAX_GROUP_MIDS} mids")
            groups.append((parts[0], tuple(parts[1:])))
        elif name == "ice-lite":
            session["ice_lite"] = True
        elif name == "extmap-allow-mixed":
            session["extmap_allow_mixed"] = True
        elif name == "ice-ufrag":
            session["ice_ufrag"] = attr
        elif name == "ice-pwd":
            session["ice_pwd"] = attr
        elif name == "fingerprint":
            fingerprints.append(self._fingerprint(attr, where))
        elif name == "setup":
            session["setup"] = self._setup(attr, where)

    def _media_attr(self, m: _MediaBuilder, name: str, attr: str, where: str) -> None:
        if name == "mid":
            if not attr or len(attr) > 64 or not re.fullmatch(_TOKEN, attr):
                raise ValueError(f"{where}: malformed a=mid:{attr}")
            m.mid = attr
        elif name in ("sendrecv", "sendonly", "recvonly", "inactive"):
            m.direction = Direction(name)
        elif name == "rtpmap":
            match = re.fullmatch(r"(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?", attr.strip())
            if not match:
                raise ValueError(f"{where}: malformed a=rtpmap:{attr}")
            pt = _int(match[1], f"{where}: a=rtpmap payload type", 0, 127)
            clock = _int(match[3], f"{where}: a=rtpmap clock rate", 1, 10_000_000)
            channels = _int(match[4], f"{where}: a=rtpmap channels", 1, 255) if match[4] else None
            m.rtpmap[pt] = (match[2], clock, channels)
        elif name == "fmtp":
            pt_text, _, params = attr.partition(" ")
            pt = _int(pt_text, f"{where}: a=fmtp payload type", 0, 127)
            m.fmtp.setdefault(pt, {}).update(_parse_fmtp(params))
        elif name == "rtcp-fb":
            pt_text, _, fb = attr.partition(" ")
            if pt_text != "*":
                _int(pt_text, f"{where}: a=rtcp-fb payload type", 0, 127)
            normalized = " ".join(fb.split())
            if not normalized:
                raise ValueError(f"{where}: a=rtcp-fb:{attr} names no feedback")
            m.rtcp_fb_lines += 1
            if m.rtcp_fb_lines > MAX_RTCP_FB:
                raise ValueError(f"{where}: more than {MAX_RTCP_FB} a=rtcp-fb lines in a section")
            m.rtcp_fb.setdefault(pt_text, []).append(normalized)
        elif name == "extmap":
            match = re.fullmatch(
                r"(\d+)(?:/(sendrecv|sendonly|recvonly|inactive))? (\S+)(?: .*)?", attr.strip()
            )
            if not match:
                raise ValueError(f"{where}: malformed a=extmap:{attr}")
            ext_id = _int(match[1], f"{where}: a=extmap id", 1, 255)
            uri = match[3]
            if ext_id == 15:
                raise ValueError(f"{where}: a=extmap id 15 is reserved")
            known = m.extmap_ids.get(ext_id)
            if known is not None and known != uri:
                raise ValueError(f"{where}: a=extmap id {ext_id} is used for both {known} and {uri}")
            m.extmap_ids[ext_id] = uri
            if uri not in m.extmap and match[2]:
                m.extmap_dirs[uri] = Direction(match[2])
            m.extmap.setdefault(uri, ext_id)
        elif name == "ssrc":
            match = re.fullmatch(r"(\d+) ([A-Za-z0-9_-]+)(?::(.*))?", attr.strip())
            if not match:
                raise ValueError(f"{where}: malformed a=ssrc:{attr}")
            ssrc = _int(match[1], f"{where}: a=ssrc", 0, 2**32 - 1)
            m.ssrcs.setdefault(ssrc, {})[match[2]] = match[3] or ""
        elif name == "ssrc-group":
            parts = attr.split()
            if len(parts) < 2:
                raise ValueError(f"{where}: malformed a=ssrc-group:{attr}")
            ssrcs = tuple(_int(p, f"{where}: a=ssrc-group ssrc", 0, 2**32 - 1) for p in parts[1:])
            m.ssrc_groups.append(SsrcGroup(parts[0], ssrcs))
        elif name == "msid":
            parts = attr.split()
            if not 1 <= len(parts) <= 2:
                raise ValueError(f"{where}: malformed a=msid:{attr}")
            m.attrs["msid"] = (parts[0], parts[1] if len(parts) == 2 else "")
        elif name == "rid":
            match = re.fullmatch(r"(\S+) (send|recv)(?: (.*))?", attr.strip())
            if not match or not _RID_ID.fullmatch(match[1]):
                raise ValueError(f"{where}: malformed a=rid:{attr}")
            if len(m.rids) >= MAX_RIDS:
                raise ValueError(f"{where}: more than {MAX_RIDS} a=rid lines in a section")
            if any(r.id == match[1] for r in m.rids):
                raise ValueError(f"{where}: a=rid {match[1]!r} is declared twice")
            m.rids.append(Rid(match[1], match[2], (match[3] or "").strip()))
        elif name == "simulcast":
            m.attrs["simulcast"] = _parse_simulcast(attr.strip(), where)
        elif name == "fingerprint":
            m.fingerprints.append(self._fingerprint(attr, where))
        elif name == "setup":
            m.attrs["setup"] = self._setup(attr, where)
        elif name in ("ice-ufrag", "ice-pwd"):
            m.attrs[name] = attr
        elif name in ("rtcp-mux", "rtcp-rsize", "bundle-only", "extmap-allow-mixed"):
            m.attrs[name] = True
        elif name == "sctp-port":
            m.attrs["sctp-port"] = _int(attr.strip(), f"{where}: a=sctp-port", 1, 65535)
        elif name == "max-message-size":
            m.attrs["max-message-size"] = _int(attr.strip(), f"{where}: a=max-message-size", 0, 2**32 - 1)
        elif name == "candidate":
            m.candidates += 1

    @staticmethod
    def _finish(m: _MediaBuilder) -> MediaSection:
        where = f"m-line {m.index} (line {m.line_no})"
        if m.mid is None:
            raise ValueError(f"{where}: no a=mid (unified plan with mids is required)")
        codecs: list[CodecParams] = []
        if m.kind is not MediaKind.APPLICATION:
            for fmt in m.fmts:
                pt = int(fmt)
                mapped = m.rtpmap.get(pt) or _STATIC_PTS.get(pt)
                if mapped is None:
                    raise ValueError(f"{where}: payload type {pt} has no a=rtpmap")
                name, clock, channels = mapped
                fb = tuple(dict.fromkeys(m.rtcp_fb.get("*", []) + m.rtcp_fb.get(str(pt), [])))
                codecs.append(CodecParams(pt, name, clock, channels, m.fmtp.get(pt, {}), fb))
            if len({c.pt for c in codecs}) != len(codecs):
                raise ValueError(f"{where}: a payload type is listed twice on the m= line")
            codecs = _link_rtx(codecs)
        ssrcs = tuple(
            SsrcInfo(ssrc, attrs.get("cname") or None, attrs.get("msid") or None)
            for ssrc, attrs in m.ssrcs.items()
        )
        attrs = m.attrs
        msid = attrs.get("msid")
        simulcast = attrs.get("simulcast")
        setup = attrs.get("setup")
        sctp_port = attrs.get("sctp-port")
        max_message_size = attrs.get("max-message-size")
        return MediaSection(
            index=m.index,
            kind=m.kind,
            port=m.port,
            proto=m.proto,
            fmts=m.fmts,
            mid=m.mid,
            direction=m.direction,
            codecs=tuple(codecs),
            header_extensions=dict(m.extmap),
            header_extension_directions=dict(m.extmap_dirs),
            extmap_allow_mixed=bool(attrs.get("extmap-allow-mixed", False)),
            ice_ufrag=_opt_str(attrs.get("ice-ufrag")),
            ice_pwd=_opt_str(attrs.get("ice-pwd")),
            fingerprints=tuple(m.fingerprints),
            setup=setup if isinstance(setup, Setup) else None,
            rtcp_mux=bool(attrs.get("rtcp-mux", False)),
            rtcp_rsize=bool(attrs.get("rtcp-rsize", False)),
            bundle_only=bool(attrs.get("bundle-only", False)),
            ssrcs=ssrcs,
            ssrc_groups=tuple(m.ssrc_groups),
            msid=msid if isinstance(msid, tuple) else None,
            rids=tuple(m.rids),
            simulcast=simulcast if isinstance(simulcast, Simulcast) else None,
            sctp_port=sctp_port if isinstance(sctp_port, int) else None,
            max_message_size=max_message_size if isinstance(max_message_size, int) else None,
            candidates=m.candidates,
        )

    @staticmethod
    def _bundle(
        groups: list[tuple[str, tuple[str, ...]]], sections: tuple[MediaSection, ...]
    ) -> tuple[str, ...]:
        mids = [s.mid for s in sections]
        known = set(mids)
        if len(known) != len(mids):
            dup = next(mid for mid in mids if mids.count(mid) > 1)
            raise ValueError(f"mid {dup!r} is used by more than one media section")
        bundles = [members for semantics, members in groups if semantics == "BUNDLE"]
        if len(bundles) > 1:
            raise ValueError("more than one a=group:BUNDLE; the node bundles everything on one transport")
        for _, members in groups:
            for mid in members:
                if mid not in known:
                    raise ValueError(f"a=group names mid {mid!r}, which no media section has")
        return bundles[0] if bundles else ()


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _link_rtx(codecs: list[CodecParams]) -> list[CodecParams]:
    """Set ``rtx_pt`` on each primary that an RTX payload type (apt=) repairs."""
    rtx_for: dict[int, int] = {}
    for codec in codecs:
        apt = codec.apt if codec.is_rtx else None
        if apt is not None and apt not in rtx_for:
            rtx_for[apt] = codec.pt
    return [replace(c, rtx_pt=rtx_for.get(c.pt)) if not c.is_rtx else c for c in codecs]


def _check_transport(desc: SessionDesc) -> None:
    """Refuse what the node cannot talk to: no ICE, no DTLS, no BUNDLE, no rtcp-mux."""
    if desc.ice_lite:
        raise ValueError("the offerer is ICE-lite too; one side must be a full ICE agent")
    live = [m for m in desc.media if not m.rejected]
    if not live:
        return
    if not desc.bundle:
        raise ValueError("no a=group:BUNDLE; the node requires BUNDLE (one transport for all media)")
    bundled = set(desc.bundle)
    for media in live:
        if media.is_rtp and media.proto not in RTP_PROTOS:
            raise ValueError(
                f"{media.where}: protocol {media.proto} is not DTLS-SRTP (UDP/TLS/RTP/SAVPF expected)"
            )
        if media.mid not in bundled:
            raise ValueError(f"{media.where} is not in the BUNDLE group; the node requires BUNDLE")
        ufrag, pwd = desc.ice_credentials(media)
        if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.fullmatch(ufrag)):
            raise ValueError(f"{media.where}: a=ice-ufrag must be 4 to 256 ice-chars")
        if not (22 <= len(pwd) <= 256 and _ICE_CHARS.fullmatch(pwd)):
            raise ValueError(f"{media.where}: a=ice-pwd must be 22 to 256 ice-chars")
        if not desc.fingerprints_of(media):
            raise ValueError(f"{media.where}: no a=fingerprint (the node requires DTLS-SRTP)")
        if media.is_rtp and not media.rtcp_mux:
            raise ValueError(f"{media.where}: no a=rtcp-mux; the node requires RTP/RTCP multiplexing")


# --- negotiation results --------------------------------------------------------------------


class SectionOutcome(enum.Enum):
    ACCEPTED = "accepted"  # media (or data) flows
    INACTIVE = "inactive"  # kept in the bundle, answered a=inactive
    REJECTED = "rejected"  # answered with port 0


@dataclass(frozen=True)
class SendStream:
    """What the node sends on a section: its SSRCs and the identity it signals."""

    ssrc: int
    rtx_ssrc: int | None
    cname: str
    stream_id: str
    track_id: str


@dataclass(frozen=True)
class AnsweredSection:
    """One m-section of the answer: the offer's mid, our direction, codecs with offer PTs."""

    mid: str
    kind: MediaKind
    outcome: SectionOutcome
    direction: Direction = Direction.INACTIVE
    codecs: tuple[CodecParams, ...] = ()
    header_extensions: Mapping[str, int] = field(default_factory=dict)
    simulcast: Simulcast | None = None  # answered simulcast ("recv ...")
    #: answered a=extmap directions other than sendrecv (uri -> ours), RFC 8285 §6
    extension_directions: Mapping[str, Direction] = field(default_factory=dict)
    send: SendStream | None = None
    reason: str = ""


@dataclass(frozen=True)
class PublishTrack:
    """A section the publisher sends on, as negotiated: what the forwarder needs."""

    mid: str
    kind: MediaKind
    codecs: tuple[CodecParams, ...]  # publisher PTs, preferred first, with RTX/RED
    header_extensions: Mapping[str, int]  # uri -> publisher id
    rids: tuple[str, ...] = ()  # simulcast layers, as the client listed them (highest first in Chrome)
    ssrcs: tuple[int, ...] = ()  # media SSRCs when signalled (Chrome signals none with simulcast)
    rtx_ssrcs: Mapping[int, int] = field(default_factory=dict)  # media SSRC -> RTX SSRC
    cname: str | None = None
    stream_id: str | None = None
    track_id: str | None = None

    @property
    def codec(self) -> CodecParams:
        """The codec the publisher will send with (the first one answered)."""
        return next(c for c in self.codecs if c.is_primary)

    @property
    def mid_ext_id(self) -> int | None:
        return self.header_extensions.get(HDREXT_MID)

    @property
    def rid_ext_id(self) -> int | None:
        return self.header_extensions.get(HDREXT_RID)

    @property
    def repaired_rid_ext_id(self) -> int | None:
        return self.header_extensions.get(HDREXT_REPAIRED_RID)


@dataclass(frozen=True)
class PublishNegotiation:
    sections: tuple[AnsweredSection, ...]
    tracks: tuple[PublishTrack, ...]
    datachannel: bool = False


def _refuse_codecs(media: MediaSection, policy: CodecPolicy) -> ApiError:
    offered = list(dict.fromkeys(c.name for c in media.primary_codecs))
    allowed = policy.allowed_names(media.kind)
    kind = media.kind.value
    if allowed:
        detail = (
            f"the room allows {kind} codecs {', '.join(allowed)}, but the {kind} section "
            f"(mid {media.mid!r}) offers {', '.join(offered) or 'none'}"
        )
    else:
        detail = f"the room allows no {kind} codec, but the offer sends {kind} (mid {media.mid!r})"
    return ApiError(
        "codec/unsupported", detail, status=406, extra={"kind": kind, "offered": offered, "allowed": allowed}
    )


#: RFC 8285 §6: the direction an answer gives an extension offered with a direction
_EXTMAP_ANSWER = {
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.INACTIVE: Direction.INACTIVE,
}


@dataclass(frozen=True)
class _Extensions:
    """A section's answered header extensions: all of them (for the answer's a=extmap lines),
    their directions, and those the node uses in its role (for the forwarder)."""

    answered: dict[str, int]
    directions: dict[str, Direction]
    used: dict[str, int]


def _answer_extensions(media: MediaSection, offered: Mapping[str, int], *, node_sends: bool) -> _Extensions:
    """RFC 8285 §6 for ``offered`` (the extensions the policy keeps): an offered ``sendonly`` is
    answered ``recvonly``, ``recvonly`` is answered ``sendonly``, ``sendrecv`` and ``inactive``
    stay.  An extension the answered direction gives the node no use for in its role (it only
    receives on a publish section, only sends on a subscribe one) is left out of the answer, except
    ``inactive``, which is answered as such and not used."""
    answered: dict[str, int] = {}
    directions: dict[str, Direction] = {}
    used: dict[str, int] = {}
    for uri, ext_id in offered.items():
        direction = _EXTMAP_ANSWER[media.header_extension_directions.get(uri, Direction.SENDRECV)]
        usable = direction.sends if node_sends else direction.receives
        if not usable and direction is not Direction.INACTIVE:
            continue
        answered[uri] = ext_id
        if direction is not Direction.SENDRECV:
            directions[uri] = direction
        if usable:
            used[uri] = ext_id
    return _Extensions(answered, directions, used)


def _answer_simulcast(media: MediaSection, extensions: Mapping[str, int]) -> Simulcast | None:
    """The simulcast the node accepts: the offered send layers, if rids can be read."""
    sim = media.simulcast
    if sim is None or sim.direction != "send" or HDREXT_RID not in extensions:
        return None
    declared = {r.id for r in media.rids if r.direction == "send"}
    layers = []
    for layer in sim.layers:
        alternatives = tuple(a for a in layer.alternatives if a[0] in declared)
        if alternatives:
            layers.append(SimulcastLayer(alternatives))
    return Simulcast("recv", tuple(layers[:MAX_SIMULCAST_LAYERS])) if layers else None


def _inactive_or_rejected(media: MediaSection, policy: CodecPolicy, reason: str) -> AnsweredSection:
    codecs = tuple(policy.select(media.codecs))
    if not codecs:
        return AnsweredSection(media.mid, media.kind, SectionOutcome.REJECTED, reason=reason)
    offered = policy.header_extensions_for(media.kind, media.header_extensions)
    extensions = _answer_extensions(media, offered, node_sends=media.direction.receives)
    return AnsweredSection(
        media.mid,
        media.kind,
        SectionOutcome.INACTIVE,
        Direction.INACTIVE,
        codecs,
        extensions.answered,
        reason=reason,
        extension_directions=extensions.directions,
    )


def _answer_application(media: MediaSection, taken: bool) -> AnsweredSection:
    if media.rejected:
        return AnsweredSection(
            media.mid, media.kind, SectionOutcome.REJECTED, reason="rejected by the offerer"
        )
    if not media.is_datachannel:
        return AnsweredSection(
            media.mid,
            media.kind,
            SectionOutcome.REJECTED,
            reason=f"unsupported application protocol {media.proto}",
        )
    if taken:
        return AnsweredSection(
            media.mid, media.kind, SectionOutcome.REJECTED, reason="only one data channel section"
        )
    return AnsweredSection(media.mid, media.kind, SectionOutcome.ACCEPTED, Direction.SENDRECV)


def negotiate_publish(offer: SessionDesc, policy: CodecPolicy, *, transport_cc: bool = True) -> PublishNegotiation:
    """Answer a publisher's offer (WHIP, the WebSocket ``publish``): receive every section it
    sends, in policy codecs.  ``transport_cc``: also accept the transport-wide-cc header extension
    and ``transport-cc`` feedback where offered (the node then sends transport-cc feedback, and
    the publisher's own estimator adapts its sending; ``goog-remb`` stays, as the upper bound).

    Raises ``ApiError("codec/unsupported", status=406)`` when a section the client sends on
    has no codec the room allows.
    """
    if transport_cc:
        policy = policy.with_transport_cc()
    sections: list[AnsweredSection] = []
    tracks: list[PublishTrack] = []
    datachannel = False
    for media in offer.media:
        if media.kind is MediaKind.APPLICATION:
            answered = _answer_application(media, datachannel)
            datachannel = datachannel or answered.outcome is SectionOutcome.ACCEPTED
            sections.append(answered)
            continue
        if media.rejected:
            sections.append(
                AnsweredSection(
                    media.mid, media.kind, SectionOutcome.REJECTED, reason="rejected by the offerer"
                )
            )
            continue
        if not media.direction.sends:
            reason = "the node sends nothing on a publish session"
            sections.append(_inactive_or_rejected(media, policy, reason))
            continue
        codecs = tuple(policy.select(media.codecs))
        if not any(c.is_primary for c in codecs):
            raise _refuse_codecs(media, policy)
        ext_answer = _answer_extensions(
            media, policy.header_extensions_for(media.kind, media.header_extensions), node_sends=False
        )
        extensions = ext_answer.used
        simulcast = _answer_simulcast(media, extensions)
        sections.append(
            AnsweredSection(
                media.mid,
                media.kind,
                SectionOutcome.ACCEPTED,
                Direction.RECVONLY,
                codecs,
                ext_answer.answered,
                simulcast,
                extension_directions=ext_answer.directions,
            )
        )
        ssrcs = media.media_ssrcs if simulcast is None else ()
        msid = media.msid
        if msid is None:
            ssrc_msid = next((s.msid for s in media.ssrcs if s.msid), None)
            if ssrc_msid:
                stream, _, track = ssrc_msid.partition(" ")
                msid = (stream, track)
        tracks.append(
            PublishTrack(
                mid=media.mid,
                kind=media.kind,
                codecs=codecs,
                header_extensions=extensions,
                rids=simulcast.rids if simulcast else (),
                ssrcs=ssrcs,
                rtx_ssrcs={s: r for s in ssrcs if (r := media.rtx_ssrc_of(s)) is not None},
                cname=media.cname,
                stream_id=msid[0] if msid else None,
                track_id=msid[1] if msid and msid[1] else None,
            )
        )
    return PublishNegotiation(tuple(sections), tuple(tracks), datachannel)


# --- subscribe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackDescription:
    """A track in the room, as the publisher negotiated it (publisher PTs and ids)."""

    track_id: str
    kind: MediaKind
    stream_id: str
    codecs: tuple[CodecParams, ...]  # the first primary is the codec being sent
    header_extensions: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_publish(cls, track_id: str, stream_id: str, published: PublishTrack) -> TrackDescription:
        return cls(track_id, published.kind, stream_id, published.codecs, dict(published.header_extensions))

    @property
    def codec(self) -> CodecParams:
        for codec in self.codecs:
            if codec.is_primary:
                return codec
        raise ValueError(f"track {self.track_id!r} has no primary codec")


@dataclass(frozen=True)
class OutgoingTrack:
    """A track to deliver, with the SSRCs the node sends it with to this subscriber."""

    track: TrackDescription
    ssrc: int
    rtx_ssrc: int | None = None


@dataclass(frozen=True)
class PtMapping:
    name: str
    publisher_pt: int
    subscriber_pt: int
    publisher_rtx_pt: int | None = None
    subscriber_rtx_pt: int | None = None
    #: the publisher codec's variant (``variant_keys``), most specific first; () = by name
    variant: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return self.variant or (self.name.lower(),)


@dataclass(frozen=True)
class SubscribeTrack:
    """A delivered track: where it goes and how the forwarder rewrites its packets."""

    mid: str
    track_id: str
    kind: MediaKind
    ssrc: int
    rtx_ssrc: int | None  # None when the subscriber negotiated no RTX for the sent codec
    codecs: tuple[CodecParams, ...]  # subscriber PTs as answered
    mappings: tuple[PtMapping, ...]  # first: the codec being sent
    header_extensions: Mapping[str, int]  # uri -> subscriber id
    header_extension_map: Mapping[int, int]  # publisher id -> subscriber id

    @property
    def out_payload_types(self) -> dict[str, int]:
        """Codec variant -> subscriber PT, for the forwarder (``DownTrack``), which looks a packet's
        codec up by its variant keys.  Every mapping's most specific key comes first, then the
        family keys no other mapping took (first mapping wins: the codec being sent); so two
        variants of one codec keep their own payload types."""
        out: dict[str, int] = {}
        depth = max((len(m.keys) for m in self.mappings), default=0)
        for level in range(depth):
            for m in self.mappings:
                if level < len(m.keys):
                    out.setdefault(m.keys[level], m.subscriber_pt)
        return out

    @property
    def pt_map(self) -> dict[int, int]:
        """Publisher PT -> subscriber PT, RTX included where both sides have it."""
        out: dict[int, int] = {}
        for m in self.mappings:
            out[m.publisher_pt] = m.subscriber_pt
            if m.publisher_rtx_pt is not None and m.subscriber_rtx_pt is not None:
                out[m.publisher_rtx_pt] = m.subscriber_rtx_pt
        return out


@dataclass(frozen=True)
class TrackRefusal:
    track_id: str
    kind: MediaKind
    code: str  # a catalogue code: "codec/unsupported"
    detail: str


@dataclass(frozen=True)
class SubscribeNegotiation:
    sections: tuple[AnsweredSection, ...]
    tracks: tuple[SubscribeTrack, ...]
    refused: tuple[TrackRefusal, ...] = ()
    datachannel: bool = False


def _map_track(
    media: MediaSection, out: OutgoingTrack, policy: CodecPolicy
) -> tuple[list[CodecParams], list[PtMapping]] | None:
    """Subscriber codecs (answer order) and PT mappings; None if the sent codec is missing."""
    offered = media.codecs
    by_pt = {c.pt: c for c in offered}
    pub_by_pt = {c.pt: c for c in out.track.codecs}
    answer: list[CodecParams] = []
    mappings: list[PtMapping] = []
    used: set[int] = set()
    primaries = [c for c in out.track.codecs if c.is_primary]
    for pub in primaries:
        sub = find_match(pub, (c for c in offered if c.pt not in used))
        if sub is None:
            if pub is primaries[0]:
                return None
            continue
        used.add(sub.pt)
        answer.append(filter_rtcp_fb(sub, policy.rtcp_feedback))
        sub_rtx = by_pt.get(sub.rtx_pt) if sub.rtx_pt is not None and out.rtx_ssrc is not None else None
        if sub_rtx is not None:
            answer.append(replace(sub_rtx, rtcp_fb=()))
        pub_rtx = pub.rtx_pt if pub.rtx_pt in pub_by_pt else None
        mappings.append(
            PtMapping(pub.name, pub.pt, sub.pt, pub_rtx, sub_rtx.pt if sub_rtx else None, variant_keys(pub))
        )
    if policy.red and media.kind is MediaKind.AUDIO:
        sub_pts = {m.subscriber_pt for m in mappings}
        pub_to_sub = {m.publisher_pt: m.subscriber_pt for m in mappings}
        pub_red = next((c for c in out.track.codecs if c.is_red), None)
        if pub_red is not None and all(p in pub_to_sub for p in pub_red.red_primaries()):
            wanted = tuple(pub_to_sub[p] for p in pub_red.red_primaries())
            sub_red = next(
                (c for c in offered if c.is_red and c.red_primaries() == wanted and set(wanted) <= sub_pts),
                None,
            )
            if sub_red is not None:
                answer.append(replace(sub_red, rtcp_fb=()))
                mappings.append(
                    PtMapping(pub_red.name, pub_red.pt, sub_red.pt, variant=variant_keys(pub_red))
                )
    return answer, mappings


def negotiate_subscribe(
    offer: SessionDesc,
    tracks: Sequence[OutgoingTrack],
    policy: CodecPolicy,
    *,
    cname: str,
) -> SubscribeNegotiation:
    """Answer a subscriber's offer (WHEP): send one published track per receiving section.

    Tracks are taken in order; each goes to the first free receiving section of its kind
    whose offered codecs include the track's sent codec (matched as in ``codecs_match``).  A
    track no section can carry is listed in ``refused``; sections left without a track are
    answered inactive.  When tracks were given but none can be delivered because of codecs,
    the whole request is refused: ``ApiError("codec/unsupported", status=406)``.
    """
    policy = policy.for_subscribers()
    receiving = [m for m in offer.media if m.is_rtp and not m.rejected and m.direction.receives]
    assigned: dict[str, AnsweredSection] = {}
    delivered: list[SubscribeTrack] = []
    refused: list[TrackRefusal] = []
    for out in tracks:
        track = out.track
        candidates = [m for m in receiving if m.kind is track.kind and m.mid not in assigned]
        if not candidates:
            continue  # nothing to carry it: not a codec problem; the caller sees it undelivered
        for media in candidates:
            mapped = _map_track(media, out, policy)
            if mapped is None:
                continue
            codecs, mappings = mapped
            offered_ext = {
                uri: ext_id
                for uri, ext_id in policy.header_extensions_for(media.kind, media.header_extensions).items()
                if uri not in (HDREXT_RID, HDREXT_REPAIRED_RID)
            }
            ext_answer = _answer_extensions(media, offered_ext, node_sends=True)
            extensions = ext_answer.used
            ext_map = {
                pub_id: extensions[uri]
                for uri, pub_id in track.header_extensions.items()
                if uri in extensions
            }
            rtx_ssrc = out.rtx_ssrc if any(m.subscriber_rtx_pt is not None for m in mappings[:1]) else None
            send = SendStream(out.ssrc, rtx_ssrc, cname, track.stream_id, track.track_id)
            assigned[media.mid] = AnsweredSection(
                media.mid,
                media.kind,
                SectionOutcome.ACCEPTED,
                Direction.SENDONLY,
                tuple(codecs),
                ext_answer.answered,
                send=send,
                extension_directions=ext_answer.directions,
            )
            delivered.append(
                SubscribeTrack(
                    media.mid,
                    track.track_id,
                    track.kind,
                    out.ssrc,
                    rtx_ssrc,
                    tuple(codecs),
                    tuple(mappings),
                    extensions,
                    ext_map,
                )
            )
            break
        else:
            offered = ", ".join(dict.fromkeys(c.name for c in candidates[0].primary_codecs)) or "none"
            refused.append(
                TrackRefusal(
                    track.track_id,
                    track.kind,
                    "codec/unsupported",
                    f"track {track.track_id!r} is sent as {_describe(track.codec)}, which the subscriber's "
                    f"{track.kind.value} sections do not accept (offered: {offered})",
                )
            )
    if tracks and not delivered and refused:
        raise ApiError(
            "codec/unsupported",
            "no published track can be delivered: " + "; ".join(r.detail for r in refused),
            status=406,
            extra={"refused": [r.track_id for r in refused]},
        )
    sections: list[AnsweredSection] = []
    datachannel = False
    for media in offer.media:
        if media.mid in assigned:
            sections.append(assigned[media.mid])
        elif media.kind is MediaKind.APPLICATION:
            answered = _answer_application(media, datachannel)
            datachannel = datachannel or answered.outcome is SectionOutcome.ACCEPTED
            sections.append(answered)
        elif media.rejected:
            sections.append(
                AnsweredSection(
                    media.mid, media.kind, SectionOutcome.REJECTED, reason="rejected by the offerer"
                )
            )
        elif not media.direction.receives:
            sections.append(
                _inactive_or_rejected(media, policy, "the node receives nothing on a subscribe session")
            )
        else:
            sections.append(
                _inactive_or_rejected(media, policy, f"no published {media.kind.value} track for it")
            )
    return SubscribeNegotiation(tuple(sections), tuple(delivered), tuple(refused), datachannel)


def _describe(codec: CodecParams) -> str:
    text = f"{codec.name}/{codec.clock_rate}"
    for key in ("profile-level-id", "packetization-mode", "profile-id", "profile"):
        if key in codec.fmtp:
            text += f" {key}={codec.fmtp[key]}"
    return text


# --- answer / offer text ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalParams:
    """The node's side of a transport."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256, "AB:CD:..."
    candidates: tuple[tuple[str, int], ...] = ()  # host UDP candidates (ip, port)
    #: passive ICE-TCP host candidates (RFC 6544), after the UDP ones and at a lower priority
    tcp_candidates: tuple[tuple[str, int], ...] = ()
    #: The role answered to an ``actpass`` offer: PASSIVE (DTLS server) or ACTIVE (client).
    dtls_role: Setup = Setup.PASSIVE
    session_id: int = 1
    session_version: int = 1

    def __post_init__(self) -> None:
        if not (4 <= len(self.ice_ufrag) <= 256 and _ICE_CHARS.fullmatch(self.ice_ufrag)):
            raise ValueError("local ice_ufrag must be 4 to 256 ice-chars")
        if not (22 <= len(self.ice_pwd) <= 256 and _ICE_CHARS.fullmatch(self.ice_pwd)):
            raise ValueError("local ice_pwd must be 22 to 256 ice-chars")
        if not re.fullmatch(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}", self.fingerprint):
            raise ValueError("local fingerprint must be a sha-256 digest as 32 upper-case hex pairs")
        if self.dtls_role is Setup.ACTPASS:
            raise ValueError("local dtls_role must be active or passive")
        for ip, port in self.candidates + self.tcp_candidates:
            ipaddress.ip_address(ip)  # ValueError for a bad address
            if not 1 <= port <= 65535:
                raise ValueError(f"candidate port {port} is outside 1..65535")


def answer_setup(offered: Setup | None, preferred: Setup = Setup.PASSIVE) -> Setup:
    """The a=setup to answer: the opposite of a fixed offer, else ``preferred``."""
    if offered is Setup.ACTIVE:
        return Setup.PASSIVE
    if offered is Setup.PASSIVE:
        return Setup.ACTIVE
    return preferred


def _connection(local: LocalParams) -> tuple[int, str]:
    if not local.candidates:
        return 9, "IN IP4 0.0.0.0"
    ip, port = local.candidates[0]
    family = "IP6" if ipaddress.ip_address(ip).version == 6 else "IP4"
    return port, f"IN {family} {ip}"


def _candidate_lines(local: LocalParams) -> list[str]:
    lines = candidate_lines(local.candidates, local.tcp_candidates)
    lines.append("a=end-of-candidates")
    return lines


def candidate_lines(udp: Sequence[tuple[str, int]], tcp: Sequence[tuple[str, int]] = ()) -> list[str]:
    """Host candidates: UDP ones, then passive TCP ones (RFC 6544 §4.5) whose local preference
    is below every UDP one's, so that UDP is preferred when both work."""
    lines = []
    for i, (ip, port) in enumerate(udp):
        priority = (126 << 24) | ((65535 - i) << 8) | 255
        lines.append(f"a=candidate:{i + 1} 1 udp {priority} {ip} {port} typ host")
    for i, (ip, port) in enumerate(tcp):
        # RFC 6544 §4.2: local preference = direction preference (passive: 2) << 13 | other
        priority = (126 << 24) | (((2 << 13) | (8191 - i)) << 8) | 255
        lines.append(f"a=candidate:{len(udp) + i + 1} 1 tcp {priority} {ip} {port} typ host tcptype passive")
    return lines


def _codec_lines(codecs: Sequence[CodecParams]) -> list[str]:
    lines = []
    for codec in codecs:
        lines.append(f"a=rtpmap:{codec.rtpmap_value()}")
        lines.extend(f"a=rtcp-fb:{codec.pt} {fb}" for fb in codec.rtcp_fb)
        fmtp = codec.fmtp_value()
        if fmtp is not None:
            lines.append(f"a=fmtp:{fmtp}")
    return lines


def _send_lines(send: SendStream) -> list[str]:
    lines = [f"a=msid:{send.stream_id} {send.track_id}"]
    ssrcs = [send.ssrc]
    if send.rtx_ssrc is not None:
        lines.append(f"a=ssrc-group:FID {send.ssrc} {send.rtx_ssrc}")
        ssrcs.append(send.rtx_ssrc)
    for ssrc in ssrcs:
        lines.append(f"a=ssrc:{ssrc} cname:{send.cname}")
        lines.append(f"a=ssrc:{ssrc} msid:{send.stream_id} {send.track_id}")
    return lines


def _render(
    local: LocalParams,
    setup: Setup,
    entries: Sequence[tuple[MediaSection | None, AnsweredSection, str]],
    *,
    allow_mixed: bool,
    bundle_order: Sequence[str],
    rtcp_rsize: Mapping[str, bool],
) -> str:
    """SDP text; ``entries`` are (offered section or None, what to say, proto)."""
    live = {a.mid for _, a, _ in entries if a.outcome is not SectionOutcome.REJECTED}
    bundle = [mid for mid in bundle_order if mid in live]
    port, conn = _connection(local)
    lines = [
        "v=0",
        f"o=- {local.session_id} {local.session_version} IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=ice-lite",
    ]
    if bundle:
        lines.append("a=group:BUNDLE " + " ".join(bundle))
    if allow_mixed:
        lines.append("a=extmap-allow-mixed")
    lines.append("a=msid-semantic:WMS *")
    for offered, ans, proto in entries:
        fmts = [str(c.pt) for c in ans.codecs]
        if ans.kind is MediaKind.APPLICATION:
            fmts = (
                [DATACHANNEL_FMT]
                if ans.outcome is SectionOutcome.ACCEPTED
                else list(offered.fmts if offered else [])
            )
        if ans.outcome is SectionOutcome.REJECTED:
            first = list(offered.fmts[:1]) if offered else ["0"]
            lines += [
                f"m={ans.kind.value} 0 {proto} {' '.join(first)}",
                "c=IN IP4 0.0.0.0",
                f"a=mid:{ans.mid}",
            ]
            if ans.kind is not MediaKind.APPLICATION:
                lines.append("a=inactive")
            continue
        lines += [f"m={ans.kind.value} {port} {proto} {' '.join(fmts)}", f"c={conn}"]
        if bundle and ans.mid == bundle[0]:
            lines += _candidate_lines(local)[:-1]
        lines += [
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            f"a=fingerprint:sha-256 {local.fingerprint}",
            f"a=setup:{setup.value}",
            f"a=mid:{ans.mid}",
        ]
        if ans.kind is MediaKind.APPLICATION:
            lines += [f"a=sctp-port:{SCTP_PORT}", f"a=max-message-size:{MAX_MESSAGE_SIZE}"]
        else:
            directions = ans.extension_directions
            lines += [
                f"a=extmap:{ext_id}/{directions[uri].value} {uri}"
                if uri in directions
                else f"a=extmap:{ext_id} {uri}"
                for uri, ext_id in sorted(ans.header_extensions.items(), key=lambda x: x[1])
            ]
            lines.append(f"a={ans.direction.value}")
            if ans.send is not None:
                lines.append(f"a=msid:{ans.send.stream_id} {ans.send.track_id}")
            lines.append("a=rtcp-mux")
            if rtcp_rsize.get(ans.mid, False):
                lines.append("a=rtcp-rsize")
            lines += _codec_lines(ans.codecs)
            if ans.simulcast is not None:
                lines += [f"a=rid:{rid} {ans.simulcast.direction}" for rid in ans.simulcast.rids]
                lines.append(f"a=simulcast:{ans.simulcast.value()}")
            if ans.send is not None:
                lines += _send_lines(ans.send)[1:]
        if bundle and ans.mid == bundle[0]:
            lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def build_answer(
    offer: SessionDesc, negotiation: PublishNegotiation | SubscribeNegotiation, local: LocalParams
) -> str:
    """The SDP answer: every offered section in order, accepted ones bundled on our transport."""
    if len(negotiation.sections) != len(offer.media) or any(
        a.mid != m.mid for a, m in zip(negotiation.sections, offer.media, strict=True)
    ):
        raise ValueError("the negotiation does not belong to this offer")
    offered_setup = offer.transport[3] if offer.bundle_tag is not None else None
    setup = answer_setup(offered_setup, local.dtls_role)
    entries = []
    for media, ans in zip(offer.media, negotiation.sections, strict=True):
        proto = media.proto
        if ans.outcome is not SectionOutcome.REJECTED and ans.kind is MediaKind.APPLICATION:
            proto = SCTP_PROTO
        entries.append((media, ans, proto))
    allow_mixed = offer.extmap_allow_mixed or any(m.extmap_allow_mixed for m in offer.media)
    return _render(
        local,
        setup,
        entries,
        allow_mixed=allow_mixed,
        bundle_order=offer.bundle,
        rtcp_rsize={m.mid: m.rtcp_rsize for m in offer.media},
    )


# --- server-offered subscriber transport -------------------------------------------------------


@dataclass(frozen=True)
class OfferPlan:
    """A node offer: the text and, per section, the track and PTs it was made with."""

    sdp: str
    sections: tuple[AnsweredSection, ...]
    tracks: tuple[OutgoingTrack, ...]  # same order as sections (one per section)


def _node_codecs(tracks: Sequence[OutgoingTrack], policy: CodecPolicy) -> dict[int, list[CodecParams]]:
    """Per track index, its codecs renumbered so one PT means one codec across the bundle."""
    table: list[CodecParams] = []  # codecs given a node PT so far
    next_pt = 96

    def allocate() -> int:
        nonlocal next_pt
        while next_pt in (c.pt for c in table):
            next_pt += 1
        if next_pt > 127:
            raise ValueError("more distinct codecs than dynamic payload types")
        pt = next_pt
        next_pt += 1
        return pt

    def node_pt(codec: CodecParams) -> CodecParams:
        for known in table:
            if known.is_primary and codecs_match(known, codec) and dict(known.fmtp) == dict(codec.fmtp):
                return known
        made = filter_rtcp_fb(codec, policy.rtcp_feedback)
        if RTCP_FB_TRANSPORT_CC in policy.rtcp_feedback and RTCP_FB_TRANSPORT_CC not in made.rtcp_fb:
            made = replace(made, rtcp_fb=(*made.rtcp_fb, RTCP_FB_TRANSPORT_CC))  # the node's own feedback
        made = replace(made, pt=allocate(), rtx_pt=None)
        table.append(made)
        return made

    out: dict[int, list[CodecParams]] = {}
    for index, outgoing in enumerate(tracks):
        codecs: list[CodecParams] = []
        node_of: dict[int, int] = {}
        for codec in outgoing.track.codecs:
            if not codec.is_primary:
                continue
            node = node_pt(codec)
            node_of[codec.pt] = node.pt
            rtx = None
            if outgoing.rtx_ssrc is not None and codec.lname not in ("opus", "pcmu", "pcma", "g722"):
                rtx = next((c for c in table if c.is_rtx and c.apt == node.pt), None)
                if rtx is None:
                    rtx = CodecParams(allocate(), "rtx", codec.clock_rate, None, {"apt": str(node.pt)})
                    table.append(rtx)
            codecs.append(replace(node, rtx_pt=rtx.pt if rtx else None))
            if rtx is not None:
                codecs.append(rtx)
        red = next((c for c in outgoing.track.codecs if c.is_red), None)
        if policy.red and red is not None and all(p in node_of for p in red.red_primaries()):
            spec = "/".join(str(node_of[p]) for p in red.red_primaries())
            known_red = next(
                (c for c in table if c.is_red and c.red_primaries() == red.red_primaries()), None
            )
            if known_red is None or list(known_red.fmtp) != [spec]:
                known_red = CodecParams(allocate(), red.name, red.clock_rate, red.channels, {spec: ""})
                table.append(known_red)
            codecs.append(known_red)
        out[index] = codecs
    return out


def build_offer(
    tracks: Sequence[OutgoingTrack],
    policy: CodecPolicy,
    local: LocalParams,
    *,
    cname: str,
    mids: Sequence[str] | None = None,
) -> OfferPlan:
    """An offer with one sendonly section per track, for a client-answered subscriber transport.

    Payload types are the node's own: one PT names one codec configuration across the whole
    bundle (publishers may number the same codec differently).  ``mids`` defaults to
    "0", "1", ...; the offer is ``a=setup:actpass``.
    """
    policy = policy.for_subscribers()
    if mids is None:
        mids = [str(i) for i in range(len(tracks))]
    if len(mids) != len(tracks) or len(set(mids)) != len(mids):
        raise ValueError("mids must be distinct, one per track")
    if not tracks:
        raise ValueError("an offer needs at least one track")
    codecs = _node_codecs(tracks, policy)
    sections = []
    for index, (mid, outgoing) in enumerate(zip(mids, tracks, strict=True)):
        track = outgoing.track
        extensions: dict[str, int] = {}
        for uri in sorted(policy.header_extensions_for(track.kind, {u: 0 for u in policy.header_extensions})):
            if uri not in (HDREXT_RID, HDREXT_REPAIRED_RID):
                extensions[uri] = 0
        send = SendStream(outgoing.ssrc, outgoing.rtx_ssrc, cname, track.stream_id, track.track_id)
        sections.append(
            AnsweredSection(
                mid,
                track.kind,
                SectionOutcome.ACCEPTED,
                Direction.SENDONLY,
                tuple(codecs[index]),
                extensions,
                send=send,
            )
        )
    ext_ids = {uri: i + 1 for i, uri in enumerate(sorted({u for s in sections for u in s.header_extensions}))}
    sections = [replace(s, header_extensions={u: ext_ids[u] for u in s.header_extensions}) for s in sections]
    entries = [(None, s, "UDP/TLS/RTP/SAVPF") for s in sections]
    text = _render(
        local,
        Setup.ACTPASS,
        entries,
        allow_mixed=False,
        bundle_order=list(mids),
        rtcp_rsize={m: True for m in mids},
    )
    return OfferPlan(text, tuple(sections), tuple(tracks))


def apply_answer(plan: OfferPlan, answer_text: str) -> SubscribeNegotiation:
    """Read the client's answer to ``build_offer``: which tracks it takes, and the mappings."""
    answer = parse_sdp(answer_text)
    if len(answer.media) != len(plan.sections):
        raise ValueError(
            f"the answer has {len(answer.media)} media sections; the offer had {len(plan.sections)}"
        )
    tag = answer.bundle_tag
    if tag is not None and answer.setup_of(tag) is Setup.ACTPASS:
        raise ValueError("an answer cannot say a=setup:actpass")
    sections: list[AnsweredSection] = []
    delivered: list[SubscribeTrack] = []
    refused: list[TrackRefusal] = []
    for offered, media, outgoing in zip(plan.sections, answer.media, plan.tracks, strict=True):
        if media.mid != offered.mid or media.kind is not offered.kind:
            raise ValueError(
                f"{media.where}: does not answer the offer's mid {offered.mid!r} ({offered.kind.value})"
            )
        if media.rejected or not media.direction.receives:
            sections.append(
                replace(offered, outcome=SectionOutcome.REJECTED, reason="declined by the client")
            )
            continue
        mine = {c.pt: c for c in offered.codecs}
        for codec in media.codecs:
            known = mine.get(codec.pt)
            if known is None or known.lname != codec.lname or known.clock_rate != codec.clock_rate:
                raise ValueError(f"{media.where}: payload type {codec.pt} was not offered as {codec.name}")
        answered = {c.pt for c in media.codecs}
        mappings: list[PtMapping] = []
        node_primaries = [c for c in offered.codecs if c.is_primary]
        for pub in outgoing.track.codecs:
            if not pub.is_primary:
                continue
            node = next(
                (c for c in node_primaries if codecs_match(pub, c) and dict(c.fmtp) == dict(pub.fmtp)), None
            )
            if node is None or node.pt not in answered:
                continue
            sub_rtx = node.rtx_pt if node.rtx_pt in answered else None
            mappings.append(PtMapping(pub.name, pub.pt, node.pt, pub.rtx_pt, sub_rtx, variant_keys(pub)))
        if not mappings or mappings[0].publisher_pt != outgoing.track.codec.pt:
            sections.append(replace(offered, outcome=SectionOutcome.REJECTED, reason="codec not accepted"))
            refused.append(
                TrackRefusal(
                    outgoing.track.track_id,
                    offered.kind,
                    "codec/unsupported",
                    f"the client did not accept {_describe(outgoing.track.codec)} for mid {offered.mid!r}",
                )
            )
            continue
        extensions = {u: i for u, i in media.header_extensions.items() if u in offered.header_extensions}
        ext_map = {
            pub_id: extensions[uri]
            for uri, pub_id in outgoing.track.header_extensions.items()
            if uri in extensions
        }
        rtx_ssrc = outgoing.rtx_ssrc if mappings[0].subscriber_rtx_pt is not None else None
        codecs = tuple(c for c in offered.codecs if c.pt in answered)
        sections.append(replace(offered, codecs=codecs, header_extensions=extensions))
        delivered.append(
            SubscribeTrack(
                offered.mid,
                outgoing.track.track_id,
                offered.kind,
                outgoing.ssrc,
                rtx_ssrc,
                codecs,
                tuple(mappings),
                extensions,
                ext_map,
            )
        )
    return SubscribeNegotiation(tuple(sections), tuple(delivered), tuple(refused))
