"""GStreamer ``webrtcbin`` (libnice) clients held past the ICE consent timeout (issue 11, defect 11).

libnice sends no connectivity checks once connected, only Binding indications every 25 s; the node
used to expire such sessions 30 s after the last check, with their media flowing.  A real
webrtcbin WHIP publisher and a real webrtcbin WHEP subscriber (``examples/gstreamer_whip.py``, run
with the system Python that has GStreamer's bindings) are held 65 s on the default 30 s timeout:
both transports stay connected and decoded frames keep arriving to the end, while the node sees no
check from either for more than the timeout.  Then the subscriber is frozen (SIGSTOP): silent, it
is expired after 30 s, and the publisher stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sfu import clock
from sfu.counters import DropReason
from sfu.transport.peer import CONSENT_TIMEOUT_MS, PeerTransport, TransportState
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token

SYSTEM_PYTHON = Path("/usr/bin/python3")
#: the example operators are pointed to (README, "Publishing from GStreamer"): tested as it ships
CLIENT = Path(__file__).resolve().parents[2] / "examples" / "gstreamer_whip.py"
APT = "gstreamer1.0-plugins-bad gstreamer1.0-nice gstreamer1.0-plugins-good gir1.2-gst-plugins-bad-1.0 python3-gi"
#: what the client needs: bindings, webrtcbin, libnice's elements, VP8
PROBE = """
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstWebRTC, GstSdp
Gst.init(None)
missing = [e for e in ("webrtcbin", "nicesrc", "vp8enc", "vp8dec", "rtpvp8pay", "videotestsrc") if not Gst.ElementFactory.find(e)]
if missing:
    raise SystemExit("missing elements: " + " ".join(missing))
"""
HOLD_S = 65.0


def _gstreamer_missing() -> str:
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode:
        return (probe.stderr.strip().splitlines() or ["?"])[-1]
    return ""


MISSING = _gstreamer_missing()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(MISSING), reason=f"GStreamer: {MISSING}: apt-get install {APT} (scripts/test.sh does)"),
]


class GstClient:
    """``examples/gstreamer_whip.py`` in a child process; its once-a-second reports are kept."""

    def __init__(self, role: str, url: str, bearer: str) -> None:
        self.args = [str(SYSTEM_PYTHON), str(CLIENT), role, url, bearer, "--local-ip", "127.0.0.1"]
        self.proc: asyncio.subprocess.Process | None = None
        self.report: dict[str, Any] = {}
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> GstClient:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.lines = [*self.lines[-50:], line]
            if line.startswith("{"):
                self.report = json.loads(line)
                if "error" in self.report:
                    raise AssertionError(f"GStreamer client: {self.report['error']}")

    @property
    def frames(self) -> int:
        return int(self.report.get("frames", 0))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def output(self) -> str:
        return "\n".join(self.lines[-20:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


async def _until(predicate: Callable[[], bool], timeout: float, what: str, client: GstClient) -> None:
    try:
        await wait_for(predicate, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the GStreamer client said:\n{client.output()}") from None


def _transport(node: Any, identity: str, side: str) -> PeerTransport | None:
    for participant in node.router.participants.values():
        if participant.identity == identity:
            transport: PeerTransport | None = getattr(participant, side)
            return transport
    return None


def _connected(node: Any, identity: str, side: str) -> Callable[[], bool]:
    def check() -> bool:
        t = _transport(node, identity, side)
        return t is not None and t.state is TransportState.CONNECTED

    return check


@pytest.mark.timeout(240)
async def test_webrtcbin_publisher_and_subscriber_outlive_the_consent_timeout(
    node_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sfu.routing.router")
    node = await node_factory()
    room = "gstreamer"
    pub = await GstClient("publish", f"{node.url}/whip/{room}", token(room, "gst-pub")).start()
    sub = GstClient("subscribe", f"{node.url}/whep/{room}", token(room, "gst-sub"))
    try:
        await _until(_connected(node, "gst-pub", "publisher"), 60, "webrtcbin publisher connected", pub)
        await sub.start()
        await _until(lambda: sub.frames > 0, 60, "webrtcbin subscriber decoding", sub)
        pub_t = _transport(node, "gst-pub", "publisher")
        sub_t = _transport(node, "gst-sub", "subscriber")
        assert pub_t is not None and sub_t is not None
        keepalives = node.counters.stun_keepalives
        started = time.monotonic()
        window: list[tuple[float, int]] = [(started, sub.frames)]
        while (elapsed := time.monotonic() - started) < HOLD_S:
            await asyncio.sleep(1)
            for who, t, client in (("publisher", pub_t, pub), ("subscriber", sub_t, sub)):
                assert t.state is TransportState.CONNECTED, f"{who} dropped after {elapsed:.0f} s:\n{caplog.text}"
                assert client.alive(), client.output()
            window.append((time.monotonic(), sub.frames))
            # media keeps arriving all along: more frames than 10 s ago (15 frames/s are sent)
            old = [frames for at, frames in window if at <= window[-1][0] - 10]
            if old:
                assert sub.frames > old[-1], f"no frame for 10 s at {elapsed:.0f} s: {sub.output()}"
        end_frames = sub.frames
        await _until(lambda: sub.frames > end_frames, 10, "frames still arriving at the end", sub)
        now = clock.now_ms()
        # the point of the test: libnice sent no check for longer than the consent timeout, and its
        # Binding indications were taken as keepalives, not dropped
        for who, t in (("publisher", pub_t), ("subscriber", sub_t)):
            assert now - t.last_check_ms > CONSENT_TIMEOUT_MS, f"the {who} still sends checks: the test proves nothing"
            assert now - t.last_consent_ms < CONSENT_TIMEOUT_MS // 2
        assert node.counters.stun_keepalives - keepalives >= 2, "libnice's indications (every 25 s) were not seen"
        assert node.counters.drops[DropReason.STUN_UNEXPECTED] == 0

        # a client that goes silent is still expired, 30 s after its last authenticated datagram
        # (a webrtcbin subscriber sends receiver reports every few seconds: up to 5 s before this)
        sub.signal(signal.SIGSTOP)
        await asyncio.sleep(1)  # what was in flight has arrived
        last = sub_t.last_consent_ms
        await wait_for(lambda: sub_t.state is TransportState.CLOSED, CONSENT_TIMEOUT_MS / 1000 + 20, "silent expiry")
        silent_ms = clock.now_ms() - last
        assert sub_t.last_consent_ms == last
        assert silent_ms > CONSENT_TIMEOUT_MS, f"expired after only {silent_ms} ms of silence"
        assert "participant gst-sub leaves room gstreamer (consent_expired)" in caplog.text
        assert pub_t.state is TransportState.CONNECTED
    finally:
        await sub.stop()
        await pub.stop()
        await node.stop()


@pytest.mark.timeout(60)
async def test_the_example_without_max_bundle_gets_a_clear_bad_request(node_factory: Callable[..., Any]) -> None:
    """webrtcbin's default offers each section on its own transport: the node says BUNDLE is needed
    (what the README and the example's docstring tell GStreamer users)."""
    node = await node_factory()
    room = "gstreamer-nobundle"
    proc = await asyncio.create_subprocess_exec(
        str(SYSTEM_PYTHON), str(CLIENT), "publish", f"{node.url}/whip/{room}", token(room, "gst-nb"),
        "--local-ip", "127.0.0.1", "--bundle-policy", "none",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 45)
    reports = [json.loads(line) for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    assert proc.returncode == 1 and reports and "error" in reports[-1], out.decode(errors="replace")
    error = reports[-1]["error"]
    assert "answered 400" in error and '"code": "bad_request"' in error and "a=group:BUNDLE" in error, error
    assert not [p for p in node.router.participants.values() if p.identity == "gst-nb"]
