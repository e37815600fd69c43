"""Configuration from environment variables, named as in the seed's ExecutorConfig.

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
from workflows.codec import HistoryKeyError, HistoryKeys
from venue.urls import shown_url


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {env[name]!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {env[name]!r}") from None


@dataclass(frozen=True)
class ExecutorConfig:
    executor_name: str = "hft-executor"
    rpc_endpoint: str = "http://127.0.0.1:8899"
    rpc_backups: tuple[str, ...] = ()
    rpc_ws_endpoint: str | None = None  # RPC_WS_ENDPOINT; default: RPC_ENDPOINT as ws(s)://, port + 1 (Solana's convention)
    jito_block_engine_url: str = "http://127.0.0.1:8910"
    jito_uuid: str | None = field(default=None, repr=False)
    jito_tip_base: int = 10_000
    jito_tip_profit_share: float = 0.05
    compute_unit_limit: int = 200_000
    compute_unit_price: int = 1_000  # fallback when a plan has no priorityFee and the estimate fails
    compute_unit_margin: float = 0.10
    priority_fee_percentile: float = 75.0
    priority_fee_floor: int = 1_000
    priority_fee_ceiling: int = 2_000_000
    priority_fee_congestion: bool = False
    executor_lookup_tables: tuple[str, ...] = ()
    confirmation_timeout_ms: int = 30_000
    confirmation_commitment: str = "confirmed"
    confirmation_poll_ms: int = 200
    rebroadcast_ms: int = 1_000
    sol_price_usd: float = 150.0
    tpu_timeout_ms: int = 2_000  # per leader, per send
    tpu_retry_count: int = 2  # reconnects to one leader within a send
    tpu_fanout_slots: int = 4  # send to the distinct leaders of this many upcoming slots
    tpu_rebroadcast_ms: int = 400  # confirm resends tpu_direct bytes this often (each leader window gets a copy)
    tpu_identity_keypair: str | None = None  # path of the QUIC identity keypair (never a wallet); fresh if unset
    nats_url: str = "nats://127.0.0.1:4222"
    nats_auth: NatsAuth = field(default_factory=NatsAuth)  # NATS_USER.. NATS_TLS_*: worker/nats_connection.py
    metrics_port: int = 9464  # 0 turns both metrics listeners off
    metrics_host: str = "127.0.0.1"  # METRICS_HOST: both listeners' address (0.0.0.0 to be scraped from other hosts)
    temporal_metrics_port: int = 9465  # the Temporal SDK's own metrics
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "hft-executor"
    temporal_tls: bool = False
    temporal_api_key: str | None = field(default=None, repr=False)  # Temporal Cloud; implies TLS
    temporal_tls_cert: str | None = None  # TEMPORAL_TLS_CERT: client certificate (PEM) for mTLS; implies TLS
    temporal_tls_key: str | None = None  # TEMPORAL_TLS_KEY: its private key (PEM file, mode 0600)
    temporal_tls_ca: str | None = None  # TEMPORAL_TLS_CA: CA of the server's certificate; default: system roots
    temporal_tls_server_name: str | None = None  # TEMPORAL_TLS_SERVER_NAME: the name the server's certificate must carry
    history_encryption: bool = True  # HISTORY_ENCRYPTION=off: payloads go to Temporal in plain text (loaded keys still decrypt)
    history_keys: HistoryKeys | None = field(default=None, repr=False)  # HISTORY_KEYS / HISTORY_KEYS_FILE
    balance_refresh_s: float = 30.0
    max_plans_in_flight: int = 256  # bridge backpressure: ack-pending cap on the PLANNED consumer
    nats_replicas: int = 1  # NATS_REPLICAS: replicas of every stream and bucket the executor creates (3 in a cluster)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "ExecutorConfig":
        env = os.environ if env is None else env
        replicas = _int(env, "NATS_REPLICAS", cls.nats_replicas)
        if not 1 <= replicas <= 5:
            raise SystemExit(f"NATS_REPLICAS must be 1 to 5 (JetStream's limit), got {replicas}")
        commitment = env.get("CONFIRMATION_COMMITMENT", "confirmed")
        if commitment not in ("processed", "confirmed", "finalized"):
            raise SystemExit(f"CONFIRMATION_COMMITMENT must be processed, confirmed or finalized, got {commitment!r}")
        encryption = env.get("HISTORY_ENCRYPTION", "on").strip().lower()
        if encryption not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
            raise SystemExit(f"HISTORY_ENCRYPTION must be on or off, got {encryption!r}")
        try:
            history_keys = HistoryKeys.from_environment(env)
        except HistoryKeyError as error:
            raise SystemExit(str(error)) from None
        tls_cert, tls_key = env.get("TEMPORAL_TLS_CERT") or None, env.get("TEMPORAL_TLS_KEY") or None
        if bool(tls_cert) != bool(tls_key):
            raise SystemExit("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: a client certificate needs its key")
        return cls(
            executor_name=env.get("EXECUTOR_NAME", cls.executor_name),
            rpc_endpoint=env.get("RPC_ENDPOINT", cls.rpc_endpoint),
            rpc_backups=tuple(u for u in env.get("RPC_BACKUPS", "").split(",") if u),
            rpc_ws_endpoint=env.get("RPC_WS_ENDPOINT") or None,
            jito_block_engine_url=env.get("JITO_BLOCK_ENGINE_URL", cls.jito_block_engine_url),
            jito_uuid=env.get("JITO_UUID") or None,
            jito_tip_base=_int(env, "JITO_TIP_BASE", cls.jito_tip_base),
            jito_tip_profit_share=_float(env, "JITO_TIP_PROFIT_SHARE", cls.jito_tip_profit_share),
            compute_unit_limit=_int(env, "COMPUTE_UNIT_LIMIT", cls.compute_unit_limit),
            compute_unit_price=_int(env, "COMPUTE_UNIT_PRICE", cls.compute_unit_price),
            compute_unit_margin=_float(env, "COMPUTE_UNIT_MARGIN", cls.compute_unit_margin),
            priority_fee_percentile=_float(env, "PRIORITY_FEE_PERCENTILE", cls.priority_fee_percentile),
            priority_fee_floor=_int(env, "PRIORITY_FEE_FLOOR", cls.priority_fee_floor),
            priority_fee_ceiling=_int(env, "PRIORITY_FEE_CEILING", cls.priority_fee_ceiling),
            priority_fee_congestion=env.get("PRIORITY_FEE_CONGESTION", "").lower() in ("1", "true", "yes"),
            executor_lookup_tables=tuple(a for a in env.get("EXECUTOR_LOOKUP_TABLES", "").split(",") if a),
            confirmation_timeout_ms=_int(env, "CONFIRMATION_TIMEOUT", cls.confirmation_timeout_ms),
            confirmation_commitment=commitment,
            confirmation_poll_ms=_int(env, "CONFIRMATION_POLL_MS", cls.confirmation_poll_ms),
            rebroadcast_ms=_int(env, "REBROADCAST_MS", cls.rebroadcast_ms),
            sol_price_usd=_float(env, "SOL_PRICE_USD", cls.sol_price_usd),
            tpu_timeout_ms=_int(env, "TPU_TIMEOUT", cls.tpu_timeout_ms),
            tpu_retry_count=_int(env, "TPU_RETRY_COUNT", cls.tpu_retry_count),
            tpu_fanout_slots=_int(env, "TPU_FANOUT_SLOTS", cls.tpu_fanout_slots),
            tpu_rebroadcast_ms=_int(env, "TPU_REBROADCAST_MS", cls.tpu_rebroadcast_ms),
            tpu_identity_keypair=env.get("TPU_IDENTITY_KEYPAIR") or None,
            nats_url=env.get("NATS_URL", cls.nats_url),
            nats_auth=NatsAuth.from_environment(env),
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port),
            metrics_host=env.get("METRICS_HOST", cls.metrics_host),
            temporal_metrics_port=_int(env, "TEMPORAL_METRICS_PORT", cls.temporal_metrics_port),
            temporal_address=env.get("TEMPORAL_ADDRESS", cls.temporal_address),
            temporal_namespace=env.get("TEMPORAL_NAMESPACE", cls.temporal_namespace),
            temporal_task_queue=env.get("TEMPORAL_TASK_QUEUE", cls.temporal_task_queue),
            temporal_tls=env.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes"),
            temporal_api_key=env.get("TEMPORAL_API_KEY") or None,
            temporal_tls_cert=tls_cert,
            temporal_tls_key=tls_key,
            temporal_tls_ca=env.get("TEMPORAL_TLS_CA") or None,
            temporal_tls_server_name=env.get("TEMPORAL_TLS_SERVER_NAME") or None,
            history_encryption=encryption in ("on", "1", "true", "yes"),
            history_keys=history_keys,
            balance_refresh_s=_float(env, "BALANCE_REFRESH_S", cls.balance_refresh_s),
            max_plans_in_flight=_int(env, "MAX_PLANS_IN_FLIGHT", cls.max_plans_in_flight),
            nats_replicas=replicas,
        )

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
