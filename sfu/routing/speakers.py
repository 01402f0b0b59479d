"""Active speakers from the publishers' ssrc-audio-level header extension (RFC 6464).

A ``LevelMeter`` hangs on an audio track's receive path (``PublishedTrack.level_meter``) and
reads the extension of one packet in ``SAMPLE_EVERY`` (every 100 ms at 20 ms packets), keeping
an exponentially smoothed amplitude.  ``SpeakerRanking`` turns the meters of a room into the
ordered list of who is speaking now.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.packet.rtp import get_extension

#: read the extension of one audio packet in this many
SAMPLE_EVERY = 5
#: weight of a new sample in the smoothed amplitude
SMOOTHING = 0.4
#: a level older than this counts as silence (the publisher stopped or muted)
STALE_MS = 1000
#: smoothed amplitude above which a track counts as speaking (about -50 dBov)
SPEAKING_THRESHOLD = 10 ** (-50 / 20)
MAX_SPEAKERS = 3
SILENCE_DBOV = 127


def amplitude(dbov: int) -> float:
    """The linear amplitude (0..1] of an RFC 6464 level in -dBov (0 loudest, 127 silence)."""
    if not 0 <= dbov <= SILENCE_DBOV:
        raise ValueError(f"audio level {dbov} is outside 0..127 (-dBov)")
    return 0.0 if dbov == SILENCE_DBOV else 10 ** (-dbov / 20)


class LevelMeter:
    """The smoothed audio level of one track, sampled on its receive path."""

    __slots__ = ("ext_id", "level", "updated_ms", "_count", "samples")

    def __init__(self, ext_id: int) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError(f"header extension id {ext_id} is outside 1..255")
        self.ext_id = ext_id
        self.level = 0.0
        self.updated_ms = -STALE_MS
        self.samples = 0
        self._count = 0

    def __call__(self, view: memoryview, length: int, now_ms: int) -> None:
        self._count += 1
        if self._count < SAMPLE_EVERY:
            return
        self._count = 0
        loc = get_extension(view, length, self.ext_id)
        if loc is None or loc[1] < 1:
            return
        self.sample(view[loc[0]] & 0x7F, now_ms)

    def sample(self, dbov: int, now_ms: int) -> None:
        self.level += SMOOTHING * (amplitude(dbov) - self.level)
        self.updated_ms = now_ms
        self.samples += 1

    def current(self, now_ms: int) -> float:
        return self.level if now_ms - self.updated_ms <= STALE_MS else 0.0


@dataclass(frozen=True)
class Speaker:
    identity: str
    track_sid: str
    level: float

    def describe(self) -> dict[str, object]:
        return {"participant": self.identity, "track": self.track_sid, "level": round(self.level, 4)}


def rank(levels: list[Speaker], limit: int = MAX_SPEAKERS) -> list[Speaker]:
    """The loudest speaking tracks, loudest first (ties by identity, for a stable order)."""
    speaking = [s for s in levels if s.level > SPEAKING_THRESHOLD]
    speaking.sort(key=lambda s: (-s.level, s.identity))
    return speaking[:limit]
