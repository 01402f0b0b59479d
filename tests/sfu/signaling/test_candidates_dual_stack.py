"""The node's host candidates when it has an IPv4 and an IPv6 address (issue 13): one UDP and
one passive TCP candidate per address, each with its own foundation, IPv4 above IPv6 within a
transport and every UDP one above every TCP one."""

from __future__ import annotations

import re

from sfu.signaling.sdp import candidate_lines
from sfu.signaling.sdpfrag import IceFragment, build_fragment

UDP = (("203.0.113.5", 7882), ("2001:db8::5", 7882))
TCP = (("203.0.113.5", 7881), ("2001:db8::5", 7881))
_LINE = re.compile(r"^a=candidate:(\d+) 1 (udp|tcp) (\d+) (\S+) (\d+) typ host( tcptype passive)?$")


def parsed(lines: list[str]) -> list[tuple[str, str, int, str, int]]:
    out = []
    for line in lines:
        m = _LINE.match(line)
        assert m is not None, line
        assert (m.group(2) == "tcp") == bool(m.group(6)), line
        out.append((m.group(1), m.group(2), int(m.group(3)), m.group(4), int(m.group(5))))
    return out


def test_one_candidate_per_address_and_transport_ordered_by_priority() -> None:
    cands = parsed(candidate_lines(UDP, TCP))
    assert [(t, ip, port) for _, t, _, ip, port in cands] == [
        ("udp", "203.0.113.5", 7882), ("udp", "2001:db8::5", 7882),
        ("tcp", "203.0.113.5", 7881), ("tcp", "2001:db8::5", 7881),
    ]
    foundations = [f for f, *_ in cands]
    assert len(set(foundations)) == 4  # each its own foundation (RFC 8445 §5.1.1.3)
    priorities = [p for _, _, p, _, _ in cands]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 4
    # type preference 126 (host) and component 1 in every one: only the local preference differs
    assert all(p >> 24 == 126 and p & 0xFF == 255 for p in priorities)
    assert [(p >> 8) & 0xFFFF for p in priorities] == [65535, 65534, (2 << 13) | 8191, (2 << 13) | 8190]


def test_an_ice_restart_fragment_carries_both_families() -> None:
    frag = IceFragment.parse(build_fragment("node", "n" * 24, "video", "0", UDP, TCP))
    assert frag.end_of_candidates
    assert [c.split()[4] for c in frag.candidates] == ["203.0.113.5", "2001:db8::5", "203.0.113.5", "2001:db8::5"]
