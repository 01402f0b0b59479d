"""Real offers for the signaling tests: fixtures from Chrome 120, Firefox, GStreamer (webrtcbin),
the lite client, and offers built from them (SSRC-signalled simulcast with RTX, the memory bomb)."""

from __future__ import annotations

from pathlib import Path

from sfu.client.lite import offer_sdp
from sfu.transport.ice import IceCredentials

HERE = Path(__file__).parent
FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))


def fixture(name: str) -> str:
    return (HERE / f"{name}_publish_offer.sdp").read_bytes().decode()


def lite_offer() -> str:
    return offer_sdp(IceCredentials("LiteUfrag", "LitePasswordLitePassword"), FINGERPRINT, send=True,
                     video_ssrc=0x1111, audio_ssrc=0x2222)


def chrome_ssrc_simulcast_offer(base: int = 0x5000) -> str:
    """Chrome's video with three simulcast layers signalled by SSRC (a=ssrc-group:SIM, as with
    SDP munging or plan-b era clients) and RTX for each (a=ssrc-group:FID): 6 SSRCs."""
    text = fixture("chrome120")
    lines = [line for line in text.split("\r\n") if not line.startswith(("a=rid:", "a=simulcast:"))]
    media, rtx = [base + i for i in range(3)], [base + 0x100 + i for i in range(3)]
    extra = [f"a=ssrc-group:FID {m} {r}" for m, r in zip(media, rtx, strict=True)]
    extra.append("a=ssrc-group:SIM " + " ".join(map(str, media)))
    for ssrc in media + rtx:
        extra += [f"a=ssrc:{ssrc} cname:3nMbXg0Tq5vH8yKp", f"a=ssrc:{ssrc} msid:stream video"]
    at = next(i for i, line in enumerate(lines) if line == "a=mid:1")
    return "\r\n".join(lines[: at + 1] + extra + lines[at + 1 :])


def ssrc_bomb(lines: int = 2500) -> str:
    """The lite client's offer with ``lines`` more a=ssrc lines in its video section (~62 KB)."""
    text = lite_offer()
    bomb = "".join(f"a=ssrc:{1000000 + i} cname:x\r\n" for i in range(lines))
    return text.replace("a=msid:lite video\r\n", "a=msid:lite video\r\n" + bomb, 1)


def many_tracks_offer(sections: int, ssrcs_per_section: int, base: int = 0x7000) -> str:
    """A publish offer of ``sections`` VP8 video sections, each sending ``ssrcs_per_section``
    media SSRCs (one track each, no RTX): tracks = sections * ssrcs_per_section."""
    text = lite_offer()
    head, _, rest = text.partition("m=video")
    video = "m=video" + rest.partition("m=audio")[0]
    body = []
    for i in range(sections):
        section = video.replace("a=mid:0", f"a=mid:{i}")
        lines = [line for line in section.split("\r\n") if line and not line.startswith(("a=ssrc:", "a=msid:"))]
        for k in range(ssrcs_per_section):
            lines.append(f"a=ssrc:{base + i * 100 + k} cname:many")
        lines.append(f"a=msid:many v{i}")
        body.append("\r\n".join(lines) + "\r\n")
    head = head.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE " + " ".join(str(i) for i in range(sections)))
    return head + "".join(body)
