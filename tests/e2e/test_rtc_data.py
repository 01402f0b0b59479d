"""Data channels through a real node: aiortc participants open ``_reliable`` and ``_lossy`` on
their publisher transport (a data-only publish), the node relays every message to the others."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiortc import RTCDataChannel, RTCSessionDescription

from sfu.node import Node
from tests.e2e.clients import wait_for
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient

pytestmark = pytest.mark.timeout(90)


def envelope_out(payload: bytes, destinations: tuple[str, ...] = ()) -> bytes:
    """client -> node: version, destination count, (7-bit length pair, identity)*, payload."""
    head = bytes((1, len(destinations)))
    for d in destinations:
        raw = d.encode()
        head += bytes((len(raw) >> 7, len(raw) & 0x7F)) + raw
    return head + payload


def envelope_in(data: bytes) -> tuple[str, bytes]:
    assert data[0] == 1, data[:8]
    n = (data[1] << 7) | data[2]
    return data[3 : 3 + n].decode(), data[3 + n :]


class DataClient(RtcClient):
    """A participant whose publisher transport carries the two data channels."""

    def __init__(self, node: Node, room: str, identity: str, scopes: tuple[str, ...] | None = None) -> None:
        super().__init__(node, room, identity, *(() if scopes is None else (scopes,)))
        self.got: list[tuple[str, str, Any]] = []  # (channel label, sender, payload as str or bytes)
        self.reliable: RTCDataChannel | None = None
        self.lossy: RTCDataChannel | None = None

    def _hook(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            raw = message.encode() if isinstance(message, str) else message
            sender, payload = envelope_in(raw)
            self.got.append((channel.label, sender, payload.decode() if isinstance(message, str) else payload))

    async def open_data(self) -> dict[str, Any]:
        self.reliable = self.pub.createDataChannel("_reliable")
        self.lossy = self.pub.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        self._hook(self.reliable)
        self._hook(self.lossy)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        result = await self.call("publish", {"sdp": self.pub.localDescription.sdp})
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=result["sdp"], type="answer"))
        await wait_for(
            lambda: self.reliable is not None and self.reliable.readyState == "open" and self.lossy is not None and self.lossy.readyState == "open",
            10,
            f"{self.identity} data channels open",
        )
        return result

    def send_text(self, text: str, *, lossy: bool = False, to: tuple[str, ...] = ()) -> None:
        channel = self.lossy if lossy else self.reliable
        assert channel is not None
        channel.send(envelope_out(text.encode(), to).decode())

    def send_bytes(self, data: bytes, *, lossy: bool = False, to: tuple[str, ...] = ()) -> None:
        channel = self.lossy if lossy else self.reliable
        assert channel is not None
        channel.send(envelope_out(data, to))

    def from_(self, sender: str) -> list[Any]:
        return [p for _label, s, p in self.got if s == sender]


async def metrics(node: Node) -> str:
    async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as resp:
        return await resp.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def three(node: Node, room: str) -> list[DataClient]:
    clients = [DataClient(node, room, n) for n in ("alice", "bob", "carol")]
    for c in clients:
        await c.join()
        result = await c.open_data()
        assert result["tracks"] == []
        assert "m=application" in result["sdp"] and "a=max-message-size:262144" in result["sdp"]
    return clients


async def test_messages_reach_every_other_participant_once(node: Node) -> None:
    clients = await three(node, "data-three")
    alice, bob, carol = clients
    try:
        big = bytes(i % 251 for i in range(60_000))  # fragmented: ~55 DATA chunks
        alice.send_text("hello from alice")
        alice.send_bytes(b"\x00\x01\xffbinary")
        alice.send_bytes(big)
        bob.send_text("h\u00e9llo \u2603")
        for c in (bob, carol):
            await wait_for(lambda c=c: len(c.from_("alice")) == 3, 10, f"{c.identity} gets alice's three")
            assert c.from_("alice") == ["hello from alice", b"\x00\x01\xffbinary", big]
        await wait_for(lambda: len(carol.from_("bob")) == 1 and len(alice.from_("bob")) == 1, 10, "bob's message")
        assert alice.from_("bob") == carol.from_("bob") == ["h\u00e9llo \u2603"]
        await asyncio.sleep(0.3)
        # exactly once, never echoed
        assert alice.from_("alice") == [] and bob.from_("bob") == []
        assert len(bob.from_("alice")) == 3 and len(carol.from_("alice")) == 3
        assert all(label == "_reliable" for label, _s, _p in bob.got + carol.got)

        # the lossy channel: unordered, no retransmission, same kind on the way out
        for i in range(20):
            carol.send_text(f"lossy {i}", lossy=True)
        for c in (alice, bob):
            await wait_for(lambda c=c: len(c.from_("carol")) >= 18, 10, f"{c.identity} gets carol's lossy messages")
            assert {label for label, s, _p in c.got if s == "carol"} == {"_lossy"}

        # destinations: only bob
        alice.send_text("just bob", to=("bob",))
        await wait_for(lambda: "just bob" in bob.from_("alice"), 10, "bob gets the direct message")
        await asyncio.sleep(0.3)
        assert "just bob" not in carol.from_("alice")

        text = await metrics(node)
        assert metric(text, 'levelchat_sfu_data_messages_relayed_total{kind="reliable"}') == 9
        assert metric(text, 'levelchat_sfu_data_messages_relayed_total{kind="lossy"}') >= 36
        assert metric(text, "levelchat_sfu_data_associations") == 3

        # carol leaves: the others go on
        await carol.call("leave")
        await wait_for(lambda: "carol" not in node.rooms.rooms["data-three"].participants, 5, "carol gone")
        bob.send_text("after carol")
        await wait_for(lambda: "after carol" in alice.from_("bob"), 10, "alice still receives")
    finally:
        for c in clients:
            await c.close()


async def test_bad_input_is_counted_and_harmless(node: Node) -> None:
    clients = await three(node, "data-bad")
    alice, bob, carol = clients
    try:
        before = await metrics(node)
        transport = alice.pub.sctp
        assert transport is not None
        dtls = transport.transport
        # garbage, a packet with a bad CRC32c, one with a wrong verification tag: through DTLS
        await dtls._send_data(b"\x00" * 3)
        await dtls._send_data(bytes(range(64)))
        good_header = bytes.fromhex("13881388") + b"\x12\x34\x56\x78" + b"\x00\x00\x00\x00"
        await dtls._send_data(good_header + bytes.fromhex("0a000008deadbeef"))
        # a message with no envelope, a message over the envelope limits
        assert alice.reliable is not None
        alice.reliable.send(b"\x07not an envelope")
        alice.reliable.send(b"\x01\xff")
        await asyncio.sleep(0.5)
        after = await metrics(node)
        sctp_drops = sum(
            metric(after, f'levelchat_sfu_sctp_dropped_total{{reason="{r}"}}')
            - metric(before, f'levelchat_sfu_sctp_dropped_total{{reason="{r}"}}')
            for r in ("malformed", "bad_checksum", "bad_tag")
        )
        assert sctp_drops >= 3
        bad = 'levelchat_sfu_data_messages_dropped_total{reason="bad_envelope"}'
        assert metric(after, bad) - metric(before, bad) == 2
        # nothing was relayed from that, and everyone still talks
        assert bob.from_("alice") == [] and carol.from_("alice") == []
        alice.send_text("still here")
        for c in (bob, carol):
            await wait_for(lambda c=c: c.from_("alice") == ["still here"], 10, f"{c.identity} still receives")
    finally:
        for c in clients:
            await c.close()


async def test_subscriber_only_receives_but_cannot_send(node: Node) -> None:
    alice = DataClient(node, "data-scope", "alice")
    viewer = DataClient(node, "data-scope", "viewer", ("room:join", "room:subscribe"))
    try:
        for c in (alice, viewer):
            await c.join()
            await c.open_data()
        # media needs the scope even so
        with pytest.raises(RpcFailure) as refused:
            await viewer.publish(audio=True, video=False)
        assert refused.value.problem["code"] == "token/unauthorized"
        viewer.send_text("may I?")
        alice.send_text("welcome")
        await wait_for(lambda: viewer.from_("alice") == ["welcome"], 10, "the viewer receives")
        await asyncio.sleep(0.3)
        assert alice.from_("viewer") == []
        text = await metrics(node)
        assert metric(text, 'levelchat_sfu_data_messages_dropped_total{reason="not_permitted"}') >= 1
    finally:
        await alice.close()
        await viewer.close()
