"""Publish to LevelChat from GStreamer (``webrtcbin``) over WHIP, or watch over WHEP.

Run it with a Python that has GStreamer's introspection bindings (on Debian: ``apt-get install
python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-bad gstreamer1.0-plugins-good
gstreamer1.0-nice``; a virtualenv without ``--system-site-packages`` lacks them)::

    python3 examples/gstreamer_whip.py publish   https://sfu.example.com/whip/ROOM   TOKEN
    python3 examples/gstreamer_whip.py subscribe https://sfu.example.com/whep/ROOM   TOKEN

``TOKEN`` is a join token with ``room:publish`` (or ``room:subscribe``); the dev node takes one from
the demo page.  The publisher sends a VP8 test pattern (``videotestsrc``; put your own source in
``PUBLISH``); the subscriber decodes what it gets.

* ``webrtcbin`` must be told ``bundle-policy=max-bundle``: by default it offers each media section
  on its own transport, which the node (one port, BUNDLE only, RFC 8843/9725) refuses with a
  ``400 bad_request`` naming the missing BUNDLE group.
* The offer is POSTed once ICE gathering is complete (no trickle); the answer comes back in the 201.
* libnice gathers the host's interface addresses; on loopback (a node on 127.0.0.1) it must be
  given the address: ``--local-ip 127.0.0.1``.

Once a second a JSON line goes to stdout: ``{"ice": ..., "pc": ..., "rtp": <RTP packets sent or
received>, "frames": <decoded frames>}``; a line ``{"error": ...}`` and exit status 1 on failure.
It runs until it is killed.  ``tests/e2e/test_gstreamer.py`` runs this very file against a node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VP8_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
PUBLISH = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=300000 ! rtpvp8pay pt=96 "
    f"! {VP8_CAPS} ! webrtcbin name=webrtc bundle-policy={{bundle}}"
)


class Client:
    def __init__(self, role: str, url: str, token: str, local_ips: list[str], bundle: str = "max-bundle") -> None:
        self.role = role
        self.url = url
        self.token = token
        self.loop = GLib.MainLoop()
        if role == "publish":
            self.pipeline: Any = Gst.parse_launch(PUBLISH.format(bundle=bundle))
        else:  # decoders are added as the tracks come (``pad-added``)
            self.pipeline = Gst.Pipeline.new("subscriber")
            self.pipeline.add(Gst.parse_launch(f"webrtcbin name=webrtc bundle-policy={bundle}"))
        self.webrtc: Any = self.pipeline.get_by_name("webrtc")
        # kept for the process's lifetime: PyGObject releases the property's reference once too
        # often when its wrapper goes (GStreamer 1.22), which would free webrtcbin's agent
        self.ice_agent: Any = self.webrtc.get_property("ice-agent")
        for ip in local_ips:
            self.ice_agent.emit("add-local-ip-address", ip)
        self.rtp = 0
        self.frames = 0
        self.posted = False
        if role == "publish":
            self.webrtc.get_static_pad("sink_0").add_probe(Gst.PadProbeType.BUFFER, self._count_rtp)
            self.webrtc.emit("get-transceiver", 0).set_property(
                "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
            )
        else:
            self.webrtc.emit(
                "add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, Gst.Caps.from_string(VP8_CAPS)
            )
            self.webrtc.connect("pad-added", self._on_pad)
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    # -- media ---------------------------------------------------------------------------------------
    def _count_rtp(self, pad: Any, info: Any) -> Any:
        self.rtp += 1
        return Gst.PadProbeReturn.OK

    def _count_frame(self, pad: Any, info: Any) -> Any:
        self.frames += 1
        return Gst.PadProbeReturn.OK

    def _on_pad(self, webrtc: Any, pad: Any) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        pad.add_probe(Gst.PadProbeType.BUFFER, self._count_rtp)
        decode = Gst.parse_bin_from_description("rtpvp8depay ! vp8dec ! fakesink name=sink sync=false", True)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        decode.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._count_frame)
        pad.link(decode.get_static_pad("sink"))

    # -- signalling (WHIP/WHEP, no trickle) -----------------------------------------------------------
    def _on_negotiation_needed(self, webrtc: Any) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise: Any, _: Any) -> None:
        reply = promise.get_reply()
        if reply is None or not reply.has_field("offer"):
            self.fail(f"create-offer failed: {reply.to_string() if reply is not None else 'no reply'}")
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, None)

    def _on_gathering(self, webrtc: Any, _: Any) -> None:
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._post)

    def _post(self) -> bool:
        if self.posted:
            return False
        self.posted = True
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            self.url,
            data=offer.encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/sdp"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer = resp.read().decode()
        except urllib.error.HTTPError as exc:
            self.fail(f"{self.url} answered {exc.code}: {exc.read().decode(errors='replace')}")
            return False
        _, sdp = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.webrtc.emit("set-remote-description", description, None)
        return False

    # -- reporting -----------------------------------------------------------------------------------
    def _report(self) -> bool:
        line = {
            "ice": self.webrtc.get_property("ice-connection-state").value_nick,
            "pc": self.webrtc.get_property("connection-state").value_nick,
            "rtp": self.rtp,
            "frames": self.frames,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        return True

    def _on_error(self, bus: Any, message: Any) -> None:
        err, debug = message.parse_error()
        self.fail(f"{err.message} ({debug})")

    def fail(self, why: str) -> None:
        sys.stdout.write(json.dumps({"error": why}) + "\n")
        sys.stdout.flush()
        os._exit(1)  # from a GLib callback: SystemExit would be caught and printed

    def run(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)
        GLib.timeout_add(1000, self._report)
        self.loop.run()


def main() -> None:
    parser = argparse.ArgumentParser(description="WHIP publisher / WHEP subscriber with GStreamer's webrtcbin")
    parser.add_argument("role", choices=("publish", "subscribe"))
    parser.add_argument("url", help="the WHIP (publish) or WHEP (subscribe) endpoint: .../whip/ROOM, .../whep/ROOM")
    parser.add_argument("token", help="a join token")
    parser.add_argument("--local-ip", action="append", default=[], help="an address libnice should use (loopback)")
    parser.add_argument("--bundle-policy", default="max-bundle", choices=("none", "balanced", "max-compat", "max-bundle"),
                        help="webrtcbin's; the node takes max-bundle only (the others are for showing the refusal)")
    args = parser.parse_args()
    Gst.init(None)
    Client(args.role, args.url, args.token, args.local_ip, args.bundle_policy).run()


if __name__ == "__main__":
    main()
