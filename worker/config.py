"""The worker's configuration: the flat view of the settings every part of the worker is given.

Each variable is declared once, with its name, type, unit and doc, in `settings/executor.py`;
this dataclass takes its defaults from there (a config built in code, as `dev` and the tests do,
starts from the same values) and `from_environment` reads the declared groups.

Secrets (WALLET_n) are not read here: the key store reads them itself, so they never sit
in a config object that could be logged. History keys are loaded here into a `HistoryKeys`,
which shows only key ids; TLS key files are read only when a client connects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from .nats_connection import NatsAuth, nats_servers, redact_url  # noqa: F401 - nats_servers: its old home
from settings import SettingsError, check_names, load
from settings.executor import (
    CONFIG_GROUPS,
    GROUPS,
    ConfirmationSettings as Confirmation,
    FeeSettings as Fees,
    HistorySettings as History,
    JitoSettings as Jito,
    MetricsSettings as Metrics,
    NatsSettings as Nats,
    RpcSettings as Rpc,
    TemporalSettings as Temporal,
    TpuSettings as Tpu,
    WorkerSettings as Worker,
)
from settings.policy import POLICY_FILE, PolicySettings
from workflows.codec import HistoryKeyError, HistoryKeys
from venue.urls import shown_url


@dataclass(frozen=True)
class ExecutorConfig:
    executor_name: str = Worker.default("executor_name")
    rpc_endpoint: str = Rpc.default("rpc_endpoint")
    rpc_backups: tuple[str, ...] = Rpc.default("rpc_backups")
    rpc_ws_endpoint: str | None = Rpc.default("rpc_ws_endpoint")  # default: RPC_ENDPOINT as ws(s)://, port + 1 (Solana's convention)
    jito_block_engine_url: str = Jito.default("jito_block_engine_url")
    jito_uuid: str | None = field(default=Jito.default("jito_uuid"), repr=False)
    jito_tip_base: int = Jito.default("jito_tip_base")
    jito_tip_profit_share: float = Jito.default("jito_tip_profit_share")
    compute_unit_limit: int = Fees.default("compute_unit_limit")
    compute_unit_price: int = Fees.default("compute_unit_price")  # fallback when a plan has no priorityFee and the estimate fails
    compute_unit_margin: float = Fees.default("compute_unit_margin")
    priority_fee_percentile: float = Fees.default("priority_fee_percentile")
    priority_fee_floor: int = Fees.default("priority_fee_floor")
    priority_fee_ceiling: int = Fees.default("priority_fee_ceiling")
    priority_fee_congestion: bool = Fees.default("priority_fee_congestion")
    executor_lookup_tables: tuple[str, ...] = Fees.default("executor_lookup_tables")
    confirmation_timeout_ms: int = Confirmation.default("confirmation_timeout_ms")
    confirmation_commitment: str = Confirmation.default("confirmation_commitment")
    confirmation_poll_ms: int = Confirmation.default("confirmation_poll_ms")
    rebroadcast_ms: int = Confirmation.default("rebroadcast_ms")
    sol_price_usd: float = Fees.default("sol_price_usd")
    tpu_timeout_ms: int = Tpu.default("tpu_timeout_ms")  # per leader, per send
    tpu_retry_count: int = Tpu.default("tpu_retry_count")  # reconnects to one leader within a send
    tpu_fanout_slots: int = Tpu.default("tpu_fanout_slots")  # send to the distinct leaders of this many upcoming slots
    tpu_rebroadcast_ms: int = Tpu.default("tpu_rebroadcast_ms")  # confirm resends tpu_direct bytes this often (each leader window gets a copy)
    tpu_identity_keypair: str | None = Tpu.default("tpu_identity_keypair")  # path of the QUIC identity keypair (never a wallet); fresh if unset
    nats_url: str = Nats.default("nats_url")
    nats_auth: NatsAuth = field(default_factory=NatsAuth)  # NATS_USER.. NATS_TLS_*: worker/nats_connection.py
    metrics_port: int = Metrics.default("metrics_port")  # 0 turns both metrics listeners off
    metrics_host: str = Metrics.default("metrics_host")  # both listeners' address (0.0.0.0 to be scraped from other hosts)
    temporal_metrics_port: int = Metrics.default("temporal_metrics_port")  # the Temporal SDK's own metrics
    temporal_address: str = Temporal.default("temporal_address")
    temporal_namespace: str = Temporal.default("temporal_namespace")
    temporal_task_queue: str = Temporal.default("temporal_task_queue")
    temporal_tls: bool = Temporal.default("temporal_tls")
    temporal_api_key: str | None = field(default=Temporal.default("temporal_api_key"), repr=False)  # Temporal Cloud; implies TLS
    temporal_tls_cert: str | None = Temporal.default("temporal_tls_cert")  # client certificate (PEM) for mTLS; implies TLS
    temporal_tls_key: str | None = Temporal.default("temporal_tls_key")  # its private key (PEM file, mode 0600)
    temporal_tls_ca: str | None = Temporal.default("temporal_tls_ca")  # CA of the server's certificate; default: system roots
    temporal_tls_server_name: str | None = Temporal.default("temporal_tls_server_name")  # the name the server's certificate must carry
    history_encryption: bool = History.default("history_encryption")  # off: payloads go to Temporal in plain text (loaded keys still decrypt)
    history_keys: HistoryKeys | None = field(default=None, repr=False)  # HISTORY_KEYS / HISTORY_KEYS_FILE
    balance_refresh_s: float = Worker.default("balance_refresh_s")
    max_plans_in_flight: int = Worker.default("max_plans_in_flight")  # bridge backpressure: ack-pending cap on the PLANNED consumer
    nats_replicas: int = Nats.default("nats_replicas")  # replicas of every stream and bucket the executor creates (3 in a cluster)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "ExecutorConfig":
        """The declared groups read from `env` (default: the process's environment). A malformed value,
        a mistyped name or a contradiction raises SettingsError naming the variable."""
        env = os.environ if env is None else env
        check_names(env, (*GROUPS, PolicySettings), also=(POLICY_FILE[0],))
        values: dict = {}
        for group in CONFIG_GROUPS:
            values.update(load(group, env).model_dump())
        # What the config holds as objects of their own: the NATS login (checked by NatsAuth) and the history keys.
        for name in NatsAuth.VARIABLES:
            del values[f"nats_{name}"]
        del values["history_keys"], values["history_keys_file"]
        if bool(values["temporal_tls_cert"]) != bool(values["temporal_tls_key"]):
            raise SettingsError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: a client certificate needs its key")
        try:
            history_keys = HistoryKeys.from_environment(env)
        except HistoryKeyError as error:
            raise SettingsError(str(error)) from None
        return cls(**values, nats_auth=NatsAuth.from_environment(env), history_keys=history_keys)

    @property
    def temporal_uses_tls(self) -> bool:
        """TLS to Temporal: asked for, or implied by an API key or any TLS setting (as the temporal CLI does)."""
        return self.temporal_tls or any(
            (self.temporal_api_key, self.temporal_tls_cert, self.temporal_tls_ca, self.temporal_tls_server_name)
        )

    def websocket_endpoint(self) -> str:
        if self.rpc_ws_endpoint:
            return self.rpc_ws_endpoint
        url = urlsplit(self.rpc_endpoint)
        scheme = "wss" if url.scheme == "https" else "ws"
        netloc = f"{url.hostname}:{url.port + 1}" if url.port else url.hostname
        return urlunsplit((scheme, netloc, url.path, url.query, ""))

    def describe(self) -> dict:
        """For logs and `status`: everything but secrets."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown.update(nats_url=redact_url(self.nats_url), nats_auth=self.nats_auth.describe())
        # RPC and block-engine URLs often carry the provider's API key (venue/urls.py).
        shown.update(rpc_endpoint=shown_url(self.rpc_endpoint), rpc_backups=tuple(shown_url(u) for u in self.rpc_backups),
                     jito_block_engine_url=shown_url(self.jito_block_engine_url))  # fmt: skip
        if self.rpc_ws_endpoint:
            shown["rpc_ws_endpoint"] = shown_url(self.rpc_ws_endpoint)
        return shown
