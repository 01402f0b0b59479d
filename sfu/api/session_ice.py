"""Trickle ICE and ICE restart on a WHIP or WHEP session: ``PATCH`` with an sdpfrag (RFC 9725 §4.3).

The node is ICE-lite with its candidate in the answer, so the client's candidates are not
needed (it learns the client's address from its checks): a *trickle* PATCH (the session's
current client ufrag, or none) is accepted and changes nothing.  A PATCH with *new* client
credentials is an *ICE restart*: the session's transport gets new node credentials (checks with
the old ones are refused from then on, as for the signaling WebSocket's restarts in
``sfu.api.rtc_ice``), DTLS and SRTP go on, and the session gets a new entity-tag.

Entity-tags (RFC 9725 §4.3.1/4.3.2, RFC 9110 §13.1.1): the session's ``ETag`` names its current
ICE session.  A trickle PATCH's ``If-Match`` must name it; a restart's is ``*`` (or the current
tag).  A mismatch means the request was made for an ICE session that is gone: the RFC answers
412 Precondition Failed, which the public error catalogue has no code for, so the node answers
``conflict`` (409: "re-read the current state and reconcile before retrying").  A PATCH
without ``If-Match`` is accepted (lenient: clients that skip it still restart).
"""

from __future__ import annotations

from dataclasses import dataclass

from levelchat.errors import ApiError
from sfu.api.sessions import MediaSession, new_etag
from sfu.signaling.sdpfrag import IceFragment, build_fragment
from sfu.transport.ice import IceCredentials
from sfu.transport.peer import TransportState


@dataclass(frozen=True)
class IcePatchResult:
    """A restart's answer: the session's new entity-tag and the node's fragment; for a trickle
    PATCH (nothing to answer) ``fragment`` is None."""

    etag: str
    fragment: str | None = None

    @property
    def restarted(self) -> bool:
        return self.fragment is not None


def if_match_tags(header: str | None) -> tuple[str, ...] | None:
    """The entity-tags of an ``If-Match`` field (``("*",)`` for any), None when absent."""
    if header is None:
        return None
    tags = tuple(t.strip() for t in header.split(",") if t.strip())
    if not tags:
        raise ApiError("bad_request", "If-Match is empty: send the session's ETag, or * for an ICE restart")
    return tags


def _matches(tags: tuple[str, ...] | None, etag: str) -> bool:
    # strong comparison (RFC 9110 §13.1.1): a weak tag never matches
    return tags is None or "*" in tags or etag in tags


def patch_ice(
    session: MediaSession,
    frag_text: str,
    if_match: str | None,
    *,
    advertised: tuple[tuple[str, int], ...],
    advertised_tcp: tuple[tuple[str, int], ...] = (),
) -> IcePatchResult:
    """Apply a PATCH to ``session`` (already found and authorized); ApiError when refused."""
    try:
        frag = IceFragment.parse(frag_text)
    except ValueError as exc:
        raise ApiError("bad_request", f"invalid trickle-ice-sdpfrag: {exc}") from None
    participant = session.participant
    transport = participant.publisher if participant.publisher is not None else participant.subscriber
    if participant.closed or transport is None or transport.state is TransportState.CLOSED:
        raise ApiError("not_found", f"session {session.id!r} has ended")
    tags = if_match_tags(if_match)
    if frag.ufrag is None or frag.ufrag == transport.remote_ufrag:
        if frag.pwd is not None and frag.ufrag is None:
            raise ApiError("bad_request", "the fragment gives a=ice-pwd without a=ice-ufrag")
        if tags is not None and not _matches(tags, session.etag):
            raise ApiError(
                "conflict",
                f"If-Match {if_match} is not this session's ICE session {session.etag}: "
                "its candidates belong to an ICE session that was restarted",
                headers={"ETag": session.etag},
            )
        return IcePatchResult(session.etag)
    if frag.pwd is None:
        raise ApiError("bad_request", "an ICE restart needs the new a=ice-pwd with the new a=ice-ufrag")
    if not _matches(tags, session.etag):
        raise ApiError(
            "conflict",
            f"If-Match {if_match} is not this session's ICE session {session.etag}: an ICE restart sends If-Match: *",
            headers={"ETag": session.etag},
        )
    local = IceCredentials.generate()
    transport.restart_ice(local, frag.ufrag)
    session.etag = new_etag()
    kind, mid = session.bundle_tag
    return IcePatchResult(session.etag, build_fragment(local.ufrag, local.pwd, kind, mid, advertised, advertised_tcp))
