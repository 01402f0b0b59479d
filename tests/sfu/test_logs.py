"""JSON logs: one object per line, with the request id of a failed request."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest

from sfu.config import load
from sfu.logs import JsonFormatter
from sfu.node import Node


async def test_failed_request_is_logged_as_json_with_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0}, environ={}))
    await node.start()
    try:
        with caplog.at_level(logging.INFO, logger="levelchat.http"):
            async with aiohttp.ClientSession() as http:
                async with http.post(node.url + "/whip/demo-1", data="x") as resp:
                    rid = resp.headers["X-Request-Id"]
                    assert resp.status == 401
        records = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
        assert len(records) == 1
        line = json.loads(JsonFormatter().format(records[0]))
        assert line["request_id"] == rid
        assert line["level"] == "info" and line["logger"] == "levelchat.http"
        assert "unauthorized" in line["msg"] and line["ts"].endswith("Z")
    finally:
        await node.stop()
