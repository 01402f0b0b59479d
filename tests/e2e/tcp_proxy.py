"""A TCP relay between a client and the node, for cutting a connection the way a network does:
both sides' sockets are aborted (no WebSocket close frame, no FIN handshake on the client's
behalf), and new connections can be refused for a while (the listener closed) or let through."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._frozen: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (again) on the same port (the first start picks a free one)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> int:
        """Abort every relayed connection; how many there were."""
        pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for w in (a, b):
                w.transport.abort()
        return len(pairs)

    def freeze(self) -> None:
        """Stop relaying on the current connections without closing them (a stalled path:
        nothing arrives, nothing fails); new connections relay as usual."""
        for a, b in self._pairs:
            self._frozen.update((a, b))

    async def close(self) -> None:
        await self.stop_listening()
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._pairs.append((writer, up_w))
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.ensure_future(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                while dst in self._frozen:
                    await asyncio.sleep(0.05)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._frozen.discard(dst)
            dst.transport.abort()
