"""The executor's settings, one group per concern: each with its environment name, type, unit and doc.

`worker/config.py` `ExecutorConfig` is the flat view the code passes around: a model made of the
groups below by inheritance, so a setting written here is a field of the config with nothing more
to write. What the config holds as an object of its own is a group apart: the NATS login
(`NatsAuthSettings`, read by `NatsAuth`) and the history keys (`HistoryKeySettings`, read by `HistoryKeys`).
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator

from .base import CommaList, Flag, Group, OptionalText, none_if_blank, setting


class WorkerSettings(Group):
    title: ClassVar[str] = "worker"
    executor_name: str = setting("hft-executor", "EXECUTOR_NAME", "NATS connection name; in logs and in the `metrics.executor.stopped` message")
    balance_refresh_s: float = setting(30.0, "BALANCE_REFRESH_S", "wallet balance refresh interval", unit="s")
    max_plans_in_flight: int = setting(256, "MAX_PLANS_IN_FLIGHT", "max un-acked plans on the bridge's PLANNED consumer (backpressure)", unit="plans")


class RpcSettings(Group):
    title: ClassVar[str] = "rpc"
    rpc_endpoint: str = setting(
        "http://127.0.0.1:8899", "RPC_ENDPOINT",
        "Solana JSON-RPC: blockhashes, sendTransaction, signature statuses, block height, getTransaction, balances, lookup tables; "
        "for `tpu_direct` also getSlot, getSlotLeaders, getClusterNodes",
    )  # fmt: skip
    rpc_ws_endpoint: OptionalText = setting(
        None, "RPC_WS_ENDPOINT", "Solana PubSub websocket; the TPU client's slotSubscribe",
        shown_default="`RPC_ENDPOINT` with scheme `ws` (`wss` for `https`) and port + 1 (no port: none added)",
    )  # fmt: skip
    rpc_backups: CommaList = setting(
        (), "RPC_BACKUPS",
        "comma-separated RPC URLs; every `rpc` send the primary did not refuse, and every rebroadcast, also goes to each of them, in the "
        "background (never waited on, errors ignored). A send the primary refuses goes nowhere else, so SUBMIT_REJECTED means nothing left",
    )  # fmt: skip


class JitoSettings(Group):
    title: ClassVar[str] = "jito"
    jito_block_engine_url: str = setting("http://127.0.0.1:8910", "JITO_BLOCK_ENGINE_URL", "block engine root (a trailing `/api/v1` is accepted)")
    jito_uuid: OptionalText = setting(None, "JITO_UUID", "sent in the `x-jito-auth` header", secret=True)
    jito_tip_base: int = setting(10_000, "JITO_TIP_BASE", "minimum Jito tip", unit="lamports")
    jito_tip_profit_share: float = setting(0.05, "JITO_TIP_PROFIT_SHARE", "share of the plan's expected profit paid as tip (see below)", unit="fraction")
    jito_block_engine_regions: CommaList = setting(
        (), "JITO_BLOCK_ENGINE_URLS",
        "comma-separated block-engine regions, each `name=url` or a URL (`https://<region>.mainnet.block-engine.jito.wtf` is named `<region>`): "
        "bundles go to the best of them by health (venue/blockengines.py), a race to several, a dropped bundle is resent to another",
        shown_default="`JITO_BLOCK_ENGINE_URL` alone",
    )  # fmt: skip
    jito_requests_per_second: float = setting(
        1.0, "JITO_REQUESTS_PER_SECOND",
        "client-side pace of requests to each block-engine region: Jito's default limit is 1 per second per IP per region "
        "(jito-labs/jito-docs lowlatencytxnsend.md, Rate Limits; set yours if Jito granted more); a burst waits for its turn instead of meeting a 429",
        unit="requests/s", must="more than 0", gt=0,
    )  # fmt: skip
    jito_requests_burst: int = setting(
        1, "JITO_REQUESTS_BURST",
        "requests that may go back to back before the pace applies; 1 spreads every burst evenly (a limit counted over a sliding second refuses "
        "a 6th request 0.2 s after 5 sent at once)",
        unit="requests", must="1 or more", ge=1,
    )  # fmt: skip

    # Tips from the tip floor (issue 23, executor/tips.py): read by the build of every jito_bundle and race plan.
    jito_tip_percentile: Literal["off", "25", "50", "75", "95", "99", "ema50"] = setting(
        "75", "JITO_TIP_PERCENTILE",
        "tips from the market: which percentile of Jito's tip floor (its tip stream, REST while the stream is down) a plan without `tipLamports` pays "
        "(`ema50`: the EMA of the median); `off`: today's rule, and no tip stream. Never below 1000 or `JITO_TIP_BASE`, capped by `JITO_TIP_MAX_PROFIT_SHARE` and `POLICY_MAX_TIP_LAMPORTS`", unit="percentile",
    )  # fmt: skip
    jito_tip_max_profit_share: float = setting(
        0.5, "JITO_TIP_MAX_PROFIT_SHARE", "tips from the market: a floor-priced (or escalated) tip is at most this share of the plan's expected profit (USD -> lamports at its SOL price)", unit="fraction",
        must="a share in [0, 1]", ge=0.0, le=1.0,
    )
    jito_tip_floor_url: OptionalText = setting(
        None, "JITO_TIP_FLOOR_URL", "tips from the market: where Jito's tip floor and tip stream are read (mainnet: `https://bundles.jito.wtf`)", shown_default="`JITO_BLOCK_ENGINE_URL`"
    )
    jito_tip_floor_max_age_ms: int = setting(
        30_000, "JITO_TIP_FLOOR_MAX_AGE_MS", "tips from the market: a tip floor read longer ago than this is stale, and the plan pays today's rule", unit="ms", must="1 or more", ge=1
    )
    # Escalation across plans (the seed's jitoTipBase/jitoTipStep): raise tips while tipped plans stop landing.
    jito_tip_step: int = setting(
        5_000, "JITO_TIP_STEP",
        "tip escalation (the seed's `jitoTipStep`): lamports each escalation level adds to the tip of a plan without `tipLamports`, before the caps "
        "(`JITO_TIP_MAX_PROFIT_SHARE`, `POLICY_MAX_TIP_LAMPORTS`); 0: no escalation",
        unit="lamports", must="0 or more", ge=0,
    )  # fmt: skip
    jito_tip_escalation_land_rate: float = setting(
        0.9, "JITO_TIP_ESCALATION_LAND_RATE",
        "tip escalation: a window of tipped plans (`jito_bundle`, `race`) landing less than this share (landed vs BLOCKHASH_EXPIRED) raises the level by one; "
        "at or above it lowers it by one",
        unit="fraction", must="a share in [0, 1]", ge=0.0, le=1.0,
    )  # fmt: skip
    jito_tip_escalation_window: int = setting(
        20, "JITO_TIP_ESCALATION_WINDOW", "tip escalation: tipped outcomes per window; the level moves once per window", unit="results", must="1 or more", ge=1
    )
    jito_tip_escalation_max_steps: int = setting(
        10, "JITO_TIP_ESCALATION_MAX_STEPS", "tip escalation: the highest level (the most it adds: this x `JITO_TIP_STEP`)", unit="levels", must="0 or more", ge=0
    )

    @property
    def jito_block_engine_urls(self) -> list[str]:
        """The regional roots of `JITO_BLOCK_ENGINE_URLS`, or `[JITO_BLOCK_ENGINE_URL]` when it is unset."""
        return list(self.jito_block_engine_regions) or [self.jito_block_engine_url]


class RaceSettings(Group):
    title: ClassVar[str] = "race and bundle follow-up"
    race_bundle_regions: int = setting(
        2, "RACE_BUNDLE_REGIONS",
        "a `race` plan goes as a bundle to this many block-engine regions, the best by health among those whose rate limit lets a request through now "
        "(the others would make it wait: skipped, the race's other routes are already out)",
        unit="regions", must="0 or more", ge=0,
    )  # fmt: skip
    race_jito_transaction: Flag = setting(True, "RACE_JITO_TRANSACTION", "a `race` plan also goes through Jito's sendTransaction, in the next region with a free request")
    race_settle_ms: int = setting(
        200, "RACE_SETTLE_MS",
        "once one route of a race accepted the transaction, how long the others may take before `execute` returns (they go on in the background; "
        "a blackholed region otherwise holds the plan for the client's 2 s timeout)",
        unit="ms", must="0 or more", ge=0,
    )  # fmt: skip
    jito_bundle_status_poll_ms: int = setting(
        500, "JITO_BUNDLE_STATUS_POLL_MS",
        "each region with bundles in flight is asked getInflightBundleStatuses (5 ids a request) at most this often; a bundle it says Failed or Invalid "
        "is resent to another region while the plan may send and its blockhash is valid (executor/bundles.py)",
        unit="ms", must="more than 0", gt=0,
    )  # fmt: skip


class EndpointHealthSettings(Group):
    title: ClassVar[str] = "endpoint health"
    endpoint_breaker_failures: int = setting(
        5, "ENDPOINT_BREAKER_FAILURES",
        "consecutive failures (timeout, refused connection, gateway error; not a 429) that open an endpoint's circuit breaker (venue/health.py)",
        unit="failures", must="1 or more", ge=1,
    )  # fmt: skip
    endpoint_breaker_open_s: float = setting(
        60.0, "ENDPOINT_BREAKER_OPEN_S", "an open breaker lets one probe through after this long; its success closes it, its failure opens it again",
        unit="s", must="more than 0", gt=0,
    )  # fmt: skip
    latency_ewma_alpha: float = setting(
        0.2, "LATENCY_EWMA_ALPHA", "weight of the newest sample in an endpoint's latency average (`ewma = alpha * sample + (1 - alpha) * ewma`)",
        unit="fraction", must="more than 0, at most 1", gt=0, le=1,
    )  # fmt: skip


class FeeSettings(Group):
    title: ClassVar[str] = "fees"
    compute_unit_limit: int = setting(200_000, "COMPUTE_UNIT_LIMIT", "compute-unit limit when the plan has no `gasEstimate` (flash-loan plans: 600000)", unit="CU")
    compute_unit_margin: float = setting(0.10, "COMPUTE_UNIT_MARGIN", "added to the plan's `gasEstimate` (capped at 1,400,000)", unit="fraction")
    compute_unit_price: int = setting(1_000, "COMPUTE_UNIT_PRICE", "when the plan has no `priorityFee` and the estimate below fails", unit="micro-lamports/CU")
    priority_fee_percentile: float = setting(75.0, "PRIORITY_FEE_PERCENTILE", "percentile of getRecentPrioritizationFees over the plan's writable accounts, for plans without `priorityFee`", unit="percentile")
    priority_fee_floor: int = setting(1_000, "PRIORITY_FEE_FLOOR", "lower clamp of that estimate", unit="micro-lamports/CU")
    priority_fee_ceiling: int = setting(2_000_000, "PRIORITY_FEE_CEILING", "upper clamp of that estimate (`POLICY_MAX_CU_PRICE`'s default: raise both together)", unit="micro-lamports/CU")
    priority_fee_congestion: Flag = setting(False, "PRIORITY_FEE_CONGESTION", "on: scale the estimate by the seed's congestion levels (x2 when > 75% of recent slots paid a fee, x1.5 when > 25%)")
    executor_lookup_tables: CommaList = setting(
        (), "EXECUTOR_LOOKUP_TABLES",
        "comma-separated addresses of the executor's own lookup tables (tip accounts, programs, sysvars), used for every plan besides the plan's and routes' tables",
    )  # fmt: skip
    sol_price_usd: float = setting(150.0, "SOL_PRICE_USD", "SOL price when the plan gives no `solPriceUsd`; used for the tip and the cost in USD", unit="USD")


class ConfirmationSettings(Group):
    title: ClassVar[str] = "confirmation"
    confirmation_timeout_ms: int = setting(
        30_000, "CONFIRMATION_TIMEOUT_MS",
        "after the send, how long copies of the transaction may still be resent (the plan's `deadline` ends them too, whichever comes first). "
        "Confirmation itself waits for the chain's answer however long it takes: landed, failed on chain, or blockhash expired",
        unit="ms", old=("CONFIRMATION_TIMEOUT",),
    )  # fmt: skip
    confirmation_commitment: Literal["processed", "confirmed", "finalized"] = setting(
        "confirmed", "CONFIRMATION_COMMITMENT", "the level a transaction must reach to count as landed (anything else refused at start)"
    )
    confirmation_poll_ms: int = setting(
        200, "CONFIRMATION_POLL_MS",
        "how often the worker's one poller asks getSignatureStatuses (256 signatures a request) and getBlockHeight; `dev` sets half the slot time, 20-200",
        unit="ms",
    )  # fmt: skip
    rebroadcast_ms: int = setting(1_000, "REBROADCAST_MS", "for `rpc` plans, resend the same bytes this often until the signature is seen, while the plan may send (before its deadline, no halt in force)", unit="ms")


class TpuSettings(Group):
    title: ClassVar[str] = "tpu"
    tpu_timeout_ms: int = setting(2_000, "TPU_TIMEOUT_MS", "how long a `tpu_direct` send waits at most for the leaders' acknowledgements (one deadline for all leaders of a send)", unit="ms", old=("TPU_TIMEOUT",))
    tpu_retry_count: int = setting(2, "TPU_RETRY_COUNT", "reconnects to one leader within a send when its connection drops")
    tpu_fanout_slots: int = setting(4, "TPU_FANOUT_SLOTS", "a `tpu_direct` send goes to the distinct leaders of this many upcoming slots", unit="slots")
    tpu_rebroadcast_ms: int = setting(400, "TPU_REBROADCAST_MS", "for `tpu_direct` plans, confirm resends the same bytes this often (each leader window gets a copy)", unit="ms")
    tpu_identity_keypair: OptionalText = setting(
        None, "TPU_IDENTITY_KEYPAIR",
        "path of a Solana keypair JSON file: the QUIC client identity presented to leaders. Never a wallet key. Refused (the worker does not start) "
        "if group or others can access it, like a wallet file. Unset: a fresh keypair at every start",
    )  # fmt: skip


class NatsSettings(Group):
    title: ClassVar[str] = "nats"
    nats_url: str = setting("nats://127.0.0.1:4222", "NATS_URL", "NATS server with JetStream; a cluster as a comma-separated list (`nats://n1:4222,nats://n2:4222,nats://n3:4222`)")
    nats_replicas: int = setting(
        1, "NATS_REPLICAS",
        "replicas (1-5, JetStream's limit) of every stream and bucket the executor creates: `3` on a 3-node cluster. An existing stream keeps its replicas (`nats stream edit` changes them)",
        must="1 to 5 (JetStream's limit)", ge=1, le=5,
    )  # fmt: skip


class NatsAuthSettings(Group):
    """How the client proves who it is and checks the server: `worker/nats_connection.py` `NatsAuth` reads
    and checks them, and the config carries that object (`nats_auth`), never these fields."""

    title: ClassVar[str] = "nats"  # the same part of the docs' table as NatsSettings
    nats_user: OptionalText = setting(None, "NATS_USER", "NATS user, with `NATS_PASSWORD` (both or neither). Credentials in `NATS_URL` itself are refused")
    nats_password: OptionalText = setting(None, "NATS_PASSWORD", "its password; never logged, nor shown by `describe()` or in an error", secret=True)
    nats_token: OptionalText = setting(None, "NATS_TOKEN", "NATS token authentication, instead of a user", secret=True)
    nats_nkey_seed: OptionalText = setting(None, "NATS_NKEY_SEED", "path of an nkey seed file (`SU...`), mode 0600: the client signs the server's nonce, nothing secret goes on the wire")
    nats_creds: OptionalText = setting(None, "NATS_CREDS", "path of a `.creds` file (user JWT + seed, from `nsc`), mode 0600. At most one of user/password, token, nkey seed and creds")
    nats_tls_ca: OptionalText = setting(
        None, "NATS_TLS_CA",
        "CA file that verifies the server's certificate. Setting it, or a client certificate, or a `tls://` URL makes TLS required: "
        "a server that does not require TLS is refused before any credential is sent",
        shown_default="none (system roots)",
    )  # fmt: skip
    nats_tls_cert: OptionalText = setting(None, "NATS_TLS_CERT", "client certificate, with `NATS_TLS_KEY`, for a server with mutual TLS (`verify: true`)")
    nats_tls_key: OptionalText = setting(None, "NATS_TLS_KEY", "its key file (mode 0600)")
    nats_tls_server_name: OptionalText = setting(None, "NATS_TLS_SERVER_NAME", "the name to verify in the server's certificate, when the URL's host is not in it", shown_default="the URL's host")
    nats_inbox_prefix: OptionalText = setting(
        None, "NATS_INBOX_PREFIX",
        "prefix of the client's reply subjects; with the shipped permissions each user has its own (`_INBOX.worker`, `_INBOX.planner`, `_INBOX.operator`)",
        shown_default="`_INBOX`",
    )  # fmt: skip


class MetricsSettings(Group):
    title: ClassVar[str] = "metrics"
    metrics_port: int = setting(9464, "METRICS_PORT", "Prometheus metrics of the executor; `0` turns off both metrics listeners", unit="port")
    metrics_host: str = setting("127.0.0.1", "METRICS_HOST", "address both metrics listeners bind; `0.0.0.0` to be scraped from other hosts (compose sets it)")
    temporal_metrics_port: int = setting(9465, "TEMPORAL_METRICS_PORT", "the Temporal SDK's own Prometheus metrics", unit="port")


class TemporalSettings(Group):
    title: ClassVar[str] = "temporal"
    temporal_address: str = setting("127.0.0.1:7233", "TEMPORAL_ADDRESS", "Temporal frontend")
    temporal_namespace: str = setting("default", "TEMPORAL_NAMESPACE", "Temporal namespace")
    temporal_task_queue: str = setting("hft-executor", "TEMPORAL_TASK_QUEUE", "task queue the workers poll and the bridge starts on")
    temporal_tls: Flag = setting(False, "TEMPORAL_TLS", "on: connect with TLS (system roots)")
    temporal_api_key: OptionalText = setting(None, "TEMPORAL_API_KEY", "Temporal Cloud API key (implies TLS); never logged", secret=True)
    temporal_tls_cert: OptionalText = setting(
        None, "TEMPORAL_TLS_CERT",
        "PEM file: the client certificate for mutual TLS, with `TEMPORAL_TLS_KEY` (both or neither; imply TLS). Read at every connect, "
        "so a renewed certificate is picked up by the next connection",
    )  # fmt: skip
    temporal_tls_key: OptionalText = setting(None, "TEMPORAL_TLS_KEY", "PEM file: its private key, mode 0600 like a wallet file")
    temporal_tls_ca: OptionalText = setting(None, "TEMPORAL_TLS_CA", "PEM file: the CA that signed the Temporal frontend's certificate (implies TLS)", shown_default="system roots")
    temporal_tls_server_name: OptionalText = setting(
        None, "TEMPORAL_TLS_SERVER_NAME", "the name the frontend's certificate must carry, when it differs from the address (implies TLS)", shown_default="the host of `TEMPORAL_ADDRESS`"
    )


class HistoryKeySettings(Group):
    """Where the history keys come from: `workflows/codec.py` `HistoryKeys` reads and checks them, and the
    config carries that object (`history_keys`), never these fields."""

    title: ClassVar[str] = "history"
    history_keys: OptionalText = setting(
        None, "HISTORY_KEYS",
        "history encryption keys, `id:base64key,id2:base64key2` (each 32 random bytes, standard or url-safe base64; id 1-64 of `A-Za-z0-9_.-`). "
        "The first encrypts, all decrypt",
        secret=True,
    )  # fmt: skip
    history_keys_file: OptionalText = setting(
        None, "HISTORY_KEYS_FILE", "a file of `id:base64key` lines (`#` comments), mode 0600; its keys come after `HISTORY_KEYS`'s. With neither set the worker refuses to start"
    )


class HistorySettings(Group):
    title: ClassVar[str] = "history"  # the same part of the docs' table as HistoryKeySettings
    history_encryption: Flag = setting(
        True, "HISTORY_ENCRYPTION",
        "off: payloads go to Temporal in plain text (keys, if loaded, still decrypt older histories). The only way to run a worker without a key",
    )  # fmt: skip


class CodecSettings(Group):
    title: ClassVar[str] = "codec server"
    codec_auth_token: OptionalText = setting(None, "CODEC_AUTH_TOKEN", "read by `codec-server`: the token callers must present (at least 24 characters; `secrets.token_urlsafe(32)`)", secret=True)
    codec_auth_token_file: OptionalText = setting(None, "CODEC_AUTH_TOKEN_FILE", "a file (mode 0600) holding that token on its first line")
    codec_cors_origins: CommaList = setting(
        (), "CODEC_CORS_ORIGINS", "comma-separated Temporal UI origins a browser may call `codec-server` from (`--origin` overrides)",
        shown_default="`http://127.0.0.1:8233,http://localhost:8233`",
    )  # fmt: skip


class ProcessSettings(Group):
    title: ClassVar[str] = "process"
    event_loop: Literal["uvloop", "asyncio"] = setting("uvloop", "EVENT_LOOP", "the event loop of the worker, `dev` and `bench` (`worker/event_loop.py`); `asyncio` to compare or to use asyncio's debug mode")
    test_crash_after: Annotated[Literal["received", "sign", "submit", "confirm", "publish"] | None, BeforeValidator(none_if_blank)] = setting(
        None, "HFT_TEST_CRASH_AFTER",
        "fault injection for the durability tests (tests/test_durability.py): `received` makes the worker SIGKILL itself when its bridge has taken a plan "
        "(before the start), `sign` after the record and before the send (in the bridge's send ahead or in `execute`), `submit` right after the send, "
        "`confirm` at the start of confirm, `publish` right after the result is published (before Temporal hears of it). Never set it outside those tests",
    )  # fmt: skip


#: Every group of the executor's environment, in the docs' order (the policy's is `settings.policy.PolicySettings`).
#: `worker/config.py` `ExecutorConfig` is made of the worker's groups among them.
GROUPS: tuple[type[Group], ...] = (
    WorkerSettings, RpcSettings, JitoSettings, RaceSettings, EndpointHealthSettings, FeeSettings, ConfirmationSettings, TpuSettings, NatsSettings, NatsAuthSettings,
    MetricsSettings, TemporalSettings, HistoryKeySettings, HistorySettings, CodecSettings, ProcessSettings,
)  # fmt: skip
