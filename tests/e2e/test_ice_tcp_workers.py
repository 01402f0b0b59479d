"""ICE-TCP behind the multi-worker front (``workers = 2``, real processes): each worker listens on
its own TCP port and advertises it in the answers of the rooms it carries; lite clients publish
and watch over TCP through both workers, and the front's metrics count the sessions by transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from sfu.client.lite_tcp import TcpLiteEndpoint, tcp_candidate
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs
from tests.e2e.test_ice_tcp_bad_input import Count, media_metrics
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, send_video
from tests.e2e.test_workers import wait_for_ready

pytestmark = pytest.mark.timeout(120)


async def post(url: str, tok: str, offer: str) -> str:
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http, http.post(url, data=offer, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 201, text
        return text


async def test_each_worker_has_its_tcp_port_and_media_flows_over_tcp(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    clients: list[TcpLiteEndpoint] = []
    stop = asyncio.Event()
    senders: list[asyncio.Task[None]] = []
    try:
        node = procs.node("tcp-multi", None, extra_args=("--workers", "2"))
        await node.wait_healthy()
        await wait_for_ready(node)
        ports, counts = [], []
        for room in ("tcp-one", "tcp-two"):
            pub = TcpLiteEndpoint(Certificate.generate())
            clients.append(pub)
            answer = await post(f"{node.url}/whip/{room}", token(room, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))
            ports.append(tcp_candidate(answer)[1])
            await pub.connect(answer, timeout_s=20)
            senders.append(asyncio.create_task(send_video(pub, stop)))
            got = Count()
            viewer = TcpLiteEndpoint(Certificate.generate(), on_rtp=got)
            clients.append(viewer)
            answer = await post(f"{node.url}/whep/{room}", token(room, "viewer"), viewer.offer(send=False))
            assert tcp_candidate(answer)[1] == ports[-1]  # the room's worker
            await viewer.connect(answer, timeout_s=20)
            counts.append(got)
        assert len(set(ports)) == 2, ports  # two rooms, two workers, two TCP ports
        await wait_for(lambda: all(c.packets > 30 for c in counts), 30, "both TCP viewers receive")
        m = await media_metrics(node.url)
        for worker in ("0", "1"):
            assert m[f'levelchat_sfu_sessions_by_transport{{transport="tcp",worker="{worker}"}}'] == 2
            assert m[f'levelchat_sfu_tcp_connections{{worker="{worker}"}}'] == 2
    finally:
        stop.set()
        for task in senders:
            await task
        for c in clients:
            c.close()
        procs.stop_all()
