"""`hft-executor dev`: the whole product embedded on one machine, and its demo.

Temporal dev server (UI included, SQLite under .data/), nats-server with JetStream
(.data/; users, permissions and mutual TLS on, certificates made at every start under
.data/nats-security: worker/nats_security.py), the local Solana cluster, funded wallets (key files under .data/wallets, mode
0600), a swap pool for sample plans, and the worker with its bridge. `--demo N` publishes
N sample plans and shows what happened to each. History is encrypted as in production: a
key made once in .data/history-keys, and a codec server (token in .data/codec-token) that
the UI decodes payloads with.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from nats.js.api import DeliverPolicy
from solders.keypair import Keypair

from executor.keystore import KeyStore
from venue import LAMPORTS_PER_SOL
from workflows.codec import HistoryKeys, ensure_key_file
from workflows.execute_plan import SEARCH_ATTRIBUTES

from worker import event_loop, logs
from worker.codec_server import DEFAULT_PORT as CODEC_PORT
from worker.codec_server import CodecServer, ensure_token_file, token_from_environment
from worker.config import ExecutorConfig
from worker.main import EXIT_CONNECTION_LOST, ConnectionLost, ExecutorWorker
from worker.nats_connection import NatsAuth, connect as nats_connect
from worker.nats_security import NatsSecurity, Permissions
from worker.results import print_table

from .demo import DemoPool
from .services import LocalnetServer, NatsServer, TemporalDevServer, free_port

log = logging.getLogger("hft.dev")
DEV_DYNAMIC_CONFIG = {
    # The default 20 caps each task-queue hand-off near 50 ms (docs/architecture.md section 8).
    "history.transferProcessorMaxPollRPS": 10000,
}
DEV_ENVIRONMENT = "dev-environment.json"  # lets `send-plan`, `halt`, `status` find a running `dev`
DEV_ROLES = ("worker", "planner", "operator")  # the roles dev-environment.json holds an environment for
# WAL with synchronous=NORMAL: a commit no longer waits for an fsync of the whole journal;
# a power cut may lose the last commits of a *dev* server, never corrupt it.
DEV_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
RETENTION_HOURS = 72  # longer than any redelivery window, so a plan id is never run twice


def wallet_keys(directory: Path, count: int) -> list[Keypair]:
    """The dev wallets: created once, kept as keypair files readable by the owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    keypairs = []
    for index in range(1, count + 1):
        path = directory / f"wallet-{index}.json"
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump(list(bytes(Keypair())), file)
        keypairs.append(Keypair.from_bytes(bytes(json.loads(path.read_text()))))
    return keypairs


def bundle_status_poll_ms(slot_ms: float) -> int:
    """Ask each region about its bundles about once a slot and a quarter (500 ms at mainnet's 400 ms slots, the
    default): a test cluster's short slots expire a blockhash in 150 of them, so its bundles are asked sooner."""
    return max(50, min(500, int(slot_ms * 1.25)))


@dataclass
class DevStack:
    """The embedded servers, the funded wallets and the sample pool."""

    data_dir: Path
    auto_ports: bool = False
    slot_ms: float = 400.0
    wallet_count: int = 8
    metrics: bool = True
    status_cache_slots: int | None = None  # the local cluster's status cache (None: agave's 300 rooted slots)
    market: str | None = None  # the local cluster's market profile (None: calm, the cluster with no options)
    nats_secure: bool = True  # users, permissions and mutual TLS (False: an open nats-server, as before)
    nats_roles: dict[str, Permissions] | None = None  # None: worker, planner and operator (nats_security.ROLES)
    security: NatsSecurity | None = None
    history_encryption: bool = True  # False: no key, no codec server, payloads in plain text (bench's baseline)
    temporal: TemporalDevServer | None = None
    codec: CodecServer | None = None
    nats: NatsServer | None = None
    localnet: LocalnetServer | None = None
    keys: KeyStore | None = None
    pool: DemoPool | None = None
    config: ExecutorConfig | None = None
    endpoints: dict = field(default_factory=dict)

    @property
    def history_keys_file(self) -> Path:
        return self.data_dir / "history-keys"

    @property
    def codec_token_file(self) -> Path:
        return self.data_dir / "codec-token"

    async def start(self) -> None:
        auto = self.auto_ports
        keys = None
        if self.history_encryption:
            # Made once and kept with the data: the SQLite history of an earlier run stays readable.
            keys = HistoryKeys.from_environment({"HISTORY_KEYS_FILE": str(ensure_key_file(self.history_keys_file, "dev-1"))})
            token = token_from_environment({"CODEC_AUTH_TOKEN_FILE": str(ensure_token_file(self.codec_token_file))})
            # Started first: the UI is told its endpoint at start. The dev UI has no login, so the
            # endpoint carries the token in its path (worker/codec_server.py says why).
            self.codec = CodecServer(keys, token, origins=(), allow_path_token=True, port=0 if auto else CODEC_PORT)
            await self.codec.start()
        self.temporal = TemporalDevServer(
            self.data_dir / "temporal",
            port=0 if auto else 7233,
            ui_port=0 if auto else 8233,
            search_attributes=SEARCH_ATTRIBUTES,
            dynamic_config=DEV_DYNAMIC_CONFIG,
            retention_hours=RETENTION_HOURS,
            sqlite_pragmas=DEV_SQLITE_PRAGMAS,
            ui_codec_endpoint=self.codec.ui_endpoint if self.codec else None,
        )
        if self.nats_secure:  # fresh certificates and passwords at every start: ~50 ms
            self.security = NatsSecurity.create(self.data_dir / "nats-security", roles=self.nats_roles)
        self.nats = NatsServer(self.data_dir / "nats", port=0 if auto else 4222, security=self.security)
        self.localnet = LocalnetServer(
            self.data_dir / "localnet", auto_ports=auto, slot_ms=self.slot_ms, status_cache_slots=self.status_cache_slots, market=self.market
        )
        await asyncio.gather(self.temporal.start(), self.nats.start(), self.localnet.start())
        if self.codec is not None and self.temporal.ui_url:
            self.codec.origins = {self.temporal.ui_url, self.temporal.ui_url.replace("127.0.0.1", "localhost")}
        keypairs = wallet_keys(self.data_dir / "wallets", self.wallet_count)
        self.keys = KeyStore.from_keypairs(keypairs)
        admin = self.localnet.endpoints["admin"]
        async with aiohttp.ClientSession() as http:
            for wallet in self.keys.public_keys():
                await admin_post(http, f"{admin}/fund", {"pubkey": wallet, "lamports": 100 * LAMPORTS_PER_SOL})
            self.pool = DemoPool.from_json(await admin_post(http, f"{admin}/fixtures/swap-pool", {"wallets": self.keys.public_keys()}))
        metrics_port = (free_port() if auto else 9464) if self.metrics else 0
        self.config = ExecutorConfig(
            executor_name=f"hft-executor-dev-{os.getpid()}",
            rpc_endpoint=self.localnet.endpoints["rpc"],
            rpc_ws_endpoint=self.localnet.endpoints["ws"],
            jito_block_engine_url=self.localnet.endpoints["blockEngine"],
            **self._jito_settings(),
            nats_url=self.nats.url,
            nats_auth=self.nats_auth("worker"),
            temporal_address=self.temporal.address,
            metrics_port=metrics_port,
            temporal_metrics_port=(free_port() if auto else 9465) if metrics_port else 0,
            confirmation_poll_ms=max(20, min(200, int(self.slot_ms / 2))),
            jito_bundle_status_poll_ms=bundle_status_poll_ms(self.slot_ms),
            history_encryption=self.history_encryption,
            history_keys=keys,
        )
        self.endpoints = {
            "temporal": self.temporal.address,
            "temporalUi": self.temporal.ui_url,
            "codecServer": self.codec.url if self.codec else None,
            "nats": self.nats.url,
            **{f"solana{k[0].upper()}{k[1:]}": v for k, v in self.localnet.endpoints.items() if not k.endswith("RequestsPerSecond")},
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
            "temporalSdkMetrics": f"http://127.0.0.1:{self.config.temporal_metrics_port}/metrics" if metrics_port else None,
            "wallets": self.keys.public_keys(),
        }

    def _jito_settings(self) -> dict:
        """The cluster's regions and their pace, as ExecutorConfig fields (`jito_environment`, read as the worker reads it)."""
        env = self.localnet.jito_environment()
        regions = tuple(e for e in env.get("JITO_BLOCK_ENGINE_URLS", "").split(",") if e)
        burst = {"jito_requests_burst": int(env["JITO_REQUESTS_BURST"])} if "JITO_REQUESTS_BURST" in env else {}
        return {"jito_block_engine_regions": regions, "jito_requests_per_second": float(env["JITO_REQUESTS_PER_SECOND"]), **burst}

    def nats_auth(self, role: str) -> NatsAuth:
        """A role's NATS credentials: ``worker``, ``planner`` (plans in) or ``operator`` (halt, resume, status, results)."""
        return self.security.auth(role) if self.security else NatsAuth()

    def environment(self, role: str = "worker") -> dict[str, str]:
        """What a separate `hft-executor worker` (role ``worker``) or a CLI command (``planner`` for send-plan,
        ``operator`` for halt, resume, status and results) needs to join this stack."""
        assert self.config is not None
        shared = {
            **self.nats_auth(role).environment(),
            "RPC_ENDPOINT": self.config.rpc_endpoint,
            "RPC_WS_ENDPOINT": self.config.websocket_endpoint(),
            "JITO_BLOCK_ENGINE_URL": self.config.jito_block_engine_url,
            **self.localnet.jito_environment(),
            "NATS_URL": self.config.nats_url,
            "TEMPORAL_ADDRESS": self.config.temporal_address,
            "CONFIRMATION_POLL_MS": str(self.config.confirmation_poll_ms),
            "JITO_BUNDLE_STATUS_POLL_MS": str(self.config.jito_bundle_status_poll_ms),
        }
        if role != "worker":  # only the signer gets the wallet keys and the history keys
            return shared
        return {
            **shared,
            "WALLET_KEYS_DIR": str(self.data_dir / "wallets"),
            **({"HISTORY_KEYS_FILE": str(self.history_keys_file)} if self.history_encryption else {"HISTORY_ENCRYPTION": "off"}),
        }

    async def stop(self) -> None:
        for server in (self.localnet, self.nats, self.temporal, self.codec):
            if server is not None:
                await server.stop()


async def admin_post(http: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """POST to the local cluster's admin endpoint (funding, fixtures); any non-200 is an error."""
    async with http.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
        return await response.json()


# --- the demo -----------------------------------------------------------------------


async def run_demo(stack: DevStack, worker: ExecutorWorker, count: int, *, show_table: bool, out) -> dict:
    """Publish `count` sample plans (rpc, jito_bundle, tpu_direct and race in turn, wallets in turn) and wait for every result."""
    assert stack.pool is not None and stack.keys is not None
    run = f"demo-{int(time.time())}-{os.getpid()}"
    wallets = stack.keys.public_keys()
    methods = ("rpc", "jito_bundle", "tpu_direct", "race")
    plans = [stack.pool.plan(f"{run}-{i}", wallets[i % len(wallets)], methods[i % len(methods)]) for i in range(count)]
    wanted = {p["planId"] for p in plans}
    results: dict[str, dict] = {}
    arrived = asyncio.Event()

    async def on_result(message) -> None:
        result = json.loads(message.data)
        if result.get("planId") in wanted and result["planId"] not in results:
            results[result["planId"]] = result
            arrived.set()

    # Read the stream, not the subject: what a downstream consumer sees, after JetStream's dedupe.
    subscription = await worker.js.subscribe("executed.>", cb=on_result, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    planner = await nats_connect(stack.config.nats_url, stack.nats_auth("planner"))  # plans come in as a planner's do
    started = time.monotonic()
    published_at = {}
    for plan in plans:
        published_at[plan["planId"]] = time.monotonic()
        await planner.jetstream().publish(f"execution.planned.{plan['opportunityId']}", json.dumps(plan).encode())
    progress = Progress(count)
    while len(results) < count:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), timeout=120)
        except asyncio.TimeoutError:
            break
        progress.show(len(results))
    progress.done()
    wall_s = time.monotonic() - started
    await subscription.unsubscribe()
    await planner.close()
    ordered = [results[p["planId"]] for p in plans if p["planId"] in results]
    if show_table:
        print_table(ordered, out)
    statuses = [r["status"] for r in ordered]
    submit_ms = [sum((r.get("stageTimings") or {}).get(s) or 0 for s in ("lease", "build", "sign", "submit")) for r in ordered]
    return {
        "plans": count,
        "results": len(ordered),
        "success": statuses.count("success"),
        "failed": statuses.count("failed"),
        "timeout": statuses.count("timeout"),
        "wallTimeS": round(wall_s, 3),
        "executeMsP50": round(statistics.median(submit_ms), 3) if submit_ms else None,
        "latencyMsP50": round(statistics.median(r["latency"] for r in ordered), 1) if ordered else None,
        "errorCodes": sorted({r["errorCode"] for r in ordered if r.get("errorCode")}),
        "temporalUi": stack.temporal.ui_url if stack.temporal else None,
    }


class Progress:
    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.last_decile = -1

    def show(self, done: int) -> None:
        if self.tty:
            filled = int(30 * done / max(self.total, 1))
            self.stream.write(f"\r  results [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            self.stream.flush()
        elif done * 10 // max(self.total, 1) > self.last_decile:
            self.last_decile = done * 10 // max(self.total, 1)
            self.stream.write(f"  results {done}/{self.total}\n")

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


# --- the command --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ports", choices=("default", "auto"), default="default", help="'auto' picks free ports (and a throwaway data dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line of endpoints when ready (and the demo summary last)")
    parser.add_argument("--demo", type=int, default=0, metavar="N", help="publish N sample plans (rpc, jito_bundle, tpu_direct and race in turn)")
    parser.add_argument("--exit", action="store_true", help="stop once every demo plan has its result")
    parser.add_argument("--slot-ms", type=float, default=400.0, help="local cluster slot time (default 400)")
    parser.add_argument("--wallets", type=int, default=8, help="funded dev wallets (default 8)")
    parser.add_argument("--market", default=None, metavar="calm|busy|hostile|FILE.json", help="the local cluster's market profile (default calm)")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"), help="where servers keep state (default .data)")
    parser.add_argument("--log-level", default="WARNING", help="worker log level (default WARNING; INFO shows every stage)")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    return event_loop.run(_dev(args))


async def _dev(args: argparse.Namespace) -> int:
    data_dir = args.data_dir / "auto" / str(os.getpid()) if args.ports == "auto" else args.data_dir
    stack = DevStack(data_dir, auto_ports=args.ports == "auto", slot_ms=args.slot_ms, wallet_count=args.wallets, market=args.market)
    worker: ExecutorWorker | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await stack.start()
        worker = ExecutorWorker(stack.config, stack.keys)
        await worker.start()
        # One environment per role (the commands pick theirs), owner-only: it holds the roles' passwords.
        environment_file = data_dir / DEV_ENVIRONMENT
        environment_file.unlink(missing_ok=True)
        with os.fdopen(os.open(environment_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            json.dump({role: stack.environment(role) for role in DEV_ROLES}, file)
        if args.json:
            print(json.dumps(stack.endpoints), flush=True)
        else:
            _print_welcome(stack)
        if args.demo:
            summary = await run_demo(stack, worker, args.demo, show_table=True, out=sys.stderr if args.json else sys.stdout)
            if args.json:
                print(json.dumps(summary), flush=True)
            else:
                print(
                    f"\n{summary['success']}/{summary['plans']} succeeded in {summary['wallTimeS']} s "
                    f"(execute p50 {summary['executeMsP50']} ms). Watch them: {summary['temporalUi']}/namespaces/default/workflows",
                    flush=True,
                )
            code = 0 if summary["success"] == args.demo else 1
        if not (args.demo and args.exit):
            await worker.run_until(stop)
    except ConnectionLost as lost:
        # dev is the worker's only supervisor and holds the servers in the same process: it stops whole, saying why.
        print(f"hft-executor dev: the worker lost {lost}; stopping (start it again with the same command)", file=sys.stderr, flush=True)
        code = EXIT_CONNECTION_LOST
    finally:
        if worker is not None and hasattr(worker, "bridge"):
            await worker.stop()
        await stack.stop()
        (data_dir / DEV_ENVIRONMENT).unlink(missing_ok=True)
        if args.ports == "auto":
            shutil.rmtree(data_dir, ignore_errors=True)
    return code


def _print_welcome(stack: DevStack) -> None:
    e = stack.endpoints
    print("hft-executor dev: everything embedded (Ctrl-C stops it all)", flush=True)
    for name in ("temporalUi", "temporal", "codecServer", "nats", "solanaRpc", "solanaBlockEngine", "solanaTpuQuic", "solanaAdmin", "metrics", "temporalSdkMetrics"):
        print(f"  {name:18} {e.get(name)}", flush=True)
    print(f"  {'wallets':18} {', '.join(e['wallets'])}", flush=True)
    if stack.codec is not None:
        print(
            f"  history is encrypted (key {stack.history_keys_file}); the UI decodes through the codec server. CLI: "
            f"temporal workflow show -w plan-<id> --address {e['temporal']} --codec-endpoint {e['codecServer']} "
            f"--codec-auth \"Bearer $(cat {stack.codec_token_file})\"",
            flush=True,
        )
    print("  send a plan:  hft-executor send-plan plan.json   halt: hft-executor halt   status: hft-executor status", flush=True)
