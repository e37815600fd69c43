"""A TCP proxy that can be cut: one worker's own road to NATS.

Every worker process reaches NATS through its own proxy, so the campaign can cut one worker
off (its live connections closed, new ones closed at once) while the others, the planner
and the campaign's own observers stay connected. A cut is what a worker sees when its
network partitions: the process lives, keeps its Temporal connection and the local
cluster, and only NATS is gone.

The proxy knows nothing of the NATS protocol, nor of TLS: a TLS session passes through it untouched, and the
client still verifies the server's certificate (issued for 127.0.0.1, where the proxy listens too). With several upstreams (a NATS cluster) each
new connection tries them in turn from a rotating start, so a killed node is skipped.
Note for a cluster: nats-py adds the servers a node advertises (INFO connect_urls) to its
pool and may connect to them directly, around the proxy; cluster nodes meant to sit behind
these proxies must run with `cluster { no_advertise: true }`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("hft.chaos.proxy")

HOST = "127.0.0.1"
CHUNK = 64 * 1024
UPSTREAM_CONNECT_S = 1.0


class CuttableProxy:
    """Listens on 127.0.0.1:`port` (0 picks one, kept for the proxy's life) and forwards to an upstream."""

    def __init__(self, upstreams: Callable[[], list[tuple[str, int]]], *, port: int = 0, name: str = "proxy", scheme: str = "nats") -> None:
        # A callable, not a list: a restarted NATS node keeps its port, but a cluster adapter may not.
        self.upstreams = upstreams
        self.requested_port = port
        self.port = port
        self.name = name
        self.scheme = scheme  # "tls" when the server behind requires TLS
        self.cut_off = False
        self.accepted = 0
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._rotation = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.requested_port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("proxy=%s event=listening port=%d", self.name, self.port)

    def cut(self) -> int:
        """Close every live connection and close new ones at once, until `restore()`; returns how many were closed."""
        self.cut_off = True
        closed = len(self._pairs)
        for client, upstream in list(self._pairs):
            _abort(client)
            if upstream is not None:
                _abort(upstream)
        self._pairs.clear()
        log.info("proxy=%s event=cut closed=%d", self.name, closed)
        return closed

    def restore(self) -> None:
        self.cut_off = False
        log.info("proxy=%s event=restored", self.name)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        # Cut connections end on their own (an upstream connect gives up within a second); a
        # cancelled handler would only make asyncio log a traceback for it.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=UPSTREAM_CONNECT_S + 1)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(client_reader, client)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            _abort(client)
            return
        upstream_reader, upstream = await self._connect_upstream()
        if upstream is None or self.cut_off:
            # NATS itself is down (or the cut came while connecting): the client sees what it would see
            # without a proxy, a connection that ends before the server's INFO.
            if upstream is not None:
                _abort(upstream)
            _abort(client)
            return
        self.accepted += 1
        pair = (client, upstream)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pump(client_reader, upstream), _pump(upstream_reader, client))
        finally:
            self._pairs.discard(pair)
            _abort(client)
            _abort(upstream)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader | None, asyncio.StreamWriter | None]:
        candidates = self.upstreams()
        if not candidates:
            return None, None
        start = self._rotation % len(candidates)
        self._rotation += 1
        for host, port in candidates[start:] + candidates[:start]:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), UPSTREAM_CONNECT_S)
            except (TimeoutError, OSError):
                continue
        return None, None


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, RuntimeError):
        pass
    finally:
        # One direction ended: end both, as a real connection would.
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        transport.abort()
