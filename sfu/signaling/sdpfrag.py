"""``application/trickle-ice-sdpfrag`` (RFC 8840 §9): the body of WHIP/WHEP ``PATCH`` requests.

A client's fragment carries its ICE credentials (``a=ice-ufrag``/``a=ice-pwd``, at session or
media level), candidates and ``a=end-of-candidates``; new credentials mean an ICE restart
(RFC 9725 §4.3.2).  The node answers a restart with a fragment of its own: its new credentials
and its host candidate(s) under the bundle's first section.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sfu.signaling.sdp import candidate_lines

CONTENT_TYPE = "application/trickle-ice-sdpfrag"
MAX_FRAGMENT_BYTES = 16 * 1024
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_MID = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,64}")
_MEDIA = re.compile(r"(audio|video|application|text|message) \d+ \S+( \S+)+")
#: lines a fragment may carry besides the ones it is read for (they are ignored)
_IGNORED = ("a=ice-options:", "a=group:", "a=ice-lite", "a=ice2", "a=ice-pacing:", "a=extmap-allow-mixed")


@dataclass(frozen=True)
class IceFragment:
    """What a client's fragment says: its ICE credentials (None: not given) and candidates."""

    ufrag: str | None = None
    pwd: str | None = None
    mids: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    end_of_candidates: bool = False

    @classmethod
    def parse(cls, text: str) -> IceFragment:
        """ValueError names the first line that is not valid in a trickle-ice-sdpfrag."""
        if len(text) > MAX_FRAGMENT_BYTES:
            raise ValueError(f"the fragment is larger than {MAX_FRAGMENT_BYTES} bytes")
        ufrags: set[str] = set()
        pwds: set[str] = set()
        mids: list[str] = []
        candidates: list[str] = []
        end = False
        for n, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r")
            if not line:
                continue
            if line.startswith("a=ice-ufrag:"):
                value = line[12:]
                if not (4 <= len(value) <= 256 and _ICE_CHARS.fullmatch(value)):
                    raise ValueError(f"line {n}: a=ice-ufrag must be 4 to 256 ice-chars")
                ufrags.add(value)
            elif line.startswith("a=ice-pwd:"):
                value = line[10:]
                if not (22 <= len(value) <= 256 and _ICE_CHARS.fullmatch(value)):
                    raise ValueError(f"line {n}: a=ice-pwd must be 22 to 256 ice-chars")
                pwds.add(value)
            elif line.startswith("a=candidate:"):
                if len(line[12:].split()) < 8:
                    raise ValueError(f"line {n}: a=candidate needs foundation, component, transport, "
                                     "priority, address, port, typ and a type")
                candidates.append(line[2:])
            elif line == "a=end-of-candidates":
                end = True
            elif line.startswith("a=mid:"):
                if not _MID.fullmatch(line[6:]):
                    raise ValueError(f"line {n}: a=mid must be 1 to 64 token characters")
                mids.append(line[6:])
            elif line.startswith("m="):
                if not _MEDIA.fullmatch(line[2:]):
                    raise ValueError(f"line {n}: not a media line: {line[:40]!r}")
            elif line.startswith(_IGNORED):
                continue
            else:
                raise ValueError(f"line {n}: {line[:40]!r} does not belong in a trickle-ice-sdpfrag")
        if len(ufrags) > 1 or len(pwds) > 1:
            raise ValueError("the fragment gives more than one a=ice-ufrag or a=ice-pwd (one ICE session per fragment)")
        ufrag = next(iter(ufrags), None)
        pwd = next(iter(pwds), None)
        return cls(ufrag=ufrag, pwd=pwd, mids=tuple(mids), candidates=tuple(candidates), end_of_candidates=end)


def build_fragment(
    ufrag: str,
    pwd: str,
    kind: str,
    mid: str,
    candidates: Sequence[tuple[str, int]],
    tcp_candidates: Sequence[tuple[str, int]] = (),
) -> str:
    """The node's answer to an ICE restart: ICE-lite, new credentials, its host candidates (UDP,
    then passive TCP) under the bundle's first section (``kind``, ``mid``), and end-of-candidates."""
    lines = ["a=ice-lite", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"m={kind} 9 UDP/TLS/RTP/SAVPF 0", f"a=mid:{mid}"]
    for ip, _ in (*candidates, *tcp_candidates):
        ipaddress.ip_address(ip)  # ValueError for anything but an address
    lines += candidate_lines(candidates, tcp_candidates)
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
