"""The local cluster: one ledger behind Solana JSON-RPC, PubSub, a Jito block engine and TPU-over-QUIC leaders.

Start it in-process (`async with LocalCluster(config)`), in its own thread
(`ClusterThread`, so a test's or a worker's event loop never waits on block
production), or as a command (`hft-executor localnet`).
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time

from aiohttp import web
from solders.account import Account
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from .admin import build_admin
from .auction import Auction, Searchers
from .blockengine import MIN_TIP_LAMPORTS, TIP_PUBKEYS, build_block_engine
from .congestion import Congestion
from .faults import Verdict
from .intake import Intake, IntakeRefused, decode_transaction, derive_bundle_id
from .jsonrpc import JsonRpcApp
from venue.programs import SYSTEM_PROGRAM

from .ledger import Ledger, Submission
from .pubsub import PubSub
from .regions import REGION_NAMES, REGION_PORT_BASE, Region, region_middleware
from .tipfloor import TipFloor
from .rpc import LEADER_SLOTS, SOLANA_CORE_VERSION, FEATURE_SET, build_rpc
from .qos import Qos, UnstakedFlood
from .tpu import TpuQuicServer
from .view import ClusterConfig, ClusterView

log = logging.getLogger("localnet.cluster")

FAUCET_LAMPORTS = 10**17  # 100 million SOL
SHRED_VERSION = 4242


class Validator:
    """One leader identity with its own TPU QUIC port; all share the one ledger."""

    def __init__(self, index: int, identity: Keypair, tpu: TpuQuicServer) -> None:
        self.index = index
        self.identity = identity
        self.tpu = tpu
        self.tpu_open = False
        self.tpu_port = 0

    def contact_info(self, cluster: ClusterView) -> dict:
        """getClusterNodes' entry. The port stays listed while closed: a client must cope with a dead leader."""
        host = cluster.config.host
        return {
            "pubkey": str(self.identity.pubkey()),
            "gossip": f"{host}:{cluster.ports['rpc'] + 1000 + self.index}",
            "tpu": f"{host}:{self.tpu_port - 6}" if self.tpu_port > 6 else None,
            "tpuQuic": f"{host}:{self.tpu_port}",
            "tpuForwards": None,
            "tpuForwardsQuic": None,
            "tpuVote": None,
            "serveRepair": None,
            "tvu": None,
            "rpc": f"{host}:{cluster.ports['rpc']}" if self.index == 0 else None,
            "pubsub": f"{host}:{cluster.ports['ws']}" if self.index == 0 else None,
            "version": SOLANA_CORE_VERSION,
            "featureSet": FEATURE_SET,
            "shredVersion": SHRED_VERSION,
        }


class LocalCluster:
    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self.ledger = Ledger(
            confirmed_depth=self.config.confirmed_depth,
            finalized_depth=self.config.finalized_depth,
            status_cache_slots=self.config.status_cache_slots,
            tip_accounts=TIP_PUBKEYS,
        )
        # Jito's tip floor and tip stream, from the tips of the bundles that landed; served by every block engine.
        self.tip_floor = TipFloor(window_slots=self.config.tip_floor_window_slots, min_tip=MIN_TIP_LAMPORTS)
        self.faults = self.config.faults
        self.qos = Qos(self.config.qos)
        self._flood: UnstakedFlood | None = None
        self.intake = Intake(self.ledger, self.faults)
        self.pubsub = PubSub(self.ledger)
        self.faucet = Keypair()
        self.ledger.svm.set_account(self.faucet.pubkey(), Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM))
        for tip_account in TIP_PUBKEYS:  # they exist on mainnet, so small tips never fail rent
            self.fund(tip_account, self.ledger.svm.minimum_balance_for_rent_exemption(0))
        self.validators: list[Validator] = []
        for index in range(max(1, self.config.validators)):
            identity = Keypair()
            self.validators.append(Validator(index, identity, self._tpu_server(index, identity, 0)))
        self.offline: set[int] = set()
        self.skip_rate = 0.0
        self.skip_seed = 0
        self.set_skips(
            {"offlineLeaders": list(self.config.offline_leaders), "skipRate": self.config.skip_rate, "seed": self.config.skip_seed}
        )
        self.non_jito: set[int] = set()
        self.set_jito({"nonJitoLeaders": list(self.config.non_jito_leaders)})
        self.congestion = Congestion(self.config.congestion, self.fund)
        self.regions: dict[str, Region] = {
            name: Region(name, settings, seed=self.faults.seed) for name, settings in self.config.regions.items()
        }
        self.auction = Auction(self.config.auction)
        self._searchers: Searchers | None = None
        self._last_searchers: Searchers | None = None  # its counters stay readable after it stops
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._slot_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self.started_at = 0.0

    # --- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> "LocalCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        ports = self.config.ports
        self.ports["rpc"] = await self._serve_jsonrpc(build_rpc(self), ["/"], ports.get("rpc", 0))
        self.ports["ws"] = await self._serve(self._pubsub_app(), ports.get("ws", 0))
        engine = build_block_engine(self, self.config.jito_requests_per_second)
        self.ports["block_engine"] = await self._serve_jsonrpc(engine, self.ENGINE_PATHS, ports.get("block_engine", 0), self.tip_floor.add_routes)
        for region in self.regions.values():
            region.port = self._region_port(region.name)
            if region.settings.down != "refuse":
                await self._serve_region(region)
            elif region.port == 0:
                region.port = self._free_port()  # down from the start: still listed, where it will come back
        self.ports["admin"] = await self._serve(build_admin(self), ports.get("admin", 0))
        first_tpu = ports.get("tpu", 0)
        for validator in self.validators:
            await self.open_tpu(validator.index, first_tpu + validator.index if first_tpu else 0)
        self.ports["tpu"] = self.validators[0].tpu_port
        self.started_at = time.monotonic()
        self._slot_task = asyncio.create_task(self._slot_clock(), name="localnet-slot-clock")
        self._restart_flood()
        self._restart_searchers()
        log.info("localnet ready %s", self.endpoints())

    async def stop(self) -> None:
        await self._stop_flood()
        await self._stop_searchers()
        if self._slot_task is not None:
            self._slot_task.cancel()
            try:
                await self._slot_task
            except asyncio.CancelledError:
                pass
            self._slot_task = None
        self.tip_floor.close()
        for validator in self.validators:
            await self.close_tpu(validator.index)
        for region in self.regions.values():
            await self._stop_region(region)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def endpoints(self) -> dict:
        host = self.config.host
        return {
            "rpc": f"http://{host}:{self.ports['rpc']}",
            "ws": f"ws://{host}:{self.ports['ws']}",
            "blockEngine": f"http://{host}:{self.ports['block_engine']}",
            "tpuQuic": f"{host}:{self.ports['tpu']}",
            "admin": f"http://{host}:{self.ports['admin']}",
        } | ({"regions": {name: f"http://{host}:{region.port}" for name, region in self.regions.items()}} if self.regions else {}) | {
            # Requests per second per IP a sender may make: the global engine's, and each region's (null: no limit).
            "jitoRequestsPerSecond": self.config.jito_requests_per_second or None,
            **({"regionRequestsPerSecond": {name: region.settings.rate_limit or None for name, region in self.regions.items()}} if self.regions else {}),
        }

    # --- block-engine regions -------------------------------------------------------

    ENGINE_PATHS = ["/api/v1/bundles", "/api/v1/transactions", "/api/v1/getTipAccounts", "/api/v1/getBundleStatuses", "/api/v1/getInflightBundleStatuses"]

    def _free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((self.config.host, 0))
            return probe.getsockname()[1]

    def _region_port(self, name: str) -> int:
        """`ports["block_engine.<name>"]` if given; else beside the default ports, or free ones with auto ports."""
        if f"block_engine.{name}" in self.config.ports:
            return self.config.ports[f"block_engine.{name}"]
        return REGION_PORT_BASE + REGION_NAMES.index(name) if self.config.ports.get("block_engine") else 0

    async def _serve_region(self, region: Region) -> None:
        engine = build_block_engine(self, None, region)
        app = web.Application(client_max_size=1 << 20, middlewares=[region_middleware(region)])
        for path in self.ENGINE_PATHS:
            app.router.add_post(path, engine.handle_http)
        self.tip_floor.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, region.port))
        await web.SockSite(runner, sock).start()
        region.port = sock.getsockname()[1]  # reopened where clients already look for it
        region.runner = runner

    async def _stop_region(self, region: Region) -> None:
        if region.release is not None:
            region.release.set()
        if region.runner is not None:
            runner, region.runner = region.runner, None
            await runner.cleanup()

    async def set_region(self, name: str, changes: dict) -> Region:
        """Change one region at run time; `down` takes it off the network ("refuse", "blackhole") or brings it back (null)."""
        region = self.regions[name]
        settings = region.settings.merged(changes)
        was_down, region.settings = region.settings.down, settings
        if settings.down == "refuse" and region.runner is not None:
            await self._stop_region(region)
        elif settings.down != "refuse" and region.runner is None:
            await self._serve_region(region)
        if was_down == "blackhole" and settings.down != "blackhole" and region.release is not None:
            region.release.set()
        return region

    async def open_tpu(self, index: int, port: int = 0) -> None:
        validator = self.validators[index]
        if validator.tpu_open:
            return
        if port == 0 and validator.tpu_port:
            port = validator.tpu_port  # reopen where clients already look for it
        validator.tpu = self._tpu_server(index, validator.identity, port)
        await validator.tpu.start()
        validator.tpu_port = validator.tpu.port
        validator.tpu_open = True

    def _tpu_server(self, index: int, identity: Keypair, port: int) -> TpuQuicServer:
        return TpuQuicServer(
            identity,
            lambda raw, peer: self._on_tpu_transaction(raw, peer, index),
            host=self.config.host,
            port=port,
            max_new_connections_per_minute=self.config.tpu_new_connections_per_minute,
            qos=self.qos,
        )

    async def configure_qos(self, update: dict) -> None:
        """Admin: change stakes, limits or the flood at run time (raises ValueError/TypeError)."""
        before = (self.qos.config.flood, self.qos.config.seed)
        self.qos.config.update(update)
        if (self.qos.config.flood, self.qos.config.seed) != before or "enabled" in update:
            await self._stop_flood()
            self._restart_flood()

    def _restart_flood(self) -> None:
        config = self.qos.config
        if not (config.enabled and config.flood.on):
            return
        targets = [(self.config.host, v.tpu_port) for v in self.validators]
        self._flood = UnstakedFlood(self.qos, targets, config.flood, config.seed)
        self._flood.start()

    async def _stop_flood(self) -> None:
        flood, self._flood = self._flood, None
        if flood is not None:
            await flood.stop()

    def qos_view(self) -> dict:
        flood = self._flood
        return {
            **self.qos.config.to_json(),
            "limits": {
                "unstaked_streams_per_100ms": self.qos.max_unstaked_per_interval,
                "staked_streams_per_100ms": self.qos.max_staked_per_interval,
                "staked_throttling_threshold_per_5ms": self.qos.staked_throttling_threshold,
            },
            "flood_running": {"connections": flood.connections, "sent": flood.sent} if flood else None,
            "tpu": [v.tpu.qos_stats() if v.tpu_open else None for v in self.validators],
        }

    async def close_tpu(self, index: int) -> None:
        """Stop one leader's QUIC endpoint (a dead or unreachable leader); it stays in the schedule."""
        validator = self.validators[index]
        if validator.tpu_open:
            await validator.tpu.stop()
            validator.tpu_open = False

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, port))
        site = web.SockSite(runner, sock)
        await site.start()
        self._runners.append(runner)
        return sock.getsockname()[1]

    async def _serve_jsonrpc(self, rpc: JsonRpcApp, paths: list[str], port: int, add_routes=None) -> int:
        app = web.Application(client_max_size=1 << 20)
        for path in paths:
            app.router.add_post(path, rpc.handle_http)
        if add_routes is not None:
            add_routes(app)  # the block engine's GET routes (tip floor, tip stream)
        return await self._serve(app, port)

    def _pubsub_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.pubsub.handle)
        return app

    # --- block production ----------------------------------------------------------

    async def _slot_clock(self) -> None:
        """One block per slot, on a fixed schedule; the block executes in slices so requests keep flowing."""
        loop = asyncio.get_running_loop()
        slot_s = self.config.slot_ms / 1000
        deadline = loop.time() + slot_s
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            started = loop.time()
            self.intake.forward_due(self.ledger.slot)  # what a slow RPC node held reaches the leader now
            if self.slot_skipped(self.ledger.slot):
                self.ledger.skip_slot()  # no block: queued work waits for the next leader that produces one
                deadline = max(deadline + slot_s, loop.time())  # a skipped slot never makes the clock burst
                continue
            block = self.ledger.begin_block()
            if self.non_jito and self.leader_index(block.slot) in self.non_jito:
                block.work = self.ledger.hold_bundles(block.work)  # bundles wait for a Jito leader
            if self.auction.config.enabled:
                block.work = self._run_auction(block.work)
            self.congestion.schedule(self.ledger, block)  # off by default; on: priority order, CU limits, load
            budget_end = started + slot_s * self.config.block_budget_share
            slice_end = started + 0.005
            for index, submission in enumerate(block.work):
                self.ledger.execute(submission, block)
                now = loop.time()
                if now > budget_end:
                    self.ledger.requeue(block.work[index + 1 :])
                    break
                if now > slice_end:
                    await asyncio.sleep(0)
                    slice_end = loop.time() + 0.005
            self.ledger.finish_block(block)
            self.tip_floor.record_block(block.slot, block.tips)
            await self.pubsub.after_block(self.ledger.processed_slot())
            deadline += slot_s
            if loop.time() > deadline + slot_s:  # fell behind (machine paused): don't burst to catch up
                deadline = loop.time() + slot_s

    # --- the tip auction and the background searchers ---------------------------------

    def _run_auction(self, work: list[Submission]) -> list[Submission]:
        """The block's auctions (localnet.auction): losers leave the block, failed, and are counted per region."""
        work, losers = self.auction.run(self.ledger, work, TIP_PUBKEYS, time.time_ns())
        for outcome in losers:
            self.intake.counters["bundle.lost_auction"] += 1
            for region in self.regions.values():
                if outcome.bundle_id in region.forwarded:
                    region.counters["lost_at_auction"] += 1
        return work

    def _enqueue_searcher_bundle(self, transactions: list[VersionedTransaction]) -> str:
        bundle_id = derive_bundle_id(transactions)
        self.ledger.enqueue(Submission(transactions, bundle_id=bundle_id))
        return bundle_id

    def _restart_searchers(self) -> None:
        config = self.auction.config.searchers
        if not config.on:
            return
        self._searchers = self._last_searchers = Searchers(config, self.ledger, TIP_PUBKEYS, self.fund, self._enqueue_searcher_bundle)
        self._searchers.start()

    async def _stop_searchers(self) -> None:
        searchers, self._searchers = self._searchers, None
        if searchers is not None:
            await searchers.stop()

    async def configure_auction(self, update: dict) -> None:
        """Admin: {"enabled", "tick_ms", "prompt_failures", "searchers": {...}}; keys left out keep their value."""
        before = self.auction.config.searchers
        self.auction.config.update(update)
        if self.auction.config.searchers != before or (self._searchers is None) == self.auction.config.searchers.on:
            await self._stop_searchers()
            self._restart_searchers()

    def auction_json(self) -> dict:
        searchers = self._last_searchers
        return {
            **self.auction.config.to_json(),
            "counters": dict(self.auction.counters),
            "searchers_running": self._searchers is not None,
            # the current (or last) searcher run: bundles sent, landed, lost at auction, tips landed
            "searcher_stats": searchers.to_json() if searchers is not None else None,
        }

    # --- intake helpers ---------------------------------------------------------------

    def _on_tpu_transaction(self, raw: bytes, peer: str, index: int = 0) -> None:
        if index in self.offline:  # an offline leader executes nothing and forwards nothing: lost
            self.intake.counters["tpu.offline_leader"] += 1
            try:
                self.intake.receive(decode_transaction(raw), "tpu", Verdict.drop)
            except IntakeRefused:
                self.intake.counters["tpu.malformed"] += 1
            return
        verdict = self.intake.verdict("tpu")
        try:
            tx = decode_transaction(raw)
        except IntakeRefused as refused:
            self.intake.counters["tpu.malformed"] += 1
            log.debug("tpu: %s from %s", refused, peer)
            return
        if verdict is Verdict.reject or self.intake.rate_limited("tpu"):
            verdict = Verdict.drop  # a TPU never answers a transaction: refusal and overload look like loss
        delay = self.faults.tpu.delay_ms
        if delay:
            asyncio.get_running_loop().call_later(delay / 1000, self.intake.receive, tx, "tpu", verdict)
        else:
            self.intake.receive(tx, "tpu", verdict)

    def leader_index(self, slot: int) -> int:
        return (slot // LEADER_SLOTS) % len(self.validators)

    def leader_for(self, slot: int) -> Pubkey:
        return self.validators[self.leader_index(slot)].identity.pubkey()

    # --- skipped slots ------------------------------------------------------------------

    def slot_skipped(self, slot: int) -> bool:
        """Whether this slot's leader produces no block: it is offline, or the seeded skip rate says so."""
        if self.leader_index(slot) in self.offline:
            return True
        return self.skip_rate > 0 and random.Random(f"{self.skip_seed}:{slot}").random() < self.skip_rate

    def skips_json(self) -> dict:
        return {"offlineLeaders": sorted(self.offline), "skipRate": self.skip_rate, "seed": self.skip_seed}

    def leader_indices(self, key: str, data: dict) -> set[int]:
        value = data[key]
        if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) for i in value):
            raise ValueError(f"{key}: expected a list of validator indices")
        bad = sorted(i for i in value if not 0 <= i < len(self.validators))
        if bad:
            raise ValueError(f"{key}: no validator {bad} (there are {len(self.validators)})")
        return set(value)

    def congestion_json(self) -> dict:
        return self.congestion.to_json()

    def set_congestion(self, data: dict) -> None:
        """Admin: merge {"enabled", "scale", "block_units", "account_units", "load": {...}} (localnet.congestion)."""
        self.congestion.update(data)

    def jito_json(self) -> dict:
        return {"nonJitoLeaders": sorted(self.non_jito)}

    def set_jito(self, data: dict) -> None:
        """{"nonJitoLeaders": [1]}: leaders that run without Jito, so no bundle lands in their slots."""
        unknown = set(data) - {"nonJitoLeaders"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        if "nonJitoLeaders" in data:
            self.non_jito = self.leader_indices("nonJitoLeaders", data)

    def set_skips(self, data: dict) -> None:
        """{"offlineLeaders": [1, 3], "skipRate": 0.1, "seed": 7}; keys left out keep their value."""
        unknown = set(data) - {"offlineLeaders", "skipRate", "seed"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        offline = self.offline
        if "offlineLeaders" in data:
            offline = self.leader_indices("offlineLeaders", data)
        rate = float(data.get("skipRate", self.skip_rate))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"skipRate {rate}: expected a share between 0 and 1")
        seed = int(data.get("seed", self.skip_seed))
        self.offline, self.skip_rate, self.skip_seed = offline, rate, seed

    def airdrop(self, to: Pubkey, lamports: int) -> Signature:
        """requestAirdrop: a real faucet transfer that lands in the next block."""
        blockhash, _ = self.ledger.latest_blockhash
        message = MessageV0.try_compile(
            self.faucet.pubkey(), [transfer(TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=to, lamports=lamports))], [], blockhash
        )
        tx = VersionedTransaction(message, [self.faucet])
        return self.intake.receive(tx, "rpc")

    def fund(self, to: Pubkey, lamports: int) -> None:
        """Credit lamports at once (genesis-style), for fixtures and `--fund`."""
        account = self.ledger.svm.get_account(to)
        if account is None or account.lamports == 0:
            self.ledger.svm.set_account(to, Account(lamports, b"", SYSTEM_PROGRAM))
        else:
            self.ledger.svm.set_account(
                to, Account(account.lamports + lamports, bytes(account.data), account.owner, account.executable, account.rent_epoch)
            )


class ClusterThread:
    """A LocalCluster on its own thread and event loop, so its blocks never stall the caller's loop."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig.auto_ports()
        self.cluster: LocalCluster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="localnet", daemon=True)

    def start(self, timeout: float = 20.0) -> "ClusterThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("local cluster did not start in time")
        if self._error is not None:
            raise RuntimeError("local cluster failed to start") from self._error
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            self.cluster = LocalCluster(self.config)
            await self.cluster.start()
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        await self.cluster.wait_stopped()

    def call(self, fn, *args, timeout: float = 10.0):
        """Run `fn(cluster, *args)` on the cluster's loop (a coroutine function is awaited) and return its result."""

        async def run():
            result = fn(self.cluster, *args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self.cluster is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.cluster.stop(), self._loop).result(20)
        self._thread.join(20)

    def endpoints(self) -> dict:
        return self.cluster.endpoints()

    def __enter__(self) -> "ClusterThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
