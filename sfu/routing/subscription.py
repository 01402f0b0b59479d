"""A subscriber's preferences for one subscribed track (``update_subscription``, issue 12), and
what they bound: pure, no I/O.

``Preferences`` sits on each ``DownTrack`` (``dt.prefs``): ``enabled`` False pauses the track for
this subscriber (nothing is forwarded, its allocation frees the budget); ``max_width`` /
``max_height`` bound the simulcast layer by the size measured in each layer's keyframes
(``fitting_rank``); ``max_fps`` is stored for the allocator's temporal choice.  The highest layer
by rid (``max_layer``, ``set_layer``, WHEP's layer route) stays the downtrack's ``target_rid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Preferences:
    """What a subscriber asked of one subscribed track (None: no bound)."""

    enabled: bool = True
    max_width: int | None = None
    max_height: int | None = None
    max_fps: float | None = None

    def describe(self) -> dict[str, object]:
        return {"enabled": self.enabled, "max_width": self.max_width, "max_height": self.max_height,
                "max_fps": self.max_fps}


class Sized(Protocol):
    """A layer with the size of its last keyframe (0: not known yet)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


def fitting_rank(ranked: Sequence[Sized], max_width: int | None, max_height: int | None) -> int:
    """The rank (0: lowest) of the highest layer of ``ranked`` (low to high) whose keyframe size
    fits within ``max_width`` x ``max_height``; layers whose size is not known yet do not count.
    The top rank when there is no bound, the lowest when nothing known fits (never below it)."""
    if max_width is None and max_height is None:
        return len(ranked) - 1
    best = 0
    for rank, layer in enumerate(ranked):
        if not layer.width or not layer.height:
            continue
        if (max_width is None or layer.width <= max_width) and (max_height is None or layer.height <= max_height):
            best = rank
    return best
