"""What one offer and one participant may declare: the node's bounds on signalled media.

Every section, SSRC and track an offer declares costs the node state (a track, its receive
statistics, a retransmission cache, a fan-out), so an offer with thousands of ``a=ssrc`` lines
must be refused before any of it exists.  ``OfferLimits`` holds the node's configuration
(``max_media_sections``, ``max_ssrcs``, ``max_published_tracks``); ``check_offer`` runs on the
parsed offer (the parser bounds its own work: ``sfu.signaling.sdp.MAX_SDP_LINES`` and kin) and
``check_tracks`` on the tracks a publish would leave the participant with.  A refusal is
``bad_request`` naming the limit, its value and what was offered (``limit``, ``max``, ``offered``
in the problem).

The defaults fit what browsers send: Chrome's simulcast video with RTX declares 6 SSRCs (3 layers
and their RTX; with ``a=rid`` it declares none and they are learnt from the packets), a camera,
a microphone and a screen share with RTX 5, and each simulcast layer is one published track.
"""

from __future__ import annotations

from dataclasses import dataclass

from levelchat.errors import ApiError
from sfu.signaling.sdp import MAX_MEDIA_SECTIONS, SessionDesc

DEFAULT_MAX_MEDIA_SECTIONS = 16
DEFAULT_MAX_SSRCS = 32
DEFAULT_MAX_PUBLISHED_TRACKS = 16
#: the highest values the configuration accepts (the parser's own bounds stay above them)
MAX_SSRCS_CEILING = 1024
MAX_PUBLISHED_TRACKS_CEILING = 256


def _refuse(limit: str, maximum: int, offered: int, what: str) -> ApiError:
    return ApiError(
        "bad_request",
        f"{what}: {offered}; at most {maximum} are accepted ({limit})",
        extra={"limit": limit, "max": maximum, "offered": offered},
    )


@dataclass(frozen=True)
class OfferLimits:
    max_media_sections: int = DEFAULT_MAX_MEDIA_SECTIONS
    max_ssrcs: int = DEFAULT_MAX_SSRCS
    max_published_tracks: int = DEFAULT_MAX_PUBLISHED_TRACKS

    def __post_init__(self) -> None:
        for name, ceiling in (
            ("max_media_sections", MAX_MEDIA_SECTIONS),
            ("max_ssrcs", MAX_SSRCS_CEILING),
            ("max_published_tracks", MAX_PUBLISHED_TRACKS_CEILING),
        ):
            value = getattr(self, name)
            if not 1 <= value <= ceiling:
                raise ValueError(f"{name}: {value} must be from 1 to {ceiling}")

    def check_offer(self, desc: SessionDesc) -> None:
        """``bad_request`` when the offer has more sections or SSRCs than the node takes."""
        if len(desc.media) > self.max_media_sections:
            raise _refuse("max_media_sections", self.max_media_sections, len(desc.media), "media sections in the offer")
        ssrcs: set[int] = set()
        for media in desc.media:
            ssrcs.update(info.ssrc for info in media.ssrcs)
            for group in media.ssrc_groups:
                ssrcs.update(group.ssrcs)
        if len(ssrcs) > self.max_ssrcs:
            raise _refuse("max_ssrcs", self.max_ssrcs, len(ssrcs), "SSRCs declared in the offer (a=ssrc, a=ssrc-group)")

    def check_tracks(self, count: int) -> None:
        """``bad_request`` when a publish would leave the participant with more than
        ``max_published_tracks`` tracks (each simulcast layer, each signalled media SSRC)."""
        if count > self.max_published_tracks:
            raise _refuse("max_published_tracks", self.max_published_tracks, count, "tracks the publish would declare")
