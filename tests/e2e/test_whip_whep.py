from __future__ import annotations

import logging

import pytest

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token


async def test_publisher_reaches_two_subscribers(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sfu.routing.participant")
    room = "demo-1"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    await pub.connect()
    subs = [WhepSubscriber(node.url, room, token(room, f"viewer-{i}")) for i in range(2)]
    try:
        for s in subs:
            status, body = await s.connect()
            assert status == 201, body
        await wait_for(lambda: all(s.frames["video"] >= 20 and s.frames["audio"] >= 20 for s in subs), 15, "frames")
        for s in subs:
            assert s.logs["video"].gaps() == []
            assert s.logs["audio"].gaps() == []
            assert s.logs["video"].keyframes_at, "the subscriber's stream starts without a keyframe"
        # viewers' joins are logged like publishers'
        await wait_for(lambda: caplog.text.count("subscriber viewer-") == 2, 5, "the viewers' joins logged")
        assert f"publisher alice connected in room {room}" in caplog.text, caplog.text
        for i in range(2):
            assert f"subscriber viewer-{i} connected in room {room} (2 track(s))" in caplog.text, caplog.text
    finally:
        for s in subs:
            await s.close()
        await pub.close()


async def test_mid_extension_carries_the_subscribers_mid(node: Node) -> None:
    room = "mids-1"
    pub = WhipPublisher(node.url, room, token(room, "alice"))  # video mid 0, audio mid 1
    sub = WhepSubscriber(node.url, room, token(room, "bob"), audio_first=True)  # audio 0, video 1
    try:
        await pub.connect()
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10 and sub.frames["audio"] >= 10, 15, "frames")
        mids = {t.kind: t.mid for t in sub.pc.getTransceivers()}
        assert mids == {"audio": "0", "video": "1"}
        assert sub.logs["video"].mids == {"1"}
        assert sub.logs["audio"].mids == {"0"}
    finally:
        await sub.close()
        await pub.close()

