"""ICE restart on the signaling session's two transports (RFC 8445 §9, JSEP §5.2.1).

The node is ICE-lite: it never checks, so a restart is new credentials on both sides while DTLS
and SRTP go on (same certificates, same keys).  Checks with the old credentials are refused from
the moment the new ones are in force.

* Publisher transport: the client offers with a new ice-ufrag/ice-pwd (``pc.restartIce()``); the
  node's answer carries new credentials of its own.  The DTLS fingerprint must stay the same.
* Subscriber transport: the client calls ``restart_ice``; the node's next offer carries new
  credentials (forced even when no track changed; after the outstanding one's answer, if any),
  which take effect with the client's answer to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from levelchat.errors import ApiError
from sfu.signaling import sdp
from sfu.transport.ice import IceCredentials
from sfu.transport.peer import PeerTransport

if TYPE_CHECKING:
    from sfu.api.rtc_session import RtcSession


def _normalized(fingerprints: Any) -> set[tuple[str, str]]:
    return {(str(a).lower(), str(v).upper()) for a, v in fingerprints}


def restart_publisher(transport: PeerTransport, offer: sdp.SessionDesc) -> bool:
    """Apply a publish offer's ICE credentials: True when they are new (the transport then has
    new local ones for the answer).  ``bad_request`` when the DTLS fingerprint changed too."""
    ufrag, _pwd, fingerprints, _setup = offer.transport
    if ufrag == transport.remote_ufrag:
        return False
    if _normalized((f.algorithm, f.value) for f in fingerprints) != _normalized(transport.dtls.remote_fingerprints):
        raise ApiError(
            "bad_request", "an ICE restart must keep the DTLS certificate (its fingerprint changed): leave and join again"
        )
    transport.restart_ice(IceCredentials.generate(), ufrag)
    return True


def request_subscriber_restart(session: RtcSession) -> dict[str, Any]:
    """``restart_ice {}``: the next subscriber offer carries new ICE credentials."""
    participant = session.participant
    if participant is None or participant.subscriber is None or session.negotiator is None:
        raise ApiError("bad_request", "there is no subscriber transport to restart (nothing was offered yet)")
    if session.ice_restart is None:
        session.ice_restart = IceCredentials.generate()
    session.schedule_sync()
    return {"pending_offer": session.negotiator.pending is not None}


def offer_credentials(session: RtcSession, local: sdp.LocalParams) -> tuple[sdp.LocalParams, bool]:
    """The local parameters of the next subscriber offer and whether it must be made even when
    nothing changed (an ICE restart was asked for)."""
    restart = session.ice_restart
    if restart is None:
        return local, False
    return replace(local, ice_ufrag=restart.ufrag, ice_pwd=restart.pwd), True


def offered(session: RtcSession, restart: bool) -> None:
    """An offer went out; with ``restart`` it carried the pending new credentials."""
    if restart:
        session.restart_in_offer, session.ice_restart = session.ice_restart, None


def apply_answer_ufrag(session: RtcSession, transport: PeerTransport, remote_ufrag: str) -> None:
    """The answer's ICE ufrag: the new pair in force when the offer restarted ICE, else it must
    not have changed."""
    creds, session.restart_in_offer = session.restart_in_offer, None
    if creds is not None:
        transport.restart_ice(creds, remote_ufrag)
    elif transport.remote_ufrag != remote_ufrag:
        raise ApiError("bad_request", "the answer changes the ICE ufrag without an ICE restart: call restart_ice first")
