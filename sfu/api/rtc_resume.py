"""Resuming a signaling session on a new WebSocket (``join`` with ``resume``), and the protocol
version exchanged at ``join``.

A participant whose socket is lost without a clean close (no close frame: a network cut, a dead
proxy; or a close code other than 1000/1001) is *detached*: its seat, published tracks and media
transports stay (media that still flows keeps flowing), notifications to it are dropped, and no
offer is made to it.  Within ``signaling_resume_grace_s`` a new socket whose token names the same
identity and room may send ``join {resume: <token>}`` (the token given in the last join result)
and takes the session over: the others see no ``participant_left``/``participant_joined``.  After
the grace period the participant leaves as if its socket had closed (``participant_left``,
reason ``left``).  A live session can be taken over too (its old socket gets ``disconnected
{reason: "resumed"}`` and closes with 4000).  Each join or resume issues a new token; an old one
is void.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Generic, Protocol, TypeVar

from levelchat.errors import ApiError
from sfu.api.jsonrpc import RpcCode, RpcError
from sfu.counters import ResumeOutcome, SignalingCounters

#: the signaling protocol this node speaks (``protocol`` in join params and result)
PROTOCOL_VERSION = 1
#: bytes of randomness in a resume token
TOKEN_BYTES = 24
MAX_TOKEN_LEN = 64
CLOSE_RESUMED = "resumed"


class Resumable(Protocol):
    """What resuming needs of a signaling session (``sfu.api.rtc_session.RtcSession``)."""

    identity: str
    room_id: str
    resume_token: str | None
    detached: bool
    ended: bool

    def seated(self) -> bool:
        """Joined, and its participant still in the room."""
        ...

    def go_quiet(self) -> None:
        """Its socket is gone: send nothing, offer nothing, time nothing out."""
        ...

    def expire(self) -> None:
        """The grace period is over: leave the room (as a closed socket does) and be forgotten."""
        ...

    def superseded(self) -> None:
        """A new socket took it over: tell a still connected client why its socket closes."""
        ...


S = TypeVar("S", bound=Resumable)


def check_protocol(params: dict[str, Any]) -> None:
    """``protocol`` in join params: absent (taken as this node's), or exactly ``PROTOCOL_VERSION``."""
    if "protocol" not in params:
        return
    asked = params["protocol"]
    if not isinstance(asked, int) or isinstance(asked, bool):
        raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", "params.protocol must be an integer"))
    if asked != PROTOCOL_VERSION:
        raise ApiError(
            "signaling/protocol",
            f"this node speaks signaling protocol {PROTOCOL_VERSION}, the client {asked}: upgrade the SDK",
        )


def resume_param(params: dict[str, Any]) -> str | None:
    token = params.get("resume")
    if token is None:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LEN:
        raise RpcError(
            RpcCode.INVALID_PARAMS, ApiError("bad_request", f"params.resume must be a string of at most {MAX_TOKEN_LEN}")
        )
    return token


class Resumption(Generic[S]):
    """Resume tokens of the node's joined sessions and the timers of detached ones."""

    def __init__(self, grace_s: float, counters: SignalingCounters | None = None) -> None:
        self.grace_s = grace_s
        self.tokens: dict[str, S] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}  # by resume token: detached sessions
        self.counters = counters or SignalingCounters()

    @property
    def detached(self) -> int:
        return len(self.timers)

    def _count(self, outcome: ResumeOutcome) -> None:
        self.counters.resumes[outcome] += 1
        self.counters.detached = len(self.timers)

    def close(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.counters.detached = 0

    def issue(self, session: S) -> str:
        """A new token for a session (an earlier one of it is void)."""
        self.revoke(session)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session.resume_token = token
        self.tokens[token] = session
        return token

    def revoke(self, session: S) -> None:
        token = session.resume_token
        if token is not None:
            session.resume_token = None
            if self.tokens.get(token) is session:
                del self.tokens[token]
            timer = self.timers.pop(token, None)
            if timer is not None:
                timer.cancel()
                self.counters.detached = len(self.timers)

    def detach(self, session: S) -> bool:
        """The session's socket was lost: keep it for the grace period (False: it cannot be kept)."""
        token = session.resume_token
        if self.grace_s <= 0 or session.ended or token is None or not session.seated():
            return False
        session.go_quiet()
        session.detached = True
        self.timers[token] = asyncio.get_running_loop().call_later(self.grace_s, self._expire, session)
        self._count(ResumeOutcome.DETACHED)
        return True

    def _expire(self, session: S) -> None:
        token = session.resume_token
        if token is not None:
            self.timers.pop(token, None)
        if session.detached and session.seated():
            self._count(ResumeOutcome.EXPIRED)
        session.expire()

    def take_over(self, new: S, token: str) -> S:
        """The session ``token`` names, for ``new`` (a fresh socket's session) to take over: the
        same identity and room only, else ``not_found`` (as for an unknown or expired token)."""
        old = self.tokens.get(token)
        if old is None or old is new or not old.seated() or old.identity != new.identity or old.room_id != new.room_id:
            self._count(ResumeOutcome.REFUSED)
            raise ApiError(
                "not_found", f"no session of {new.identity!r} in room {new.room_id!r} to resume with this token"
            )
        self.revoke(old)
        if not old.detached:
            old.superseded()
        self._count(ResumeOutcome.RESUMED)
        return old
