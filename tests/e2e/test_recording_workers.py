"""Recording on a node with two forwarding workers: the start goes to the room's worker, the
recording's routes (which name no room) find the worker that has it, and a download is streamed
through the front; the files decode."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.e2e.clients import WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs
from tests.e2e.test_recording import _auth, _decode, _finished
from tests.e2e.test_workers import wait_for_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_recording_through_a_two_worker_front(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    recs = tmp_path / "recs"
    node = procs.node("multi-rec", None, extra_args=("--workers", "2"), env={"LEVELCHAT_SFU_RECORDINGS_DIR": str(recs)})
    pubs: list[WhipPublisher] = []
    try:
        await node.wait_healthy()
        await wait_for_ready(node)
        async with aiohttp.ClientSession() as http:
            ids = {}
            for room in ("rec-w1", "rec-w2", "rec-w3"):  # rooms spread over both workers
                tok = token(room, "admin", scopes=("room:create",))
                async with http.post(f"{node.url}/v1/rooms", json={"room": room, "recording": True},
                                     headers={"Authorization": f"Bearer {tok}"}) as resp:
                    assert resp.status == 201
                pub = WhipPublisher(node.url, room, token(room, "alice"), audio=False)
                pubs.append(pub)
                await pub.connect()
                async with http.post(f"{node.url}/v1/rooms/{room}/recording", headers=_auth(room)) as resp:
                    body = await resp.json()
                    assert resp.status == 201, body
                    ids[room] = body["id"]
            await wait_for(lambda: all(len(list((recs / i).glob("*.webm"))) == 1 for i in ids.values()), 20, "files")
            for room, rec_id in ids.items():
                async with http.get(f"{node.url}/v1/recordings/{rec_id}", headers=_auth(room)) as resp:
                    assert resp.status == 404 and (await resp.json())["code"] == "recording_not_ready"
                async with http.delete(f"{node.url}/v1/recordings/{rec_id}", headers=_auth(room)) as resp:
                    assert resp.status in (200, 202)
            async with http.get(f"{node.url}/v1/recordings/RC_0000000000000000", headers=_auth("rec-w1")) as resp:
                assert resp.status == 404 and (await resp.json())["code"] == "not_found"
            for room, rec_id in ids.items():
                rec = await _finished(http, SimpleNamespace(url=node.url), room, rec_id)  # type: ignore[arg-type]
                assert rec["status"] == "completed", rec
                (file,) = rec["files"]
                async with http.get(f"{node.url}/v1/recordings/{rec_id}/files/{file['name']}", headers=_auth(room)) as resp:
                    assert resp.status == 200
                    data = await resp.read()
                assert len(data) == file["bytes"]
                path = tmp_path / f"{room}.webm"
                path.write_bytes(data)
                name, frames, _ = _decode(path)
                assert name == "vp8" and frames == file["frames"] > 0
    finally:
        for pub in pubs:
            await pub.close()
        procs.stop_all()
