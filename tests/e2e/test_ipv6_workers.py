"""A dual-stack node with two forwarding workers, registered with a real control plane (real
processes; issue 13): the front's answers carry each worker's UDP and TCP candidates for both
addresses, lite clients publish and watch over IPv6 UDP, IPv6 ICE-TCP and IPv4 UDP through both
workers, the workers' self-checks pass over the v4-mapped path, and the control plane lists the
node's two media addresses."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from sfu.client.lite import LiteEndpoint
from sfu.client.lite_tcp import TcpLiteEndpoint
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs, wait_nodes_state
from tests.e2e.test_ice_tcp_bad_input import Count
from tests.e2e.test_ice_tcp_workers import post
from tests.e2e.test_ipv6 import _has_ipv6_loopback
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, send_video
from tests.e2e.test_workers import wait_for_ready

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(not socket.has_ipv6 or not _has_ipv6_loopback(), reason="no ::1"),
]
CANDIDATES = re.compile(r"^a=candidate:\S+ 1 (udp|tcp) \d+ (\S+) (\d+) typ host", re.MULTILINE)


async def test_dual_stack_workers_behind_the_front(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    clients: list[LiteEndpoint] = []
    stop = asyncio.Event()
    senders: list[asyncio.Task[None]] = []
    try:
        control = procs.control()
        await control.wait_healthy()
        node = procs.node(
            "dual-multi", control.url,
            extra_args=("--workers", "2", "--media-host", "::", "--dev-allow-remote", "--public-ip", "::1,127.0.0.1"),
        )
        await node.wait_healthy()
        assert (await wait_for_ready(node)).status == 200  # both workers' self-checks pass
        nodes = await wait_nodes_state(control.url, ["dual-multi"], "live", 20)
        assert nodes["dual-multi"]["media"]["hosts"] == ["127.0.0.1", "::1"]
        assert nodes["dual-multi"]["media"]["host"] == "127.0.0.1"
        ports: list[tuple[int, int]] = []
        counts: list[Count] = []
        for room in ("dual-one", "dual-two"):
            pub = LiteEndpoint(Certificate.generate(), host="::1")
            clients.append(pub)
            answer = await post(f"{node.url}/whip/{room}", token(room, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))
            cands = CANDIDATES.findall(answer)
            udp, tcp = int(cands[0][2]), int(cands[2][2])
            assert [(c[0], c[1], int(c[2])) for c in cands] == [
                ("udp", "127.0.0.1", udp), ("udp", "::1", udp), ("tcp", "127.0.0.1", tcp), ("tcp", "::1", tcp),
            ]
            ports.append((udp, tcp))
            await pub.connect(answer, timeout_s=20)
            senders.append(asyncio.create_task(send_video(pub, stop)))
            for name, viewer_cls, host in (("v6tcp", TcpLiteEndpoint, "::1"), ("v4", LiteEndpoint, "127.0.0.1")):
                got = Count()
                viewer = viewer_cls(Certificate.generate(), host=host, on_rtp=got)
                clients.append(viewer)
                answer = await post(f"{node.url}/whep/{room}", token(room, f"viewer-{name}"), viewer.offer(send=False))
                await viewer.connect(answer, timeout_s=20)
                counts.append(got)
        assert len(set(ports)) == 2, ports  # two rooms on two workers, each with its own ports
        # the registration names worker 0's ports, ICE-TCP's too (as its candidates say)
        registered = nodes["dual-multi"]["media"]
        assert (registered["port"], registered["tcp_port"]) in ports, (registered, ports)
        await wait_for(lambda: all(c.packets > 30 for c in counts), 30, "every viewer receives through its worker")
        assert all(c.srtp_failures == 0 for c in clients)
    finally:
        stop.set()
        for task in senders:
            await task
        for c in clients:
            c.close()
        procs.stop_all()
