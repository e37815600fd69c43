"""What the campaign needs from pieces other engineers are building, behind small adapters.

Each adapter works on today's code and names, in a TODO, what it waits for; when that
lands, swap the adapter's body and keep its signature, and the campaign does not change.

* kill / restart of a server: today SIGKILL to its process group, and a new server object on
  the same fixed ports and data dir (TODO: `kill()` / `restart()` on the classes in
  worker/services.py).
* a 3-node NATS cluster (TODO: `NatsCluster` in worker/services.py).
* the cluster's `reads` fault channel (TODO: localnet's reads channel; detected at run time).
* `halt --wait --json` (TODO: JetStream-backed kill switch with worker acknowledgments;
  detected at run time from `halt --help`).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from worker.services import NatsServer, TemporalDevServer

ROOT = Path(__file__).resolve().parent.parent
HALT_TIMEOUT_S = 20.0

# --- kill and restart a server -------------------------------------------------------------


async def kill_server(server) -> int:
    """kill -9 the server (its whole process group: it runs in its own session) and reap it.

    TODO(worker/services.py kill()): call `server.kill()` once the server classes have it."""
    pid = server.pid
    os.killpg(pid, signal.SIGKILL)
    while server.process.poll() is None:
        await asyncio.sleep(0.01)
    await server.stop()  # the process is gone: this only reaps it and closes its log
    return pid


def respawn_temporal(old: TemporalDevServer) -> TemporalDevServer:
    """The same dev server again: same ports, same SQLite file, same settings.

    TODO(worker/services.py restart()): replace with `await old.restart()`."""
    return TemporalDevServer(
        old.data_dir,
        port=old.port,
        ui_port=old.ui_port,
        http_port=old.http_port,
        metrics_port=old.metrics_port,
        namespace=old.namespace,
        search_attributes=old.search_attributes,
        dynamic_config=old.dynamic_config,
        log_file=old.log_file,
        retention_hours=old.retention_hours,
        log_level=old.log_level,
        sqlite_pragmas=old.sqlite_pragmas,
    )


def respawn_nats(old: NatsServer) -> NatsServer:
    """The same nats-server again: same port, same JetStream store.

    TODO(worker/services.py restart()): replace with `await old.restart()`."""
    return NatsServer(old.data_dir, port=old.port, log_file=old.log_file)


async def start_retrying(make, attempts: int = 5):
    """Start a server, again if its port is briefly still held (a kill -9 frees it within ms, usually)."""
    for attempt in range(1, attempts + 1):
        server = make()
        try:
            await server.start()
            return server
        except Exception:
            if attempt == attempts:
                raise
            await asyncio.sleep(0.5 * attempt)


class NatsNodes:
    """The NATS the campaign runs on: one nats-server, or (later) a cluster whose nodes are killed one at a time."""

    def __init__(self, data_dir: Path, size: int = 1) -> None:
        self.data_dir = data_dir
        self.size = size
        self.nodes: list[NatsServer] = []
        self.cluster = None

    async def start(self) -> None:
        if self.size == 1:
            node = NatsServer(self.data_dir / "nats", port=0)
            await node.start()
            self.nodes = [node]
            return
        # TODO(worker/services.py NatsCluster): written against the interface announced for it
        # (a 3-node cluster on loopback with routes; nodes as NatsServer-like objects with
        # .port/.pid/.url; kill(i)/restart(i)). Its nodes must not advertise their client URLs
        # (`cluster { no_advertise: true }`), or workers connect around their proxies.
        try:
            from worker.services import NatsCluster  # type: ignore[attr-defined]
        except ImportError:
            raise SystemExit("--nats-cluster needs worker.services.NatsCluster, which is not there yet") from None
        self.cluster = NatsCluster(self.data_dir / "nats-cluster", size=self.size)
        await self.cluster.start()
        self.nodes = list(self.cluster.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    async def kill(self, index: int) -> int:
        if self.cluster is not None and hasattr(self.cluster, "kill"):
            pid = self.nodes[index].pid
            await _maybe_await(self.cluster.kill(index))
            return pid
        return await kill_server(self.nodes[index])

    async def restart(self, index: int) -> None:
        if self.cluster is not None:
            await _maybe_await(self.cluster.restart(index))
            self.nodes = list(self.cluster.nodes)
            return
        old = self.nodes[index]
        self.nodes[index] = await start_retrying(lambda: respawn_nats(old))

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        else:
            for node in self.nodes:
                await node.stop()


async def _maybe_await(value):
    if asyncio.iscoroutine(value):
        return await value
    return value


# --- the cluster's faults ---------------------------------------------------------------------

INTAKE_CHANNELS = ("rpc", "bundle", "tpu")
# TODO(localnet reads channel): the field names localnet gives its `reads` channel (status reads
# that fail or answer late). Until it lands, GET /faults has no "reads" and nothing is sent for it;
# if it lands with other names, PUT /faults answers 400 and the campaign goes on without reads,
# saying so on stderr.
READS_FAULTS = {"reject": 0.1, "delay_ms": 200.0}


async def fault_channels(http: aiohttp.ClientSession, admin: str) -> set[str]:
    async with http.get(f"{admin}/faults") as response:
        return {name for name, value in (await response.json()).items() if isinstance(value, dict)}


def cluster_faults(channels: set[str], *, drop: float, rate_limit: float, delay_ms: float) -> dict:
    body = {name: {"drop": drop, "rate_limit": rate_limit, "delay_ms": delay_ms, "reject": 0.0} for name in INTAKE_CHANNELS}
    if "reads" in channels:
        body["reads"] = dict(READS_FAULTS) if drop or rate_limit or delay_ms else {key: 0.0 for key in READS_FAULTS}
    return body


async def put_faults(http: aiohttp.ClientSession, admin: str, body: dict) -> str | None:
    """PUT the faults; on a refusal of the reads part, again without it. Returns a warning, or None."""
    async with http.put(f"{admin}/faults", json=body) as response:
        if response.status == 200:
            return None
        refusal = await response.text()
    if "reads" not in body:
        raise RuntimeError(f"PUT /faults refused: {refusal}")
    without = {name: value for name, value in body.items() if name != "reads"}
    async with http.put(f"{admin}/faults", json=without) as response:
        if response.status != 200:
            raise RuntimeError(f"PUT /faults refused: {await response.text()}")
    return f"reads faults refused ({refusal.strip()[:200]}): running without them"


# --- halt and resume -----------------------------------------------------------------------------


async def _cli(env: dict[str, str], *args: str, timeout: float) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args,
        cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace")
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def halt_waits(env: dict[str, str]) -> bool:
    """Whether this product's `halt` can wait for the workers' acknowledgments.

    TODO(JetStream-backed kill switch): once `halt --wait --json` has landed everywhere, drop
    this probe and always wait."""
    code, out, _ = await _cli(env, "halt", "--help", timeout=30)
    return code == 0 and "--wait" in out


async def halt(env: dict[str, str], *, wait: bool, reason: str = "chaos campaign halt") -> dict:
    """`hft-executor halt`, as an operator runs it. Its acknowledgment is the moment it returns:
    with --wait, when every live worker acknowledged it (or it gave up, naming the missing);
    without (today), when JetStream stored the halt message."""
    args = ["halt", "--reason", reason] + (["--wait", "--json"] if wait else [])
    issued = time.time_ns()
    code, out, err = await _cli(env, *args, timeout=HALT_TIMEOUT_S)
    returned = time.time_ns()
    outcome = {"issued_ns": issued, "returned_ns": returned, "returncode": code, "waited": wait, "seq": None, "acknowledged": None, "missing": None}
    if wait:
        lines = [line for line in out.splitlines() if line.strip().startswith("{")]
        if lines:
            answer = json.loads(lines[-1])
            outcome.update(seq=answer.get("seq"), acknowledged=answer.get("acknowledged"), missing=answer.get("missing"))
    # A halt that was not stored (NATS down, a timeout) was never acknowledged.
    stored = code == 0 or (wait and outcome["seq"] is not None)
    outcome["acknowledged_ns"] = returned if stored else None
    if not stored:
        outcome["error"] = (err or out).strip()[-500:]
    return outcome


async def resume(env: dict[str, str]) -> dict:
    issued = time.time_ns()
    code, out, err = await _cli(env, "resume", timeout=HALT_TIMEOUT_S)
    return {"issued_ns": issued, "returned_ns": time.time_ns(), "returncode": code, **({"error": (err or out).strip()[-500:]} if code != 0 else {})}
