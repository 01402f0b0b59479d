"""``Owner.permits``: who may act on a WHIP/WHEP session URL (the e2e attack is in
``tests/e2e/test_session_ownership.py``)."""

from __future__ import annotations

import pytest

from levelchat.tokens import Claims
from sfu.api.sessions import SESSION_ID_BITS, Owner, new_session_id

WHIP = ("room:join", "room:publish")


def claims(identity: str | None, *scopes: str) -> Claims:
    return Claims(key_id="k", identity=identity, room="demo", scopes=frozenset(scopes), expires_at=None)


@pytest.mark.parametrize(
    ("owner", "who", "ok"),
    [
        (Owner.of(claims("alice", *WHIP), "alice", WHIP), claims("alice", "room:join"), True),
        (Owner.of(claims("alice", *WHIP), "alice", WHIP), claims("mallory", *WHIP), False),
        (Owner.of(claims("alice", *WHIP), "alice", WHIP), claims(None, *WHIP), False),
        (Owner.of(claims("alice", *WHIP), "alice", WHIP), claims("ops", "room:admin"), True),
        # anonymous: the URL plus a token without sub that could have created the session
        (Owner.of(claims(None, *WHIP), "whip-1a2b3c4d", WHIP), claims(None, *WHIP), True),
        (Owner.of(claims(None, *WHIP), "whip-1a2b3c4d", WHIP), claims(None, "room:join"), False),
        (Owner.of(claims(None, *WHIP), "whip-1a2b3c4d", WHIP), claims("whip-1a2b3c4d", *WHIP), False),
        # the self-check's probes: room:admin only
        (Owner.node("selfcheck-probe-publisher"), claims("selfcheck-probe-publisher", *WHIP), False),
        (Owner.node("selfcheck-probe-publisher"), claims("ops", "room:admin"), True),
    ],
)
def test_permits(owner: Owner, who: Claims, ok: bool) -> None:
    assert owner.permits(who) is ok


def test_session_ids_carry_128_random_bits() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert SESSION_ID_BITS == 128 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
