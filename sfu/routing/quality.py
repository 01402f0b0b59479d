"""Connection quality of a participant: excellent, good, poor or lost (issue 12).

Pure: ``judge(sample)`` rates one window of link figures, ``QualityScorer.update(sample,
now_ms)`` adds hysteresis so the rating does not flap.  ``sfu.routing.quality_feed`` makes the
samples from what the node measures anyway (publisher receive statistics, subscriber receiver
reports, the subscriber's bandwidth estimate, when the client was last heard).

The rating is a MOS-like score in the spirit of the ITU-T G.107 E-model (as LiveKit and
others do for audio): an R factor lowered by delay (one way: half the round trip, plus twice
the jitter for the jitter buffer, plus 10 ms of codec) and by loss (``loss_weight`` R points per
percent lost), mapped to a MOS of 1..4.5; ``excellent`` at ``excellent_mos`` and above, ``good``
at ``good_mos`` and above, else ``poor``.  For a subscriber, what its estimate covers of what
its subscriptions want (``bandwidth``: estimate / wanted bitrate, the layer distance LiveKit
scores for video) caps the rating: below ``bandwidth_good`` at ``good``, below
``bandwidth_poor`` at ``poor``.  ``lost``: nothing heard from the client (media, RTCP, ICE
consent) for ``lost_after_ms`` while its transport is up, or its transport closed.

Hysteresis: a worse rating is taken once ``down_samples`` samples in a row are worse (the best
of them), a better one once every sample for ``up_hold_ms`` was better (the worst of them);
``lost`` is taken at once and left at once (the client is heard again: for what that sample
shows, or as it was before when it shows nothing).  A sample with nothing
to judge (no packets, no reports) changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quality(enum.Enum):
    """Ordered from worst to best (``rank``); the values are the contract's strings and the
    ``quality`` label of ``sfu_participants_by_quality``."""

    LOST = "lost"
    POOR = "poor"
    GOOD = "good"
    EXCELLENT = "excellent"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Quality.LOST: 0, Quality.POOR: 1, Quality.GOOD: 2, Quality.EXCELLENT: 3}
_BY_RANK = {rank: q for q, rank in _RANK.items()}


@dataclass(frozen=True, slots=True)
class QualityConfig:
    excellent_mos: float = 4.1
    good_mos: float = 3.6
    #: R points per percent of packets lost
    loss_weight: float = 2.5
    #: estimate / wanted bitrate below which a subscriber is at most ``good`` / ``poor``
    bandwidth_good: float = 0.8
    bandwidth_poor: float = 0.3
    #: silent this long while connected: ``lost`` (ICE consent checks come every 4-6 s, RFC 7675)
    lost_after_ms: int = 8_000
    down_samples: int = 2
    up_hold_ms: int = 5_000

    def __post_init__(self) -> None:
        if not 1.0 <= self.good_mos <= self.excellent_mos <= 4.5:
            raise ValueError(f"need 1 <= good_mos ({self.good_mos}) <= excellent_mos ({self.excellent_mos}) <= 4.5")
        if not 0.0 <= self.bandwidth_poor <= self.bandwidth_good:
            raise ValueError(f"need 0 <= bandwidth_poor ({self.bandwidth_poor}) <= bandwidth_good ({self.bandwidth_good})")
        if self.down_samples < 1 or self.up_hold_ms < 0 or self.lost_after_ms <= 0 or self.loss_weight < 0:
            raise ValueError("down_samples >= 1, up_hold_ms >= 0, lost_after_ms > 0 and loss_weight >= 0")


DEFAULT_CONFIG = QualityConfig()


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One window of a participant's link figures."""

    #: share of packets lost in the window (0..1), the worst stream; None: too few to judge
    loss: float | None = None
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    #: the subscriber's estimate / what its subscriptions want; None: not estimated or no want
    bandwidth: float | None = None
    #: since the client was last heard while its transport is up (0: heard now, or not up)
    silent_ms: int = 0
    #: a transport of the participant closed
    closed: bool = False

    @property
    def judgeable(self) -> bool:
        return self.loss is not None or self.rtt_ms is not None or self.bandwidth is not None


def _r_to_mos(r: float) -> float:
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r))  # (dips under 1 for a small R)


def score(sample: LinkSample, config: QualityConfig | None = None) -> float:
    """The sample's MOS (loss, jitter and round trip; no bandwidth cap)."""
    config = config or DEFAULT_CONFIG
    loss = min(max(sample.loss or 0.0, 0.0), 1.0)
    delay = (sample.rtt_ms or 0.0) / 2 + 2 * max(sample.jitter_ms, 0.0) + 10
    r = 93.2 - (delay / 40 if delay < 160 else (delay - 120) / 10) - config.loss_weight * loss * 100
    return _r_to_mos(r)


def judge(sample: LinkSample, config: QualityConfig | None = None) -> Quality | None:
    """The rating of one sample, without hysteresis; None when there is nothing to judge."""
    config = config or DEFAULT_CONFIG
    if sample.closed or sample.silent_ms >= config.lost_after_ms:
        return Quality.LOST
    if not sample.judgeable:
        return None
    m = score(sample, config)
    q = Quality.EXCELLENT if m >= config.excellent_mos else Quality.GOOD if m >= config.good_mos else Quality.POOR
    if sample.bandwidth is not None:
        if sample.bandwidth < config.bandwidth_poor:
            q = Quality.POOR
        elif sample.bandwidth < config.bandwidth_good and q is Quality.EXCELLENT:
            q = Quality.GOOD
    return q


class QualityScorer:
    """One participant's rating with hysteresis (see the module docstring)."""

    __slots__ = ("config", "quality", "_down", "_up_since", "_up_floor", "_before_lost")

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or DEFAULT_CONFIG
        self.quality = Quality.EXCELLENT
        self._down: list[int] = []  # ranks of the worse samples in a row
        self._up_since: int | None = None
        self._up_floor = 0
        self._before_lost = Quality.EXCELLENT

    def update(self, sample: LinkSample, now_ms: int) -> Quality:
        raw = judge(sample, self.config)
        if raw is None:
            if self.quality is Quality.LOST:  # heard again, nothing to judge: as it was before
                self._set(self._before_lost)
            return self.quality
        if raw is Quality.LOST and self.quality is not Quality.LOST:
            self._before_lost = self.quality
        current = self.quality.rank
        if raw is Quality.LOST or self.quality is Quality.LOST or raw.rank == current:
            self._set(raw)
        elif raw.rank < current:
            self._up_since = None
            self._down.append(raw.rank)
            if len(self._down) >= self.config.down_samples:
                self._set(_BY_RANK[max(self._down)])
        else:
            self._down.clear()
            if self._up_since is None:
                self._up_since, self._up_floor = now_ms, raw.rank
            else:
                self._up_floor = min(self._up_floor, raw.rank)
            if now_ms - self._up_since >= self.config.up_hold_ms:
                self._set(_BY_RANK[self._up_floor])
        return self.quality

    def _set(self, quality: Quality) -> None:
        self.quality = quality
        self._down.clear()
        self._up_since = None
