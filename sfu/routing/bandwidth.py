"""Bandwidth feedback to publishers: REMB (draft-alvestrand-rmcat-remb, RTCP PSFB fmt 15).

A sender's congestion controller only raises its bitrate as far as its receiver's estimate
allows; with no feedback at all, Chrome stays near its start bitrate and keeps the top simulcast
layers paused.  The node does not estimate the path from the publisher (it runs no delay-based
estimator over arrival times): it tells each video publisher the node's configured cap
(``publisher_max_bitrate_bps``) once a second, for the video SSRCs that negotiated goog-remb.  On
loopback and LANs that cap is the limit that matters; a real bottleneck still shows up in the
sender's own loss-based controller, which takes the lower of the two.
"""

from __future__ import annotations

from sfu.packet import rtcp
from sfu.routing.participant import NODE_RTCP_SSRC, Participant


def remb_packet(participant: Participant, bitrate_bps: int) -> bytes | None:
    """The REMB for ``participant``'s video tracks that take one, or None when none does.

    Layers whose SSRC is not known yet are left out of the SSRC list (a REMB with an empty list
    still caps the sender: Chrome reads the bitrate whatever the list)."""
    takes = [t for t in participant.tracks.values() if t.remb and t.is_video]
    if not takes:
        return None
    ssrcs = sorted(t.ssrc for t in takes if t.ssrc >= 0)
    return bytes(rtcp.Remb(NODE_RTCP_SSRC, bitrate_bps, ssrcs[:255]))


def send_remb(participant: Participant, bitrate_bps: int) -> bool:
    """Send the REMB of ``remb_packet`` on the participant's publisher transport, once connected."""
    transport = participant.publisher
    if transport is None or transport.tx is None:
        return False
    packet = remb_packet(participant, bitrate_bps)
    return packet is not None and transport.send_rtcp(packet)
