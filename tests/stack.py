"""The real embedded stack for the executor's tests: Temporal dev server, nats-server, localnet.

Nothing here is a stand-in: `Stack` starts the same servers `hft-executor dev` does, on
free ports, and gives the tests the handles a user has: publish plans on PLANNED, read
results from the EXECUTED stream (after JetStream's dedupe, as a consumer sees them),
inspect the chain through JSON-RPC and the cluster's admin view.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import aiohttp
from nats.js.api import DeliverPolicy
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.pubkey import Pubkey
from solders.token.associated import get_associated_token_address
from temporalio.client import Client

from executor.wallets import WalletState, now_ms
from localnet.faults import no_faults
from devtools.demo import plan_memo
from devtools.dev import DevStack
from worker.main import connect_temporal
from worker.nats_connection import connect as nats_connect
from worker.streams import KILLSWITCH_SUBJECT, RESUME_SUBJECT, ensure_streams
from worker.killswitch import halt_message

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    def __init__(self, data_dir: Path, *, slot_ms: float = 50.0, wallets: int = 6, status_cache_slots: int | None = None, market: str | None = None) -> None:
        self.dev = DevStack(
            data_dir, auto_ports=True, slot_ms=slot_ms, wallet_count=wallets, metrics=False, status_cache_slots=status_cache_slots, market=market
        )
        self.results: dict[str, list[dict]] = defaultdict(list)  # what a JetStream consumer of EXECUTED sees (after dedupe)
        self.publishes: dict[str, list[dict]] = defaultdict(list)  # every publish on executed.>, before dedupe
        self._arrived = asyncio.Condition()

    async def start(self) -> "Stack":
        await self.dev.start()
        self.config = self.dev.config
        self.pool = self.dev.pool
        self.wallets = self.dev.keys.public_keys()
        self.endpoints = self.dev.localnet.endpoints
        # As a user would: plans go in with the planner's credentials; the kill switch and every read (results,
        # KV, consumers) with the operator's. Both over mutual TLS, to the nats-server with permissions on.
        self.nc = await nats_connect(self.config.nats_url, self.dev.nats_auth("operator"))
        self.js = self.nc.jetstream()
        self.planner = await nats_connect(self.config.nats_url, self.dev.nats_auth("planner"))
        self.planner_js = self.planner.jetstream()
        await ensure_streams(self.js)
        self._results_sub = await self.js.subscribe("executed.>", cb=self._on_result, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        self._publishes_sub = await self.nc.subscribe("executed.>", cb=self._on_publish)
        self.rpc = AsyncClient(self.endpoints["rpc"], commitment=Confirmed)
        self.http = aiohttp.ClientSession()
        self.temporal: Client = await connect_temporal(self.config)
        return self

    async def stop(self) -> None:
        await self.http.close()
        await self.rpc.close()
        await self.planner.close()
        await self.nc.close()
        await self.dev.stop()

    # --- plans and results -------------------------------------------------------

    def plan(self, method: str = "rpc", *, wallet: int | str = 0, **options) -> dict:
        """A unique swap-shaped plan (its memo makes every transaction traceable to it)."""
        plan_id = f"t-{uuid.uuid4().hex[:12]}"
        address = wallet if isinstance(wallet, str) else self.wallets[wallet]
        return self.pool.plan(plan_id, address, method, **options)

    async def publish(self, plan: dict | bytes, subject: str | None = None) -> int:
        """Publish on PLANNED; returns the stream sequence."""
        data = plan if isinstance(plan, bytes) else json.dumps(plan).encode()
        if subject is None:
            opportunity = plan.get("opportunityId") if isinstance(plan, dict) else None
            subject = f"execution.planned.{opportunity if isinstance(opportunity, str) else 'test'}"
        return (await self.planner_js.publish(subject, data)).seq

    async def _on_result(self, message) -> None:
        result = json.loads(message.data)
        async with self._arrived:
            self.results[result["planId"]].append(result)
            self._arrived.notify_all()

    async def _on_publish(self, message) -> None:
        result = json.loads(message.data)
        self.publishes[result["planId"]].append(result)

    async def result(self, plan_id: str, timeout: float = 30.0) -> dict:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: plan_id in self.results), timeout)
        return self.results[plan_id][0]

    async def execute(self, plan: dict, timeout: float = 30.0) -> dict:
        await self.publish(plan)
        return await self.result(plan["planId"], timeout)

    # --- kill switch -------------------------------------------------------------

    async def halt(self, reason: str = "test halt") -> None:
        await self.js.publish(KILLSWITCH_SUBJECT, halt_message(reason, "test"))

    async def resume(self) -> None:
        await self.js.publish(RESUME_SUBJECT, halt_message("resumed", "test"))

    # --- the chain ---------------------------------------------------------------

    async def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        async with self.http.request(method, self.endpoints["admin"] + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def faults(self, faults: dict) -> None:
        await self.admin("PUT", "/faults", faults)

    async def clear_faults(self) -> None:
        await self.admin("PUT", "/faults", no_faults())

    async def token_balance(self, wallet: str, mint: str) -> int:
        ata = get_associated_token_address(Pubkey.from_string(wallet), Pubkey.from_string(mint))
        return int((await self.rpc.get_token_account_balance(ata)).value.amount)

    async def wire_transactions(self, plan_id: str) -> list[dict]:
        """Every distinct transaction the cluster received for this plan (by its memo), landed or not."""
        memo = plan_memo(plan_id)
        return [row for row in (await self.admin("GET", "/transactions"))["transactions"] if memo in row.get("memos", [])]

    async def lease_holders(self, lease_id: str) -> list[str]:
        """Wallets whose shared entry (read fresh from the KV bucket) holds an unexpired lease `lease_id`."""
        kv = await self.js.key_value("wallet_leases")
        holders = []
        for wallet in self.wallets:
            state = WalletState.decode((await kv.get(f"wallet.{wallet}")).value).pruned(now_ms())
            if lease_id in state.leases:
                holders.append(wallet)
        return holders

    async def landed_for(self, plan_id: str) -> list[str]:
        return [row["signature"] for row in await self.wire_transactions(plan_id) if row.get("landedSlot") is not None]

    # --- worker processes ----------------------------------------------------------

    def worker_process(self, log_path: Path, **extra_env: str) -> subprocess.Popen:
        """`hft-executor worker` as its own process, joined to this stack (for crash tests)."""
        env = {**os.environ, **self.dev.environment("worker"), "METRICS_PORT": "0", "PYTHONUNBUFFERED": "1", **extra_env}
        log = open(log_path, "ab")  # noqa: SIM115 - the child's lifetime
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--log-level", "INFO"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def start_worker(self, logs: Path, name: str, **env: str) -> tuple[subprocess.Popen, Path]:
        """A worker process, once its log says it is ready."""
        log_path = logs / f"{name}.log"
        process = self.worker_process(log_path, **env)
        deadline = time.monotonic() + 30
        while b"stage=worker event=started" not in (log_path.read_bytes() if log_path.exists() else b""):
            assert process.poll() is None, f"worker {name} exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"worker {name} not ready: {log_path.read_text()[-2000:]}"
            await asyncio.sleep(0.05)
        return process, log_path

    async def block_height(self) -> int:
        return (await self.rpc.get_block_height(Confirmed)).value

    async def wait_block_height_past(self, height: int, timeout: float = 60.0) -> None:
        """Until the chain's confirmed block height is past `height` (a blockhash has expired)."""
        deadline = time.monotonic() + timeout
        while await self.block_height() <= height:
            assert time.monotonic() < deadline, f"block height did not pass {height} within {timeout} s"
            await asyncio.sleep(0.1)


async def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        for _ in range(300):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        process.kill()


async def wait_exit(process: subprocess.Popen, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, "the worker did not crash where it was told to"
        await asyncio.sleep(0.02)
    return process.returncode


@contextlib.asynccontextmanager
async def stack_with_worker(prefix: str, **options):
    """A Stack of its own with an in-process worker, torn down after."""
    from worker.main import ExecutorWorker

    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    running = await Stack(data_dir, **options).start()
    running.worker = ExecutorWorker(running.config, running.dev.keys)
    await running.worker.start()
    try:
        yield running
    finally:
        await running.worker.stop()
        await running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def wait_until(predicate, timeout: float = 10.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


def secret_forms(wallet_dir: Path) -> dict[str, str]:
    """Every way a wallet's private key could be written down: base58, base64, hex, the JSON
    array of a keypair file, for the 64-byte keypair and for its 32-byte seed."""
    import base64

    import base58

    forms = {}
    for path in sorted(wallet_dir.glob("*.json")):
        secret = bytes(json.loads(path.read_text()))
        for label, raw in (("keypair", secret), ("seed", secret[:32])):
            forms[f"{path.name} {label} base58"] = base58.b58encode(raw).decode()
            forms[f"{path.name} {label} base64"] = base64.b64encode(raw).decode()
            forms[f"{path.name} {label} hex"] = raw.hex()
            forms[f"{path.name} {label} json"] = json.dumps(list(raw))
            forms[f"{path.name} {label} compact json"] = json.dumps(list(raw), separators=(",", ":"))
            forms[f"{path.name} {label} bytes repr"] = repr(raw)[2:-1][:40]
    return forms


def leaked(text: str, forms: dict[str, str]) -> list[str]:
    return [label for label, form in forms.items() if form in text]
