"""A TCP proxy a test can cut: put it between a client and a server, then sever and heal.

`sever()` closes every open connection (both sides see the close, as after a network
failure that resets connections) and refuses new ones until `heal()`. `delay_s` holds
every chunk that long in each direction. `before_upstream`, if set, is awaited with each
chunk the client sends before that chunk goes on: a test can make something happen at an
exact point of the client's conversation.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.severed = False
        self.accepted_at: list[float] = []  # time.time() of every connection let through
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.before_upstream: Callable[[bytes], Awaitable[None]] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.severed:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.accepted_at.append(time.time())
        self._writers |= {writer, upstream_writer}
        for source, sink, upstream in ((reader, upstream_writer, True), (upstream_reader, writer, False)):
            task = asyncio.create_task(self._pipe(source, sink, upstream))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool) -> None:
        # With a delay, chunks go through a queue so the delay adds latency without cutting throughput.
        queue: asyncio.Queue = asyncio.Queue()

        async def forward() -> None:
            while (item := await queue.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sink.write(chunk)
                await sink.drain()

        forwarder = asyncio.create_task(forward())
        try:
            while chunk := await source.read(65536):
                if upstream and self.before_upstream is not None:
                    await self.before_upstream(chunk)
                queue.put_nowait((time.monotonic() + self.delay_s, chunk))
            queue.put_nowait(None)
            await forwarder
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            forwarder.cancel()
            self._close(sink)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()

    def sever(self) -> None:
        self.severed = True
        for writer in list(self._writers):
            self._close(writer)

    def heal(self) -> None:
        self.severed = False

    async def stop(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
