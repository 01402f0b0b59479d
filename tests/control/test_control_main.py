"""``python -m control``: the operator commands against a live control plane, and serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest

from control.__main__ import main
from tests.control.harness import KEY_ID, SECRET, ControlPlane, StandInNode, free_port, make_config


@pytest.fixture
async def plane(tmp_path: object) -> AsyncIterator[ControlPlane]:
    p = await ControlPlane(make_config(f"sqlite:///{tmp_path}/cli.db")).start()
    yield p
    await p.stop()


async def run(capsys: pytest.CaptureFixture[str], plane: ControlPlane, *argv: str) -> tuple[int, object]:
    args = [*argv, "--url", plane.url, "--api-key", KEY_ID, "--api-secret", SECRET]
    code = await asyncio.to_thread(main, args)  # the CLI blocks: keep the server's loop free
    out = capsys.readouterr().out
    return code, json.loads(out)


async def test_operator_commands(capsys: pytest.CaptureFixture[str], plane: ControlPlane, nodes: list[StandInNode]) -> None:
    await plane.register(nodes[0])
    code, body = await run(capsys, plane, "nodes", "list")
    assert code == 0 and [n["id"] for n in body["nodes"]] == ["node-1"]  # type: ignore[index]

    code, body = await run(capsys, plane, "rooms", "create", "--room", "cli-room", "--max-participants", "4",
                           "--codecs", "opus,VP8")
    assert code == 0 and body["node"]["id"] == "node-1"  # type: ignore[index]
    assert nodes[0].rooms == ["cli-room"]

    code, body = await run(capsys, plane, "rooms", "get", "cli-room")
    assert code == 0 and body["codecs"] == ["opus", "VP8"]  # type: ignore[index]

    code, body = await run(capsys, plane, "token", "mint", "--room", "cli-room", "--identity", "carol",
                           "--scopes", "room:join,room:subscribe", "--ttl", "60")
    assert code == 0 and body["url"] == nodes[0].url and body["token"].count(".") == 2  # type: ignore[index]

    code, body = await run(capsys, plane, "nodes", "revoke", "node-1")
    assert code == 0 and body["node"]["state"] == "revoked"  # type: ignore[index]
    code, body = await run(capsys, plane, "nodes", "revoke", "ghost")
    assert code == 1 and body["code"] == "not_found"  # type: ignore[index]
    code, body = await run(capsys, plane, "nodes", "provision", "node-1")
    assert code == 0 and body["node"]["revoked"] is False  # type: ignore[index]


async def test_command_with_wrong_secret_is_refused(capsys: pytest.CaptureFixture[str], plane: ControlPlane) -> None:
    code = await asyncio.to_thread(
        main, ["nodes", "list", "--url", plane.url, "--api-key", KEY_ID, "--api-secret", "w" * 40]
    )
    assert code == 1 and json.loads(capsys.readouterr().out)["code"] == "token/invalid"


def test_command_without_key_is_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LEVELCHAT_API_KEY", "LEVELCHAT_API_SECRET"):
        monkeypatch.delenv(var, raising=False)
    assert main(["nodes", "list", "--url", "http://127.0.0.1:9"]) == 2
    assert "no API key" in capsys.readouterr().err


def test_dev_refuses_remote_listen() -> None:
    proc = subprocess.run([sys.executable, "-m", "control", "--dev", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "dev mode listens only on loopback" in proc.stderr


def test_dev_serves() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control", "--dev", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    assert json.loads(resp.read()) == {"ready": True, "reason": None}
                    break
            except OSError:
                assert time.monotonic() < deadline, "control plane did not come up"
                time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-m", "control", "nodes", "list", "--dev", "--url", f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0 and json.loads(out.stdout) == {"nodes": []}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
