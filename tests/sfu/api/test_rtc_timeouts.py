"""OfferWatch: an unanswered offer is sent again once, then given up on (time passed in)."""

from __future__ import annotations

import pytest

from sfu.api.rtc_timeouts import OfferAction, OfferWatch

N, R, G = OfferAction.NONE, OfferAction.RESEND, OfferAction.GIVE_UP

# (events, expected actions of the checks): ("sent", t) / ("answered", t) / ("check", t)
CASES = [
    ("nothing outstanding", [("check", 0), ("check", 50_000)], [N, N]),
    ("answered in time", [("sent", 0), ("check", 9_999), ("answered", 9_999), ("check", 30_000)], [N, N]),
    ("resent once then given up", [("sent", 0), ("check", 9_999), ("check", 10_000), ("check", 19_999),
                                   ("check", 20_000), ("check", 40_000)], [N, R, N, G, N]),
    ("answer to the resent copy", [("sent", 0), ("check", 10_500), ("answered", 12_000), ("check", 30_000)], [R, N]),
    ("a new offer restarts the count", [("sent", 0), ("check", 10_000), ("answered", 11_000), ("sent", 12_000),
                                        ("check", 21_999), ("check", 22_000), ("check", 32_000)], [R, N, R, G]),
]


@pytest.mark.parametrize(("name", "events", "want"), CASES, ids=[c[0] for c in CASES])
def test_offer_watch(name: str, events: list[tuple[str, int]], want: list[OfferAction]) -> None:
    w = OfferWatch(10_000)
    got = []
    for what, t in events:
        if what == "sent":
            w.sent(t)
        elif what == "answered":
            w.answered()
        else:
            got.append(w.check(t))
    assert got == want


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="offer timeout must be positive, not 0 ms"):
        OfferWatch(0)
