"""Unanswered subscriber offers: sent again once, then the session ends with ``signaling/timeout``.

The node offers the subscriber transport and waits for the client's ``answer``; changes queue
behind the outstanding offer, so a client that never answers would stop receiving anything new.
After ``subscriber_offer_timeout_s`` the same offer (same ``version``) is sent again, for a client
that dropped it (its answer to either copy fits); after a second timeout the client is told with a
JSON-RPC error frame (``"id": null``, problem ``signaling/timeout``) and ``disconnected {reason:
"signaling_timeout"}``, and the session ends (socket closed with 4000, seat freed).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from levelchat.errors import ApiError
from levelchat.web import new_request_id
from sfu.api.jsonrpc import ErrorResponse, RpcCode, RpcError
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.api.rtc_session import RtcSession

RTC_INSTANCE = "/v1/rtc"
TIMEOUT_REASON = "signaling_timeout"
#: copies of an offer sent after the first before giving up
RESENDS = 1


class OfferAction(enum.Enum):
    NONE = "none"
    RESEND = "resend"
    GIVE_UP = "give_up"


class OfferWatch:
    """When the outstanding offer was sent, and what to do about it now (time passed in)."""

    def __init__(self, timeout_ms: int, resends: int = RESENDS) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"offer timeout must be positive, not {timeout_ms} ms")
        self.timeout_ms = timeout_ms
        self.resends = resends
        self.sent_ms: int | None = None  # None: no offer outstanding
        self.resent = 0

    def sent(self, now_ms: int) -> None:
        """A new offer went out."""
        self.sent_ms = now_ms
        self.resent = 0

    def answered(self) -> None:
        self.sent_ms = None
        self.resent = 0

    def check(self, now_ms: int) -> OfferAction:
        if self.sent_ms is None or now_ms - self.sent_ms < self.timeout_ms:
            return OfferAction.NONE
        if self.resent < self.resends:
            self.resent += 1
            self.sent_ms = now_ms
            return OfferAction.RESEND
        self.sent_ms = None
        return OfferAction.GIVE_UP


def check_offer(session: RtcSession, now_ms: int) -> OfferAction:
    """Apply the session's ``OfferWatch``: resend its outstanding offer, or end it."""
    action = session.offer_watch.check(now_ms)
    if action is OfferAction.RESEND and session.last_offer is not None:
        session.notify("offer", session.last_offer)
    elif action is OfferAction.GIVE_UP:
        timeout_s = session.offer_watch.timeout_ms / 1000
        err = ApiError(
            "signaling/timeout",
            f"the subscriber offer (version {_version(session.last_offer)}) was not answered in "
            f"{(RESENDS + 1) * timeout_s:g} s (sent {RESENDS + 1} times)",
        )
        frame = ErrorResponse.of(None, RpcError(RpcCode.REFUSED, err), instance=RTC_INSTANCE, request_id=new_request_id())
        if not session.ended:
            session.link.send(bytes(frame))
        session.notify("disconnected", {"reason": TIMEOUT_REASON, "detail": err.detail})
        session.end(4000, TIMEOUT_REASON)
        participant = session.participant
        if participant is not None and not participant.closed:
            session.service.node.router.leave(participant, CloseReason.LEFT, now_ms)
    return action


def _version(offer: dict[str, Any] | None) -> object:
    return offer.get("version") if offer is not None else None
