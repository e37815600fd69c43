"""The executor's async client for the Jito block engine's JSON-RPC (sendBundle and friends), and a
reader of Jito's tip floor (`tip_floor()`, `TipStream`: plain GET and websocket, not JSON-RPC).

Sources: jito-labs/jito-docs lowlatencytxnsend.md, jito-labs/mev-protos json_rpc/http.md,
jito-foundation/jito-solana bundle/src/lib.rs (`derive_bundle_id`); docs/architecture.md section 8.

One persistent aiohttp session (keep-alive, TCP_NODELAY) per client, a per-request
timeout, and no retries: whoever calls decides whether to resend, knowing that

* `JitoRateLimited` (HTTP 429): the request was refused before it was looked at;
* `JitoError`: the engine answered with an error (or an answer we cannot trust);
* `JitoUnavailable`: timeout or broken connection; the request may or may not have been
  delivered, so look the bundle up by its id (computable beforehand with `bundle_id`)
  before deciding anything. Resending identical bytes is safe (same signatures, same
  bundle id); re-signing is not.

Transaction bytes are never logged; at DEBUG only bundle ids and timings are.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from venue import LAMPORTS_PER_SOL, PACKET_DATA_SIZE
from venue.urls import redacted

log = logging.getLogger(__name__)

# The 8 mainnet tip accounts (getTipAccounts on mainnet; docs/architecture.md section 8): the fallback.
STATIC_TIP_ACCOUNTS: tuple[str, ...] = (
    "96gYZGLnJYVFmbjzopPSU6QiEV5fGqZNyN9nmNhvrZU5",
    "HFqU5x63VTqvQss8hp11i4wVV8bD44PvwucfZ2bU7gRe",
    "Cw8CFyM9FkoMi7K7Crf6HNQqf4uEMzpKw6QNghXLvLkY",
    "ADaUMid9yfUytqMBgopwjb2DTLSokTSzL1zt6iGPaS49",
    "DfXygSm4jCyNCybVYYK6DwvWqjKee8pbDmJGcLWNDXjh",
    "ADuUkR4vqLUMWXxW9gh6D6L8pMSawimctcNZ5pGwDcEt",
    "DttWaMuVvTiduZRnguLF7jNxTgiMBZ1hyAumKUiL2KRL",
    "3AVi9Tg9Uo68tJfuvoKvqKNWKkC5wPdSSdeBnizKZ6jT",
)
MAX_BUNDLE_TRANSACTIONS = 5  # jito-solana bundle/src/lib.rs MAX_PACKETS_PER_BUNDLE
MAX_STATUS_IDS = 5  # getBundleStatuses / getInflightBundleStatuses take at most 5 ids
RATE_LIMITED_CODE = -32097  # Jito's JSON-RPC code in its 429 body

PATH_BUNDLES = "/api/v1/bundles"
PATH_TRANSACTIONS = "/api/v1/transactions"
PATH_TIP_ACCOUNTS = "/api/v1/getTipAccounts"
PATH_BUNDLE_STATUSES = "/api/v1/getBundleStatuses"
PATH_INFLIGHT_STATUSES = "/api/v1/getInflightBundleStatuses"
PATH_TIP_FLOOR = "/api/v1/bundles/tip_floor"  # a plain GET, not JSON-RPC (jito-docs lowlatencytxnsend.md, "Get Tip Information")
PATH_TIP_STREAM = "/api/v1/bundles/tip_stream"  # a websocket pushing the same floor (same source)
TIP_FLOOR_FIELDS = {  # JSON name -> TipFloor field; every value in SOL
    "landed_tips_25th_percentile": "p25",
    "landed_tips_50th_percentile": "p50",
    "landed_tips_75th_percentile": "p75",
    "landed_tips_95th_percentile": "p95",
    "landed_tips_99th_percentile": "p99",
    "ema_landed_tips_50th_percentile": "ema50",
}
MAX_TIP_FLOOR_SOL = 1_000.0  # a percentile above this is not a tip anyone pays: refuse the answer rather than price from it

_ZERO_SIGNATURE = bytes(64)


class JitoError(Exception):
    """The block engine answered with a JSON-RPC error, or with an answer that cannot be trusted."""

    def __init__(self, message: str, code: int | None = None, *, http_status: int | None = None, data: Any = None) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.data = data


class JitoRateLimited(JitoError):
    """HTTP 429 (or JSON-RPC code -32097): refused before being processed; nothing was accepted."""

    def __init__(self, message: str, code: int | None = RATE_LIMITED_CODE, *, retry_after_s: float | None = None, http_status: int | None = 429) -> None:
        super().__init__(message, code, http_status=http_status)
        self.retry_after_s = retry_after_s


class JitoUnavailable(JitoError):
    """Timeout, connection failure or a gateway error: nothing is known about delivery."""


class JitoAnswerUnclear(JitoUnavailable):
    """An answer that is not a definite refusal and not a clear acceptance: a 200 that is not JSON-RPC,
    an id that is not the request's, a bundle id or signature that is not the one sent, an HTTP error
    without a JSON-RPC error. The bundle may be in flight: its fate is unknown until the chain says."""


class JitoMalformedTipFloor(JitoError):
    """The tip floor answered, but not as Jito's one-object list of non-negative SOL values with a `time`."""


class JitoInvalidRequest(JitoError, ValueError):
    """Refused client-side, nothing sent: no engine would accept it (6 transactions, unsigned, oversized, bad id)."""


@dataclass(frozen=True)
class BundleStatus:
    """getBundleStatuses entry for a landed bundle. `err` is None for success ({"Ok": null})."""

    bundle_id: str
    slot: int
    confirmation_status: str
    err: object | None
    transactions: list[str]


@dataclass(frozen=True)
class InflightStatus:
    """getInflightBundleStatuses entry: status is Invalid | Pending | Failed | Landed."""

    bundle_id: str
    status: str
    landed_slot: int | None


@dataclass(frozen=True)
class TipFloor:
    """Jito's tip floor: percentiles of the tips of recently landed bundles, converted from SOL to lamports.

    `time` is Jito's own timestamp of the floor (RFC 3339, as sent); `fetched_at` is `time.monotonic()`
    when this client read it, the clock a caller should judge staleness by (the engine's `time` can lag
    or skew, and on the local cluster it is when the floor last *changed*).
    """

    time: str
    p25: int
    p50: int
    p75: int
    p95: int
    p99: int
    ema50: int
    fetched_at: float

    def percentile(self, name: str) -> int:
        """The value for a JITO_TIP_PERCENTILE name: "25", "50", "75", "95", "99" or "ema50"."""
        field = name if name == "ema50" else f"p{name}"
        if field not in {"p25", "p50", "p75", "p95", "p99", "ema50"}:
            raise ValueError(f"{name!r}: expected one of 25, 50, 75, 95, 99, ema50")
        return getattr(self, field)


def _sol_to_lamports(value: float) -> int:
    """SOL (float) -> lamports, rounded to the nearest lamport: 1e-05 SOL reads 10,000, not 9,999."""
    return round(value * LAMPORTS_PER_SOL)


def parse_tip_floor(answer: object, fetched_at: float) -> TipFloor:
    """Jito's tip-floor answer (a JSON list holding one object, values in SOL) as a TipFloor in lamports."""
    if isinstance(answer, list):
        if len(answer) != 1:
            raise JitoMalformedTipFloor(f"tip_floor: expected a list of one floor, got {len(answer)} entries: {str(answer)[:200]}")
        answer = answer[0]
    if not isinstance(answer, dict):
        raise JitoMalformedTipFloor(f"tip_floor: expected a floor object, got {str(answer)[:200]}")
    stamp = answer.get("time")
    if not isinstance(stamp, str) or not stamp:
        raise JitoMalformedTipFloor(f"tip_floor: no `time` in {str(answer)[:200]}")
    values: dict[str, int] = {}
    for name, field in TIP_FLOOR_FIELDS.items():
        value = answer.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= MAX_TIP_FLOOR_SOL:
            raise JitoMalformedTipFloor(f"tip_floor: {name}={value!r} is not an amount of SOL in [0, {MAX_TIP_FLOOR_SOL:g}]")
        values[field] = _sol_to_lamports(float(value))
    return TipFloor(time=stamp, fetched_at=fetched_at, **values)


def _raw(tx: bytes | bytearray | memoryview | VersionedTransaction) -> bytes:
    if isinstance(tx, VersionedTransaction):
        return bytes(tx)
    if isinstance(tx, (bytes, bytearray, memoryview)):
        return bytes(tx)
    raise TypeError(f"expected serialized transaction bytes or a VersionedTransaction, got {type(tx).__name__}")


def _first_signature(raw: bytes, index: int = 0) -> str:
    """The first signature (base58) of a serialized transaction, refusing what no engine would take."""
    if not raw:
        raise JitoInvalidRequest(f"transaction {index} is empty")
    if len(raw) > PACKET_DATA_SIZE:
        raise JitoInvalidRequest(f"transaction {index} is {len(raw)} bytes, over the {PACKET_DATA_SIZE}-byte packet limit")
    try:
        tx = VersionedTransaction.from_bytes(raw)
    except Exception as error:  # solders raises its own error types
        raise JitoInvalidRequest(f"transaction {index} could not be deserialized: {error}") from None
    if not tx.signatures:
        raise JitoInvalidRequest(f"transaction {index} has no signatures")
    first = tx.signatures[0]
    if bytes(first) == _ZERO_SIGNATURE:
        raise JitoInvalidRequest(f"transaction {index} is not signed (its first signature is all zeros)")
    return str(first)


def _bundle_signatures(transactions: Sequence[bytes | VersionedTransaction]) -> list[str]:
    if isinstance(transactions, (bytes, bytearray, memoryview, VersionedTransaction)):
        raise TypeError("expected a sequence of transactions, not a single transaction")
    return [str(tx.signatures[0]) if isinstance(tx, VersionedTransaction) else _first_signature(_raw(tx), i) for i, tx in enumerate(transactions)]


def _derive(signatures: Sequence[str]) -> str:
    return hashlib.sha256(",".join(signatures).encode()).hexdigest()


def bundle_id(transactions: Sequence[bytes | VersionedTransaction]) -> str:
    """Jito's `derive_bundle_id`: lowercase hex SHA-256 of the first signatures (base58) joined by ','."""
    return _derive(_bundle_signatures(transactions))


def _valid_bundle_id(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth a parser here
    return max(0.0, seconds)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class JitoClient:
    """Async Jito block-engine client. Use as `async with JitoClient(url) as jito:` or call `close()`.

    `base_url` is the engine's root, e.g. "https://ny.mainnet.block-engine.jito.wtf" or
    "http://127.0.0.1:PORT"; a trailing "/api/v1" is accepted too. `uuid` goes in the
    `x-jito-auth` header. A `session` passed in is used as is and never closed here.
    `tip_floor_url`: where `tip_floor()` and `TipStream` read the tip floor (default `base_url`; on
    mainnet "https://bundles.jito.wtf").
    """

    def __init__(
        self,
        base_url: str,
        *,
        uuid: str | None = None,
        timeout_s: float = 2.0,
        session: aiohttp.ClientSession | None = None,
        tip_cache_s: float = 300.0,
        tip_retry_s: float = 30.0,
        keepalive_s: float = 15.0,
        max_connections: int = 16,
        tip_floor_url: str | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        root = base_url.rstrip("/")
        self.base_url = root.removesuffix("/api/v1")
        # Mainnet serves the tip floor from https://bundles.jito.wtf, not from the block engines (jito-docs
        # lowlatencytxnsend.md, "Get Tip Information"); the local cluster serves it on its block engine.
        self.tip_floor_url = (tip_floor_url or self.base_url).rstrip("/").removesuffix("/api/v1")
        self.timeout_s = timeout_s
        self.tip_cache_s = tip_cache_s
        self.tip_retry_s = tip_retry_s  # after a failed getTipAccounts, use the fallback this long before asking again
        self._keepalive_s = keepalive_s
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if uuid:
            self._headers["x-jito-auth"] = uuid
        # The UUID goes only to the block engine itself, never to another floor host.
        self._floor_headers = self._headers if self.tip_floor_url == self.base_url else {"Accept": "application/json"}
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._ids = itertools.count(1)
        self._tips: list[str] | None = None
        self._tips_until = 0.0
        self._tips_lock: asyncio.Lock | None = None
        self._fallback_logged = False
        self._unknown_tips_logged = False
        # Connection accounting (owned session only): proves keep-alive is doing its job.
        self.stats = {"requests": 0, "connections_created": 0, "connections_reused": 0}

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> JitoClient:
        self._get_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("JitoClient is closed")
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(self._count("connections_created"))
            trace.on_connection_reuseconn.append(self._count("connections_reused"))
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_s,
                ttl_dns_cache=300,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=[trace], timeout=self._timeout)
        return self._session

    def _count(self, key: str):
        async def on_signal(session, context, params) -> None:
            self.stats[key] += 1

        return on_signal

    # --- transport ------------------------------------------------------------------

    async def _call(self, path: str, method: str, params: list, *, query: dict[str, str] | None = None) -> tuple[Any, Mapping[str, str]]:
        """POST one JSON-RPC call; returns (result, response headers) or raises a JitoError."""
        session = self._get_session()
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, separators=(",", ":")).encode()
        url = self.base_url + path
        self.stats["requests"] += 1
        try:
            async with session.post(url, data=body, headers=self._headers, params=query, timeout=self._timeout) as response:
                status = response.status
                headers = response.headers.copy()  # case-insensitive
                payload = await response.read()
        except TimeoutError:
            raise JitoUnavailable(f"{method}: no answer from the block engine within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise JitoUnavailable(f"{method}: {type(error).__name__}: {redacted(str(error), self.base_url)}") from None
        return self._parse(method, request_id, status, headers, payload), headers

    def _parse(self, method: str, request_id: int, status: int, headers: Mapping[str, str], payload: bytes) -> Any:
        try:
            answer = json.loads(payload) if payload else None
        except (ValueError, UnicodeDecodeError):
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) and _is_int(error.get("code")) else None
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        if status == 429 or code == RATE_LIMITED_CODE:
            retry_after = _parse_retry_after(headers.get("Retry-After"))
            raise JitoRateLimited(f"{method}: {message or 'rate limited'}", code if code is not None else RATE_LIMITED_CODE, retry_after_s=retry_after, http_status=status)
        if status >= 500:
            # A gateway's 502/503/504 says nothing certain about whether the engine got it.
            raise JitoUnavailable(f"{method}: HTTP {status}: {message or payload[:200].decode(errors='replace')}", code, http_status=status)
        if isinstance(error, dict):  # the engine's own JSON-RPC error: the one definite refusal
            raise JitoError(f"{method}: {message or 'error without a message'}", code, http_status=status, data=error.get("data"))
        # Everything else that is not a clear acceptance is unclear: the bundle may be in flight (issue 20).
        if status != 200:
            raise JitoAnswerUnclear(f"{method}: HTTP {status}: {payload[:200].decode(errors='replace')}", http_status=status)
        if not isinstance(answer, dict) or "result" not in answer:
            raise JitoAnswerUnclear(f"{method}: not a JSON-RPC answer: {payload[:200].decode(errors='replace')}", http_status=status)
        if answer.get("id") != request_id:
            raise JitoAnswerUnclear(f"{method}: answer id {answer.get('id')!r} does not match request id {request_id}", http_status=status)
        return answer["result"]

    # --- sending --------------------------------------------------------------------

    async def send_bundle(self, transactions: Sequence[bytes | VersionedTransaction]) -> str:
        """sendBundle (base64) of 1-5 signed transactions; returns the bundle id, checked against `bundle_id()`.

        Acceptance is not landing: poll `inflight_statuses` / `bundle_statuses`.
        """
        if isinstance(transactions, (bytes, bytearray, memoryview, VersionedTransaction)):
            raise TypeError("send_bundle takes a sequence of transactions, not a single transaction")
        if not 1 <= len(transactions) <= MAX_BUNDLE_TRANSACTIONS:
            raise JitoInvalidRequest(f"a bundle holds 1 to {MAX_BUNDLE_TRANSACTIONS} transactions, got {len(transactions)}")
        raws = [_raw(tx) for tx in transactions]
        signatures = [_first_signature(raw, i) for i, raw in enumerate(raws)]
        if len(set(signatures)) != len(signatures):
            raise JitoInvalidRequest("a bundle must not contain the same transaction twice")
        expected = _derive(signatures)
        encoded = [base64.b64encode(raw).decode("ascii") for raw in raws]
        started = time.perf_counter()
        result, _ = await self._call(PATH_BUNDLES, "sendBundle", [encoded, {"encoding": "base64"}])
        if result != expected:
            raise JitoAnswerUnclear(f"sendBundle: the engine answered bundle id {result!r}, expected {expected}; the bundle may be in flight under {expected}")
        log.debug("sendBundle %s accepted (%d txs) in %.2f ms", expected, len(raws), (time.perf_counter() - started) * 1000)
        return expected

    async def send_transaction(self, tx: bytes | VersionedTransaction, *, bundle_only: bool = False) -> tuple[str, str | None]:
        """sendTransaction at /api/v1/transactions; returns (signature, bundle id from `x-bundle-id` or None).

        With `bundle_only` the engine sends it only as a one-transaction bundle (it must tip).
        """
        raw = _raw(tx)
        signature = _first_signature(raw)
        query = {"bundleOnly": "true"} if bundle_only else None
        result, headers = await self._call(PATH_TRANSACTIONS, "sendTransaction", [base64.b64encode(raw).decode("ascii"), {"encoding": "base64"}], query=query)
        if result != signature:
            raise JitoAnswerUnclear(f"sendTransaction: the engine answered signature {result!r}, expected {signature}")
        header_id = headers.get("x-bundle-id")
        if header_id is not None:
            expected = _derive([signature])
            if header_id != expected:
                raise JitoAnswerUnclear(f"sendTransaction: x-bundle-id {header_id!r} is not the bundle id {expected}; the bundle may be in flight under {expected}")
        log.debug("sendTransaction %s accepted (bundle %s)", signature, header_id)
        return signature, header_id

    # --- tip accounts ---------------------------------------------------------------

    async def tip_accounts(self) -> list[str]:
        """getTipAccounts, cached `tip_cache_s`; on any failure the 8 mainnet accounts (logged once)."""
        now = time.monotonic()
        if self._tips is not None and now < self._tips_until:
            return list(self._tips)
        if self._tips_lock is None:
            self._tips_lock = asyncio.Lock()
        async with self._tips_lock:
            now = time.monotonic()
            if self._tips is not None and now < self._tips_until:
                return list(self._tips)
            try:
                result, _ = await self._call(PATH_TIP_ACCOUNTS, "getTipAccounts", [])
                accounts = self._check_tip_accounts(result)
            except JitoError as error:
                if not self._fallback_logged:
                    log.warning("getTipAccounts failed (%s); using the %d static mainnet tip accounts", error, len(STATIC_TIP_ACCOUNTS))
                    self._fallback_logged = True
                else:
                    log.debug("getTipAccounts failed again (%s); static tip accounts", error)
                self._tips = list(STATIC_TIP_ACCOUNTS)
                self._tips_until = time.monotonic() + min(self.tip_retry_s, self.tip_cache_s)
                return list(self._tips)
            self._tips = accounts
            self._tips_until = time.monotonic() + self.tip_cache_s
            return list(accounts)

    def _check_tip_accounts(self, result: object) -> list[str]:
        if not isinstance(result, list) or not result:
            raise JitoError(f"getTipAccounts: expected a non-empty list of accounts, got {str(result)[:200]}")
        for account in result:
            try:
                Pubkey.from_string(account)
            except Exception:
                raise JitoError(f"getTipAccounts: {str(account)[:64]!r} is not a public key") from None
        unknown = set(result) - set(STATIC_TIP_ACCOUNTS)
        if unknown and not self._unknown_tips_logged:
            log.warning("getTipAccounts lists %d account(s) not among the known mainnet tip accounts: %s", len(unknown), sorted(unknown))
            self._unknown_tips_logged = True
        return list(result)

    async def random_tip_account(self) -> str:
        """One tip account at random (spreads write locks, as Jito recommends)."""
        return random.choice(await self.tip_accounts())

    # --- tip floor ------------------------------------------------------------------

    async def tip_floor(self) -> TipFloor:
        """GET /api/v1/bundles/tip_floor: the percentiles of recently landed tips, in lamports; never cached here.

        Raises `JitoRateLimited` (429), `JitoUnavailable` (timeout, broken connection, 5xx) or
        `JitoMalformedTipFloor` (any other status, not JSON, not Jito's shape). Source: jito-docs
        lowlatencytxnsend.md, "Get Tip Information" (`https://bundles.jito.wtf/api/v1/bundles/tip_floor`).
        """
        session = self._get_session()
        self.stats["requests"] += 1
        try:
            async with session.get(self.tip_floor_url + PATH_TIP_FLOOR, headers=self._floor_headers, timeout=self._timeout) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                payload = await response.read()
        except TimeoutError:
            raise JitoUnavailable(f"tip_floor: no answer from the block engine within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise JitoUnavailable(f"tip_floor: {type(error).__name__}: {redacted(str(error), self.tip_floor_url)}") from None
        fetched_at = time.monotonic()
        if status == 429:
            raise JitoRateLimited("tip_floor: rate limited", retry_after_s=_parse_retry_after(retry_after), http_status=status)
        if status >= 500:
            raise JitoUnavailable(f"tip_floor: HTTP {status}: {payload[:200].decode(errors='replace')}", http_status=status)
        if status != 200:
            raise JitoMalformedTipFloor(f"tip_floor: HTTP {status}: {payload[:200].decode(errors='replace')}", http_status=status)
        try:
            answer = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise JitoMalformedTipFloor(f"tip_floor: not JSON: {payload[:200].decode(errors='replace')}", http_status=status) from None
        return parse_tip_floor(answer, fetched_at)

    # --- statuses -------------------------------------------------------------------

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            raise TypeError("expected a sequence of bundle ids, not a single string")
        ids = list(ids)
        for value in ids:
            if not _valid_bundle_id(value):
                raise JitoInvalidRequest(f"{str(value)[:80]!r} is not a bundle id (64 hex characters)")
        return ids

    async def bundle_statuses(self, ids: Sequence[str]) -> list[BundleStatus | None]:
        """getBundleStatuses, in the order asked; None for a bundle not found or not landed."""
        ids = self._check_ids(ids)
        statuses: list[BundleStatus | None] = []
        for start in range(0, len(ids), MAX_STATUS_IDS):
            chunk = ids[start : start + MAX_STATUS_IDS]
            result, _ = await self._call(PATH_BUNDLE_STATUSES, "getBundleStatuses", [chunk])
            value = self._value(result, "getBundleStatuses", len(chunk))
            statuses.extend(self._bundle_status(wanted, entry) for wanted, entry in zip(chunk, value))
        return statuses

    async def inflight_statuses(self, ids: Sequence[str]) -> list[InflightStatus]:
        """getInflightBundleStatuses (last 5 minutes), in the order asked."""
        ids = self._check_ids(ids)
        statuses: list[InflightStatus] = []
        for start in range(0, len(ids), MAX_STATUS_IDS):
            chunk = ids[start : start + MAX_STATUS_IDS]
            result, _ = await self._call(PATH_INFLIGHT_STATUSES, "getInflightBundleStatuses", [chunk])
            value = self._value(result, "getInflightBundleStatuses", len(chunk))
            statuses.extend(self._inflight_status(wanted, entry) for wanted, entry in zip(chunk, value))
        return statuses

    @staticmethod
    def _value(result: object, method: str, count: int) -> list:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, list) or len(value) != count:
            raise JitoError(f"{method}: expected a value list of {count} entries, got {str(result)[:200]}")
        return value

    @staticmethod
    def _bundle_status(wanted: str, entry: object) -> BundleStatus | None:
        if entry is None:
            return None
        if not (
            isinstance(entry, dict)
            and entry.get("bundle_id") == wanted
            and _is_int(entry.get("slot"))
            and isinstance(entry.get("confirmation_status"), str)
            and isinstance(entry.get("transactions"), list)
        ):
            raise JitoError(f"getBundleStatuses: malformed entry for {wanted}: {str(entry)[:200]}")
        err = entry.get("err")
        if err == {"Ok": None}:
            err = None
        return BundleStatus(
            bundle_id=wanted,
            slot=entry["slot"],
            confirmation_status=entry["confirmation_status"],
            err=err,
            transactions=[str(s) for s in entry["transactions"]],
        )

    @staticmethod
    def _inflight_status(wanted: str, entry: object) -> InflightStatus:
        if not (
            isinstance(entry, dict)
            and entry.get("bundle_id") == wanted
            and isinstance(entry.get("status"), str)
            and (entry.get("landed_slot") is None or _is_int(entry.get("landed_slot")))
        ):
            raise JitoError(f"getInflightBundleStatuses: malformed entry for {wanted}: {str(entry)[:200]}")
        return InflightStatus(bundle_id=wanted, status=entry["status"], landed_slot=entry.get("landed_slot"))


class TipStream:
    """The latest tip floor, kept by Jito's tip stream websocket, with the REST floor as a fallback.

    `async with TipStream(jito) as stream:` then read `stream.floor` (never waits: None until a first
    floor arrives). Each pushed message is a list of one floor in SOL, the REST shape (jito-docs
    lowlatencytxnsend.md, "Get Tip Information"; localnet/tipfloor.py). A stream may push only when
    the floor changes, so while the websocket is open (aiohttp pings it every `heartbeat_s` and drops a
    connection that stops answering) the last floor counts as current: `floor.fetched_at` is when the
    connection was last known alive, at most `quiet_s` ago. When the websocket cannot connect or drops,
    the floor is read over REST (`JitoClient.tip_floor`) every `quiet_s` until it reconnects, trying
    again after `reconnect_s` (doubling, at most `quiet_s`). A malformed message is skipped (logged once):
    the previous floor stands, and ages.
    """

    def __init__(self, client: JitoClient, *, quiet_s: float = 5.0, heartbeat_s: float = 5.0, reconnect_s: float = 0.5) -> None:
        self.client = client
        self.quiet_s = quiet_s
        self.heartbeat_s = heartbeat_s
        self.reconnect_s = reconnect_s
        self.url = "ws" + client.tip_floor_url.removeprefix("http") + PATH_TIP_STREAM  # http -> ws, https -> wss
        self._latest: TipFloor | None = None
        self._alive_at = 0.0
        self._task: asyncio.Task | None = None
        self._malformed_logged = False
        self.stats = {"pushed": 0, "polled": 0, "connects": 0, "malformed": 0}
        self.streaming = False

    @property
    def floor(self) -> TipFloor | None:
        """The latest floor, its `fetched_at` moved to when it was last known current; None before any."""
        latest = self._latest
        if latest is None:
            return None
        return latest if self._alive_at <= latest.fetched_at else replace(latest, fetched_at=self._alive_at)

    async def __aenter__(self) -> TipStream:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jito-tip-stream")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.streaming = False

    def _keep(self, floor: TipFloor) -> None:
        self._latest = floor
        self._alive_at = floor.fetched_at

    async def _run(self) -> None:
        backoff = self.reconnect_s
        while True:
            try:
                await self._stream()
                backoff = self.reconnect_s  # it was up: reconnect soon
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.debug("tip stream %s: %s; reading the REST floor", redacted(self.url, self.client.tip_floor_url), type(error).__name__)
            self.streaming = False
            await self._poll()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.quiet_s)

    async def _poll(self) -> None:
        try:
            self._keep(await self.client.tip_floor())
            self.stats["polled"] += 1
        except JitoError as error:
            log.debug("tip floor over REST failed: %s", error)

    async def _stream(self) -> None:
        session = self.client._get_session()
        async with session.ws_connect(self.url, heartbeat=self.heartbeat_s, headers=self.client._floor_headers, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as socket:
            self.stats["connects"] += 1
            self.streaming = True
            while True:
                try:
                    message = await socket.receive(timeout=self.quiet_s)
                except TimeoutError:
                    self._alive_at = time.monotonic()  # quiet, but the heartbeat keeps the connection honest
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    return  # closed or broken: the caller polls REST and reconnects
                try:
                    self._keep(parse_tip_floor(json.loads(message.data), time.monotonic()))
                    self.stats["pushed"] += 1
                except (JitoMalformedTipFloor, ValueError) as error:
                    self.stats["malformed"] += 1
                    if not self._malformed_logged:
                        log.warning("tip stream: skipping a malformed message (%s)", error)
                        self._malformed_logged = True


__all__ = [
    "MAX_BUNDLE_TRANSACTIONS",
    "STATIC_TIP_ACCOUNTS",
    "BundleStatus",
    "InflightStatus",
    "JitoClient",
    "JitoError",
    "JitoInvalidRequest",
    "JitoMalformedTipFloor",
    "JitoRateLimited",
    "JitoUnavailable",
    "TipFloor",
    "TipStream",
    "bundle_id",
    "parse_tip_floor",
]
