"""Input and output values of the send-side estimator."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PacketFeedback:
    """One packet as reported by transport-cc feedback.

    ``seq``: transport-wide sequence number (unwrapped); ``send_ms``: when the node sent it (its
    own clock); ``recv_ms``: when the receiver got it (the receiver's clock, any offset), None
    when the feedback reports it lost; ``size``: bytes on the wire (RTP header + payload)."""

    seq: int
    send_ms: float
    recv_ms: float | None
    size: int


class BweState(enum.Enum):
    """What the delay-based detector last saw on the path."""

    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"
