"""The worker process: Temporal worker, PLANNED bridge, kill switch and metrics, on shared clients.

One process holds one of each: a NATS connection, an RPC client, a Jito client, the
blockhash cache and the signature watcher. The bridge starts workflows on the same
Temporal client the worker polls with, which is what lets a start be eager.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import nats.errors
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from executor.build import BuildSettings, TransactionBuilder
from venue.chain import BlockhashCache, LookupTableCache
from executor.confirm import SignatureWatcher
from executor.dispatch import Dispatcher
from activities.execution import ExecutionActivities
from venue.fees import FeePolicy, PriorityFeeEstimator
from venue.jito import JitoClient, TipStream
from executor.keystore import KeyStore, KeyStoreError, load_keypair_file
from venue.klend import ReserveCache
from executor.policy import PolicySettings, open_policy
from executor.publish import publish_result
from executor.records import PlanRecords
from venue.rpc import SolanaRpc
from executor.bundles import BundleTracker
from executor.submit import RaceSettings, Submitter
from executor.tips import EscalationSettings, TipEscalation, TipPricer, TipSettings
from venue.blockengines import BlockEngines
from venue.tpu import TpuClient
from executor.wallets import WalletPool
from workflows.converter import history_converter
from workflows.events import ExecutionResultEvent
from workflows.execute_plan import SEARCH_ATTRIBUTES, ExecutePlan

from .bridge import PlanBridge
from .config import ExecutorConfig
from .killswitch import KillSwitch
from .metrics import ExecutorMetrics
from .nats_connection import connect as nats_connect
from .streams import ensure_streams
from settings import CommandError, SettingsError, load
from settings.executor import ProcessSettings

log = logging.getLogger("hft.worker")
STICKY_SCHEDULE_TO_START = timedelta(seconds=1)
# How long a stopping worker lets its plans' confirmations finish before handing them over.
SHUTDOWN_GRACE = timedelta(seconds=10)
# How much longer a stop waits for the SDK's worker shutdown before it gives up and closes the
# rest: a watchdog, as the Go SDK's WorkerStopTimeout is. Giving up is a crash's takeover for
# whatever the worker still held, which the tests cover.
SHUTDOWN_WATCHDOG_S = 20.0
# A server electing a leader or restarting is no reason for a worker to give up at start.
STARTUP_PATIENCE_S = 120.0
# How long a worker whose connection is gone for good waits for the SDK's shutdown before it
# exits: its bus is dead, so nothing it still holds can finish here; a survivor (or its own
# restart) takes the plans over as after a crash, which the chaos campaign covers.
CONNECTION_LOST_PATIENCE_S = 2.0
# A server that refuses the worker's credentials at reconnect (a user removed or its permissions
# changed at a config reload, an expired credential) refuses them again on every attempt: nats-py
# keeps trying for ever, a bus as dead as a closed one. Past this without a connection, it is lost.
AUTHORIZATION_REFUSED_GRACE_S = 5.0
REFUSED_CREDENTIALS = ("authorization violation", "authentication expired", "authentication revoked", "account authentication expired")


class ConnectionLost(Exception):
    """A connection the worker cannot work without is gone for good: the process must be replaced.

    nats-py does not reconnect after the server closes a connection with an error (a protocol
    error such as "maximum control line exceeded", an authorization violation after a permissions
    change, an expired credential): the client is closed for good, and a worker left running with
    it takes no plan, tells no result and shows as not live (issue 19). The same holds for a
    Temporal worker whose polling has failed. The choice (docs/operations.md, "A worker that loses
    its bus"): the worker exits with EXIT_CONNECTION_LOST, and its supervisor (compose's restart
    policy, systemd's Restart=on-failure, Kubernetes) starts a clean process, which connects anew.
    """

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason


# EX_TEMPFAIL (sysexits.h): a temporary failure, try again: what a supervisor restarts.
EXIT_CONNECTION_LOST = 75


async def _patiently(step_name: str, step, *, undo=None):
    """Run a start-up step again (with backoff, each attempt logged) until it works or patience ends."""
    delay, deadline = 0.5, time.monotonic() + STARTUP_PATIENCE_S
    while True:
        try:
            return await step()
        except CommandError:
            raise  # a refusal in words (a PEM file that cannot be read): no retry makes it readable
        except Exception as error:
            if time.monotonic() > deadline:
                raise
            log.warning("stage=worker event=start_retry step=%s error=%s: %s; again in %.1f s", step_name, type(error).__name__, str(error)[:200], delay)
            if undo is not None:
                await undo()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def connect_temporal(config: ExecutorConfig, sdk_metrics_port: int = 0) -> Client:
    """Every Temporal client of the executor (worker, bridge, operator commands, bench, chaos, tests):
    TLS / mTLS as configured, and the history codec when keys are loaded."""
    runtime = None
    if sdk_metrics_port:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{config.metrics_host}:{sdk_metrics_port}")))
    return await Client.connect(
        config.temporal_address,
        namespace=config.temporal_namespace,
        data_converter=history_converter(config.history_keys, encrypt=config.history_encryption),
        tls=temporal_tls(config),
        api_key=config.temporal_api_key,
        **({"runtime": runtime} if runtime else {}),
    )


def temporal_tls(config: ExecutorConfig) -> TLSConfig | bool:
    """False, True (system roots), or a TLSConfig with the CA, the client certificate and key, the server name.

    Files are read at every connect, so a renewed certificate is used by the next connection without a
    restart. The key file must be owner-only, as a wallet key file must.
    """
    if not config.temporal_uses_tls:
        return False
    if not (config.temporal_tls_cert or config.temporal_tls_ca or config.temporal_tls_server_name):
        return True
    return TLSConfig(
        server_root_ca_cert=_read_pem("TEMPORAL_TLS_CA", config.temporal_tls_ca) if config.temporal_tls_ca else None,
        domain=config.temporal_tls_server_name,
        client_cert=_read_pem("TEMPORAL_TLS_CERT", config.temporal_tls_cert) if config.temporal_tls_cert else None,
        client_private_key=_read_pem("TEMPORAL_TLS_KEY", config.temporal_tls_key, secret=True) if config.temporal_tls_key else None,
    )


def _read_pem(variable: str, path_text: str, *, secret: bool = False) -> bytes:
    """A PEM file's bytes; errors name the variable and the path, never the contents."""
    path = Path(path_text).expanduser()
    data = mode = None
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
    if data is None:
        raise SettingsError(f"{variable}={path}: cannot read it ({reason})")
    if secret and os.name != "nt" and mode & 0o077:
        raise SettingsError(f"{variable}={path} is accessible by group/others (mode {mode & 0o777:04o}); refusing to use it. Fix: chmod 600 {path}")
    if b"-----BEGIN " not in data:
        raise SettingsError(f"{variable}={path} is not a PEM file")
    return data


def check_history_encryption(config: ExecutorConfig, keys: KeyStore) -> None:
    """A desk expects ciphertext in Temporal by default: no key, no worker (unless HISTORY_ENCRYPTION=off).
    And a history key is never a wallet's secret (a 32-byte seed pasted as an AES key would look valid)."""
    if config.history_encryption and config.history_keys is None:
        raise SettingsError(
            "history encryption is on and no key is loaded: set HISTORY_KEYS (id:base64 of 32 random bytes; "
            "`hft-executor history-key` prints one) or HISTORY_KEYS_FILE, or set HISTORY_ENCRYPTION=off to write "
            "plans, signed transactions and results to Temporal in plain text"
        )
    if config.history_keys is not None and config.history_keys.seed_public_keys() & set(keys.public_keys()):
        raise SettingsError("a history key is the secret key of one of the worker's wallets: history keys must be their own random keys")


def transaction_builder(
    config: ExecutorConfig, rpc: SolanaRpc, hot_rpc: SolanaRpc, blockhashes: BlockhashCache, tip_accounts,
    *, tip_floor=None, escalation: TipEscalation | None = None, policy: PolicySettings | None = None,
) -> TransactionBuilder:
    """The build activity's builder as configured (also what `inspect-plan` shows). `tip_floor`: a callable
    returning the latest tip floor or None (the worker's `TipStream.floor`), never waiting; without it, or
    with `JITO_TIP_PERCENTILE=off`, tips follow today's rule. `policy`: for its max tip (POLICY_MAX_TIP_LAMPORTS)."""
    settings = BuildSettings(
        compute_unit_limit=config.compute_unit_limit,
        compute_unit_margin=config.compute_unit_margin,
        compute_unit_price=config.compute_unit_price,
        executor_lookup_tables=config.executor_lookup_tables,
        jito_tip_base=config.jito_tip_base,
        jito_tip_profit_share=config.jito_tip_profit_share,
        sol_price_usd=config.sol_price_usd,
    )
    tips = TipPricer(TipSettings.from_settings(config, policy or PolicySettings(), settings), tip_floor, escalation)
    fee_policy = FeePolicy(config.priority_fee_percentile, config.priority_fee_floor, config.priority_fee_ceiling, config.priority_fee_congestion)
    return TransactionBuilder(
        blockhashes, LookupTableCache(rpc), settings, tip_accounts, fees=PriorityFeeEstimator(hot_rpc, fee_policy), reserves=ReserveCache(rpc), tips=tips
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register ExecutePlan's search attributes if missing, or refuse to start.

    A workflow that upserts an unregistered attribute fails every workflow task, forever:
    better a clear error at start than plans that never end.
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in listed.custom_attributes}
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}") for name, kind in missing.items()},
            )
        )
        log.info("stage=worker event=search_attributes_registered names=%s", ",".join(missing))
    except Exception as error:
        names = " ".join(f"--name {name} --type {kind}" for name, kind in missing.items())
        raise CommandError(
            f"search attributes {', '.join(missing)} are not registered in namespace {namespace} and could not be added ({error}); "
            f"run: temporal operator search-attribute create --namespace {namespace} {names}"
        ) from None


@dataclass
class ExecutorWorker:
    config: ExecutorConfig
    keys: KeyStore
    metrics: ExecutorMetrics = field(default_factory=ExecutorMetrics)
    policy_settings: PolicySettings | None = None  # plan policy; None: POLICY_FILE and POLICY_* from the environment

    async def start(self) -> None:
        config = self.config
        self._stopping = False
        self._refused: asyncio.Task | None = None
        self._lost: asyncio.Future[ConnectionLost] = asyncio.get_running_loop().create_future()
        policy_settings = self.policy_settings or PolicySettings.from_environment()  # a bad value stops the worker before it connects
        check_history_encryption(config, self.keys)
        self.nc = await nats_connect(
            config.nats_url,
            config.nats_auth,
            name=config.executor_name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # No buffer while reconnecting: a write either goes now or fails now. A buffered one
            # would be sent after the reconnect, long after its caller gave up on it (a lease
            # taken for a plan that has ended meanwhile).
            pending_size=0,
            reconnected_cb=self._nats_reconnected,
            disconnected_cb=self._nats_disconnected,
            error_cb=self._nats_error,
            closed_cb=self._nats_closed,
        )
        self.js = self.nc.jetstream()

        async def bus() -> None:
            await ensure_streams(self.js, replicas=config.nats_replicas)
            self.records = await PlanRecords.open(self.js, replicas=config.nats_replicas)
            self.wallets = await WalletPool.open(self.js, self.keys.public_keys(), replicas=config.nats_replicas)

        await _patiently("nats", bus)
        # Two pools to the same node: the background reads (blockhash, lookup tables, reserves,
        # balances) never queue the hot path's sends and status polls behind them.
        self.rpc = SolanaRpc(config.rpc_endpoint, timeout_s=10.0, transport_retries=1)
        self.hot_rpc = SolanaRpc(config.rpc_endpoint)
        self.backups = [SolanaRpc(url) for url in config.rpc_backups]
        self.blockhashes = BlockhashCache(self.rpc)
        await _patiently("rpc", self.blockhashes.refresh)
        self.blockhashes.start()
        self.jito = JitoClient(config.jito_block_engine_url, uuid=config.jito_uuid, tip_floor_url=config.jito_tip_floor_url)
        # Tips from the market (executor/tips.py): the latest tip floor, kept by Jito's tip stream (REST while
        # it is down); the build reads it without waiting. Escalation learns from every published result.
        self.tip_stream = TipStream(self.jito) if config.jito_tip_percentile != "off" else None
        if self.tip_stream is not None:
            self.tip_stream.start()
        self.tip_escalation = TipEscalation(EscalationSettings.from_settings(config))
        # The regions bundles go to, by health; a dropped bundle is resent to another (issue 23).
        self.engines = BlockEngines.from_settings(config, uuid=config.jito_uuid)
        self.bundles = BundleTracker(self.engines, poll_s=config.jito_bundle_status_poll_ms / 1000)
        self.bundles.start()
        self.metrics.watch_endpoints(self.engines.board)  # breaker state, latency and outcomes per region, read at each scrape
        self.tpu = await self._start_tpu(config)
        self.client = await _patiently("temporal", lambda: connect_temporal(config, config.temporal_metrics_port if config.metrics_port else 0))
        await ensure_search_attributes(self.client, config.temporal_namespace)
        self.killswitch = KillSwitch(
            self.nc, self.js, self.client, config.executor_name,
            on_change=lambda on: self.metrics.halted.set(int(on)), replicas=config.nats_replicas, sends_drained=self._sends_drained,
        )  # fmt: skip
        await _patiently("killswitch", self.killswitch.start, undo=self.killswitch.stop)
        self.watcher = SignatureWatcher(self.hot_rpc, poll_s=config.confirmation_poll_ms / 1000, commitment=config.confirmation_commitment)
        self.watcher.start()
        tip_floor = (lambda: self.tip_stream.floor) if self.tip_stream is not None else None
        builder = transaction_builder(
            config, self.rpc, self.hot_rpc, self.blockhashes, self.jito.tip_accounts, tip_floor=tip_floor, escalation=self.tip_escalation, policy=policy_settings
        )
        # Plan policy (executor/policy/): every built transaction is checked before it is signed.
        self.policy = await _patiently(
            "policy", lambda: open_policy(policy_settings, self.js, builder, self.hot_rpc, worker_name=config.executor_name, replicas=config.nats_replicas)
        )
        self.dispatcher = Dispatcher(
            wallets=self.wallets,
            keys=self.keys,
            builder=builder,
            records=self.records,
            submitter=Submitter(
                self.hot_rpc, self.jito, self.killswitch.halted, self.backups, self.tpu, unheard=self.killswitch.unheard,
                engines=self.engines,
                race=RaceSettings(config.race_bundle_regions, config.race_jito_transaction, config.race_settle_ms / 1000),
                slot=(lambda: self.tpu.tracker.current_slot or None) if self.tpu is not None else (lambda: None),
            ),  # fmt: skip
            crash_after=load(ProcessSettings).test_crash_after,
            policy=self.policy,
        )
        self.activities = ExecutionActivities(
            dispatcher=self.dispatcher,
            rpc=self.hot_rpc,
            wallets=self.wallets,
            records=self.records,
            watcher=self.watcher,
            js=self.js,
            commitment=config.confirmation_commitment,
            rebroadcast_s=config.rebroadcast_ms / 1000,
            sol_price_usd=config.sol_price_usd,
            on_result=self._on_result,
            on_publish_failure=self.metrics.publish_failures.inc,
            confirmation_timeout_ms=config.confirmation_timeout_ms,
            tpu_rebroadcast_s=config.tpu_rebroadcast_ms / 1000,
            shutdown_grace_s=SHUTDOWN_GRACE.total_seconds(),
            bundles=self.bundles,
        )
        self.worker = Worker(
            self.client,
            task_queue=config.temporal_task_queue,
            workflows=[ExecutePlan],
            activities=self.activities.all(),
            graceful_shutdown_timeout=SHUTDOWN_GRACE,
            # Measured: the sandbox rebuilt per workflow cost more CPU than the whole hot path.
            # Determinism is guarded instead by replaying recorded histories in the tests.
            workflow_runner=UnsandboxedWorkflowRunner(),
            # A task queued for this worker's sticky queue while it is dead moves to the shared queue
            # after this: part of how fast a survivor takes over (the SDK's default is 10 s).
            sticky_queue_schedule_to_start_timeout=STICKY_SCHEDULE_TO_START,
        )
        self.bridge = PlanBridge(
            self.js,
            self.client,
            config.temporal_task_queue,
            self._publish_rejection,
            self.killswitch.halted,
            records=self.records,
            dispatcher=self.dispatcher,
            max_in_flight=config.max_plans_in_flight,
        )
        if config.metrics_port:
            self.metrics.serve(config.metrics_port, config.metrics_host)
        self._tasks = [
            asyncio.create_task(self._lost_connection(), name="connections"),
            asyncio.create_task(self._run_temporal_worker(), name="temporal-worker"),
            asyncio.create_task(self.bridge.run(), name="bridge"),
            asyncio.create_task(self.wallets.run_balance_refresh(self.rpc, config.balance_refresh_s), name="balance-refresh"),
            asyncio.create_task(self.wallets.follow(), name="wallet-leases"),
            asyncio.create_task(self.policy.spend.run(), name="wallet-spend"),  # plan policy: the per-minute totals of every worker
        ]
        log.info(
            "stage=worker event=started name=%s wallets=%d taskQueue=%s temporalTls=%s historyKey=%s",
            config.executor_name, len(self.keys), config.temporal_task_queue,
            "mtls" if config.temporal_tls_cert else "on" if config.temporal_uses_tls else "off",
            (config.history_keys.current if config.history_encryption else "off (plain text)") if config.history_keys else "off (plain text)",
        )  # fmt: skip

    def _on_result(self, result: ExecutionResultEvent) -> None:
        self.metrics.record(result)
        self.tip_escalation.observe(result)  # tipped plans landed or expired: the next plans' tips

    async def _nats_reconnected(self) -> None:
        if getattr(self, "killswitch", None) is not None:
            await self.killswitch.reconnected()  # a halt published while we were away

    async def _start_tpu(self, config: ExecutorConfig) -> TpuClient | None:
        """The direct-TPU client (leader tracking, warm QUIC connections). Without it, tpu_direct
        plans fail with SUBMIT_REJECTED; rpc and jito_bundle are unaffected."""
        identity = None
        if config.tpu_identity_keypair:
            # Mode 0600 like the wallet files: whoever holds the identity holds its stake-weighted QUIC access.
            try:
                identity = load_keypair_file(Path(config.tpu_identity_keypair), "TPU_IDENTITY_KEYPAIR")
            except KeyStoreError as error:
                raise SettingsError(f"TPU identity: {error}") from None
        tpu = TpuClient(
            config.rpc_endpoint,
            config.websocket_endpoint(),
            identity=identity,
            fanout_slots=config.tpu_fanout_slots,
            timeout_s=config.tpu_timeout_ms / 1000,
            retry_count=config.tpu_retry_count,
            registry=self.metrics.registry,
        )
        try:
            await tpu.start()
        except Exception as error:
            log.warning("stage=worker event=tpu_unavailable error=%s", error)
            return None
        log.info("stage=worker event=tpu_ready identity=%s fanoutSlots=%d", tpu.identity_pubkey, config.tpu_fanout_slots)
        return tpu

    async def _nats_closed(self) -> None:
        """nats-py closed the connection for good (it does not reconnect after a server's -ERR)."""
        if self._stopping:
            return  # our own close
        error = self.nc.last_error
        self.connection_lost("nats", f"{type(error).__name__}: {error}" if error else "closed by the server")

    def connection_lost(self, service: str, reason: str) -> None:
        if self._lost.done():
            return
        log.error("stage=%s event=connection_lost reason=%s action=exit code=%d", service, reason[:300], EXIT_CONNECTION_LOST)
        self.metrics.connections_lost.labels(service).inc()
        self._lost.set_result(ConnectionLost(service, reason))

    async def _lost_connection(self) -> None:
        """Raises ConnectionLost once a connection is gone for good: wait() and run_until() end with it."""
        raise await self._lost

    async def _run_temporal_worker(self) -> None:
        """The SDK worker, whose end outside a stop is a Temporal connection lost for good. The client itself
        reconnects, and sdk-core retries its polls, even against a namespace deleted under it (measured:
        it logs NotFound and goes on): a Temporal outage is waited out, and only the worker failing ends here."""
        try:
            await self.worker.run()
        except Exception as error:  # told by connection_lost: wait() raises ConnectionLost, not this
            if not self._stopping:
                self.connection_lost("temporal", f"the worker failed: {type(error).__name__}: {error}")
            return
        if not self._stopping:
            self.connection_lost("temporal", "the worker stopped polling")

    async def _nats_disconnected(self) -> None:
        log.warning("stage=nats event=disconnected name=%s", self.config.executor_name)

    async def _nats_error(self, error: Exception) -> None:
        # One line per event, not a traceback per reconnect attempt.
        log.warning("stage=nats event=error error=%s: %s", type(error).__name__, str(error)[:200])
        text = f"{type(error).__name__} {error}".lower()
        refused = isinstance(error, nats.errors.AuthorizationError) or any(phrase in text for phrase in REFUSED_CREDENTIALS)
        if refused and not self._stopping and self._refused is None:
            self._refused = asyncio.create_task(self._credentials_refused(str(error)[:200] or type(error).__name__))

    async def _credentials_refused(self, reason: str) -> None:
        try:
            deadline = time.monotonic() + AUTHORIZATION_REFUSED_GRACE_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                if self.nc.is_connected:
                    return  # accepted again (a passing refusal)
            if not self._stopping:
                self.connection_lost("nats", f"the server refuses this worker's credentials ({reason}) for {AUTHORIZATION_REFUSED_GRACE_S:.0f} s")
        finally:
            self._refused = None

    async def _sends_drained(self) -> None:
        dispatcher = getattr(self, "dispatcher", None)  # none yet while the kill switch starts: nothing sent
        if dispatcher is not None:
            await dispatcher.submitter.drained()

    async def _publish_rejection(self, result: ExecutionResultEvent, message_id: str) -> None:
        await publish_result(self.js, result, message_id)
        self.metrics.plans_rejected.labels(result.error_code.value if result.error_code else "INVALID_PLAN").inc()
        self.metrics.record(result)

    async def wait(self) -> None:
        """Until a part stops on its own (an error): that part's exception is raised, or ConnectionLost when a
        connection is gone for good (the root cause: a part's own error is then only its consequence)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        if self._lost.done():
            for task in done:  # retrieved: each is only a consequence of the lost connection
                task.cancelled() or task.exception()
            raise self._lost.result()
        for task in done:
            task.result()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set (SIGINT, SIGTERM) or a part stops on its own (its exception is raised)."""
        stopping = asyncio.create_task(stop.wait())
        crashed = asyncio.create_task(self.wait())
        await asyncio.wait({stopping, crashed}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if crashed.done():
            crashed.result()
        crashed.cancel()

    async def stop(self) -> None:
        """Drain: stop taking plans, let running activities finish (up to the grace time), close clients.
        After a lost connection, only briefly: nothing held here can finish without it."""
        self._stopping = True
        await self.bridge.stop()
        lost = self._lost.done()
        waited = CONNECTION_LOST_PATIENCE_S if lost else SHUTDOWN_GRACE.total_seconds() + SHUTDOWN_WATCHDOG_S
        try:
            await asyncio.wait_for(self.worker.shutdown(), waited)
        except TimeoutError:
            log.log(
                logging.WARNING if lost else logging.ERROR,
                "stage=worker event=shutdown_incomplete waited_s=%.0f: closing anyway; what this worker held runs again elsewhere", waited,
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.killswitch.stop()
        await self.watcher.stop()
        await self.blockhashes.stop()
        await self.bundles.stop()
        await self.engines.close()
        if self.tip_stream is not None:
            await self.tip_stream.close()
        await self.jito.close()
        if self.tpu is not None:
            await self.tpu.stop()
        await self.rpc.close()
        await self.hot_rpc.close()
        for backup in self.backups:
            await backup.close()
        try:
            await self.nc.close()  # everything we publish is acked already; a drain would only wait on the bridge's pull inbox
        except Exception as error:  # a connection the server already dropped (a lost bus): nothing left to close
            log.info("stage=worker event=nats_close_failed error=%s: %s", type(error).__name__, str(error)[:200])
        log.info("stage=worker event=stopped name=%s", self.config.executor_name)
