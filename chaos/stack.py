"""The campaign's stack: every part its own OS process, so a kill is a real kill.

Temporal dev server (SQLite kept across its restarts), nats-server (or a cluster), the local
cluster, and N `hft-executor worker` processes, each reaching NATS through its own cuttable
proxy. Ports are picked once and kept, so a restarted server is where its clients look.
A worker that dies on its own (it could not reach NATS or Temporal at start) is restarted
after a second, as a process supervisor would; only the campaign's own kills are faults.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from executor.keystore import KeyStore
from devtools.demo import DemoPool
from devtools.dev import (
    DEV_DYNAMIC_CONFIG,
    DEV_SQLITE_PRAGMAS,
    LAMPORTS_PER_SOL,
    RETENTION_HOURS,
    admin_post,
    bundle_status_poll_ms,
    wallet_keys,
)
from worker.nats_connection import NatsAuth
from worker.nats_security import NatsSecurity
from devtools.services import LocalnetServer, NatsCluster, NatsServer, TemporalDevServer
from workflows.codec import ensure_key_file
from workflows.execute_plan import SEARCH_ATTRIBUTES

from .proxy import CuttableProxy

ROOT = Path(__file__).resolve().parent.parent
HOSTNAME = socket.gethostname()
READY_LINE = b"stage=worker event=started"
PLAN_IN_LOG = re.compile(rb"plan=([A-Za-z0-9_.:-]+)")
RESPAWN_AFTER_EXIT_S = 1.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A worker outlives nothing: SIGKILL when the campaign process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class NatsNodes:
    """The NATS the campaign runs on: one nats-server, or a cluster whose nodes are killed one at a time.
    Its nodes do not advertise their client addresses, so workers only reach them through their proxies.
    Users, permissions and mutual TLS as in `dev` (routes: plain TCP on 127.0.0.1 with a route password)."""

    def __init__(self, data_dir: Path, size: int = 1) -> None:
        self.security = NatsSecurity.create(data_dir / "nats-security")
        self.single = NatsServer(data_dir / "nats", port=0, security=self.security) if size == 1 else None
        self.cluster = NatsCluster(data_dir / "nats-cluster", size=size, security=self.security) if size > 1 else None

    @property
    def nodes(self) -> list[NatsServer]:
        return [self.single] if self.single is not None else list(self.cluster.nodes)

    @property
    def replicas(self) -> int:
        return 1 if self.single is not None else min(3, len(self.cluster.nodes))

    async def start(self) -> None:
        await (self.single.start() if self.single is not None else self.cluster.start())

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    async def kill(self, index: int) -> int:
        pid = self.nodes[index].pid
        self.single.kill() if self.single is not None else self.cluster.kill(index)
        return pid

    async def restart(self, index: int) -> None:
        await (self.single.restart() if self.single is not None else self.cluster.restart(index))

    async def stop(self) -> None:
        await (self.single.stop() if self.single is not None else self.cluster.stop())


@dataclass
class WorkerSlot:
    """One worker position: its proxy stays, its processes come and go (one per generation)."""

    index: int
    proxy: CuttableProxy
    generation: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    name: str = ""
    ready_ns: int | None = None
    killing: bool = False  # the campaign is killing it: its exit is not a crash
    held: bool = False  # cut off for a halt: not to be killed meanwhile
    history: list[dict] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def ready(self) -> bool:
        return self.alive and self.ready_ns is not None

    @property
    def identity(self) -> str | None:
        """Temporal's default worker identity for this process."""
        return f"{self.process.pid}@{HOSTNAME}" if self.process is not None else None


class ChaosStack:
    def __init__(
        self, data_dir: Path, *, slot_ms: float, wallets: int, workers: int, nats_cluster: int, note: Callable[..., dict], market: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.slot_ms = slot_ms
        self.market = market
        self.wallet_count = wallets
        self.worker_count = workers
        self.note = note  # logs and records an event: note(kind, **fields) -> the event
        self.temporal: TemporalDevServer | None = None
        self.nats = NatsNodes(data_dir, nats_cluster)
        self.localnet: LocalnetServer | None = None
        self.slots: list[WorkerSlot] = []
        self.keys: KeyStore | None = None
        self.pool: DemoPool | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False

    # --- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        self.temporal = TemporalDevServer(
            self.data_dir / "temporal",
            port=0,
            ui_port=None,  # headless: the machine has two cores
            search_attributes=SEARCH_ATTRIBUTES,
            dynamic_config=DEV_DYNAMIC_CONFIG,
            retention_hours=RETENTION_HOURS,
            sqlite_pragmas=DEV_SQLITE_PRAGMAS,
        )
        self.localnet = LocalnetServer(self.data_dir / "localnet", auto_ports=True, slot_ms=self.slot_ms, market=self.market)
        await asyncio.gather(self.temporal.start(), self.nats.start(), self.localnet.start())
        self.keys = KeyStore.from_keypairs(wallet_keys(self.data_dir / "wallets", self.wallet_count))
        ensure_key_file(self.history_keys_file, "chaos-1")  # workers refuse to run without a history key
        async with aiohttp.ClientSession() as http:
            for wallet in self.keys.public_keys():
                await admin_post(http, f"{self.admin}/fund", {"pubkey": wallet, "lamports": 100 * LAMPORTS_PER_SOL})
            self.pool = DemoPool.from_json(await admin_post(http, f"{self.admin}/fixtures/swap-pool", {"wallets": self.keys.public_keys()}))
        for index in range(self.worker_count):
            proxy = CuttableProxy(self.nats.addresses, name=f"w{index}", scheme=self.nats.security.scheme)
            await proxy.start()
            self.slots.append(WorkerSlot(index, proxy))
        for slot in self.slots:
            self.start_worker(slot)
        await self.wait_ready(self.slots, timeout=90)
        self._supervisor = asyncio.create_task(self._supervise(), name="chaos-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for slot in self.slots:
            if slot.alive:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(slot.alive for slot in self.slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in self.slots:
            if slot.alive:
                os.killpg(slot.process.pid, signal.SIGKILL)
                slot.process.wait()
            await slot.proxy.stop()
        for server in (self.localnet, self.temporal):
            if server is not None:
                await server.stop()
        await self.nats.stop()

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def admin(self) -> str:
        return self.localnet.endpoints["admin"]

    @property
    def history_keys_file(self) -> Path:
        return self.data_dir / "history-keys"

    @property
    def nats_url(self) -> str:
        return ",".join(self.nats.urls)

    def nats_auth(self, role: str) -> NatsAuth:
        return self.nats.security.auth(role)

    def environment(self, nats_url: str | None = None, role: str = "worker") -> dict[str, str]:
        """What a worker or an operator command (role ``operator``) needs to join this stack (as `DevStack.environment()`)."""
        return {
            **self.nats.security.environment(role),
            "RPC_ENDPOINT": self.localnet.endpoints["rpc"],
            "RPC_WS_ENDPOINT": self.localnet.endpoints["ws"],
            "JITO_BLOCK_ENGINE_URL": self.localnet.endpoints["blockEngine"],
            **self.localnet.jito_environment(),
            "NATS_URL": nats_url or self.nats_url,
            "NATS_REPLICAS": str(self.nats.replicas),
            "TEMPORAL_ADDRESS": self.temporal.address,
            "WALLET_KEYS_DIR": str(self.data_dir / "wallets"),
            "CONFIRMATION_POLL_MS": str(max(20, min(200, int(self.slot_ms / 2)))),
            "JITO_BUNDLE_STATUS_POLL_MS": str(bundle_status_poll_ms(self.slot_ms)),
            "HISTORY_KEYS_FILE": str(self.history_keys_file),
        }

    # --- workers --------------------------------------------------------------------------------------

    def start_worker(self, slot: WorkerSlot) -> None:
        slot.generation += 1
        slot.name = f"chaos-w{slot.index}-g{slot.generation}"
        slot.log_path = self.data_dir / "logs" / f"{slot.name}.log"
        slot.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.environment(slot.proxy.url),
            "METRICS_PORT": "0",
            "EXECUTOR_NAME": slot.name,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("HFT_TEST_CRASH_AFTER", None)
        with open(slot.log_path, "ab") as log:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker", "--log-level", "INFO"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )  # fmt: skip
        slot.ready_ns = None
        slot.killing = False
        slot.history.append({"generation": slot.generation, "name": slot.name, "pid": slot.process.pid, "identity": slot.identity, "log": str(slot.log_path), "started_ns": time.time_ns()})
        asyncio.create_task(self._watch_ready(slot, slot.process))

    async def _watch_ready(self, slot: WorkerSlot, process: subprocess.Popen) -> None:
        offset = 0
        while slot.process is process and process.poll() is None:
            with open(slot.log_path, "rb") as log:
                log.seek(offset)
                chunk = log.read()
            if READY_LINE in chunk:
                slot.ready_ns = time.time_ns()
                slot.history[-1]["ready_ns"] = slot.ready_ns
                return
            offset += max(0, len(chunk) - len(READY_LINE))
            await asyncio.sleep(0.05)

    async def wait_ready(self, slots: list[WorkerSlot], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not all(slot.ready for slot in slots):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def ready_slots(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.ready]

    async def kill_worker(self, slot: WorkerSlot) -> dict:
        """SIGKILL, and what the dead worker held: its identity, and every plan its log names."""
        process = slot.process
        slot.killing = True  # its exit is not a crash
        at = time.time_ns()
        os.killpg(process.pid, signal.SIGKILL)
        while process.poll() is None:
            await asyncio.sleep(0.01)
        log_plans = sorted({match.decode() for match in PLAN_IN_LOG.findall(slot.log_path.read_bytes())})
        slot.history[-1]["killed_ns"] = at
        return {"kind": "worker", "at_ns": at, "slot": slot.index, "name": slot.name, "pid": process.pid, "identity": slot.identity, "log_plans": log_plans}

    async def _supervise(self) -> None:
        while not self._stopping:
            for slot in self.slots:
                process = slot.process
                if process is not None and process.poll() is not None and not slot.killing:
                    slot.killing = True  # handled: not noted twice
                    slot.history[-1]["exited_ns"] = time.time_ns()
                    self.note("worker_exited", slot=slot.index, name=slot.name, code=process.returncode, log=str(slot.log_path))
                    asyncio.create_task(self._respawn(slot, process))
            await asyncio.sleep(0.2)

    async def _respawn(self, slot: WorkerSlot, dead: subprocess.Popen) -> None:
        await asyncio.sleep(RESPAWN_AFTER_EXIT_S)
        if slot.process is dead and not self._stopping:
            self.start_worker(slot)

    # --- servers ---------------------------------------------------------------------------------------

    async def kill_temporal(self) -> int:
        pid = self.temporal.pid
        self.temporal.kill()
        return pid

    async def restart_temporal(self) -> None:
        await self.temporal.restart()
