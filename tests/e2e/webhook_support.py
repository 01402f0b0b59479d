"""A real webhook receiver for end-to-end tests: an aiohttp server on 127.0.0.1 that can be taken
down and brought back on the same port, answers a scripted status, and checks each signature."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from levelchat.webhooks.signing import verify
from tests.e2e.procs import call, free_port

DEV_SECRET = "secret"


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]
    signed: bool  # the signature verified with the dev key's secret
    status: int  # what the receiver answered


@dataclass
class Receiver:
    path: str = "/hook"
    port: int = field(default_factory=free_port)
    #: statuses to answer, in order; when used up, ``status``
    script: list[int] = field(default_factory=list)
    status: int = 200
    got: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        status = self.script.pop(0) if self.script else self.status
        signed = verify(DEV_SECRET, request.headers.get("LevelChat-Signature", ""), raw, time.time())
        self.got.append(Delivery(time.monotonic(), dict(request.headers), json.loads(raw), signed, status))
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted(self) -> list[Delivery]:
        return [d for d in self.got if 200 <= d.status < 300]

    def accepted_ids(self) -> set[str]:
        return {d.body["id"] for d in self.accepted()}

    def keys(self) -> set[tuple[str, str]]:
        """(event, room name or participant identity) of each accepted delivery."""
        out = set()
        for d in self.accepted():
            b = d.body
            who = (b.get("participant") or {}).get("identity") or (b.get("room") or {}).get("name") or ""
            out.add((b["event"], who))
        return out


async def metric(url: str, name: str) -> float:
    """One sample of the node's ``/metrics`` (the first line that starts with ``name``)."""
    reply = await call("GET", url + "/metrics")
    for line in str(reply.body).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def sample(url: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` (with ``_total`` for a counter) whose labels include
    ``labels`` in ``url``'s ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = await call("GET", url + "/metrics")
    for fam in text_string_to_metric_families(str(reply.body)):
        for s in fam.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")
