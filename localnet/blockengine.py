"""Jito block engine JSON-RPC (sources: jito-labs/jito-docs lowlatencytxnsend.md, jito-labs/mev-protos json_rpc/http.md).

Bundles of 1-5 transactions run in order, all or nothing, in one slot; a bundle must
write-lock a tip account and pay at least 1000 lamports to tip accounts. A dropped
bundle is silent by default: it stays Pending until its blockhash expires; with the auction's
`prompt_failures` (localnet.auction) it reads Failed once the slot it was sent in is over. A bundle
that lost its tip auction reads Failed from the auction on.
"""
from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass

import base58
from aiohttp import web
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from venue.jito import MAX_BUNDLE_TRANSACTIONS, STATIC_TIP_ACCOUNTS

from .faults import Verdict
from .intake import IntakeRefused, decode_transaction
from .jsonrpc import INVALID_PARAMS, RESPONSE_HEADERS, HttpStatus, JsonRpcApp, RpcError, param
from .ledger import Commitment, writable_keys
from .reads import BLOCK_ENGINE_READ_METHODS, read_fault_gate
from .regions import Region
from .view import ClusterView

# The local engine names the 8 mainnet tip accounts, the list the executor falls back on.
TIP_ACCOUNTS = list(STATIC_TIP_ACCOUNTS)
TIP_PUBKEYS = [Pubkey.from_string(a) for a in TIP_ACCOUNTS]
MIN_TIP_LAMPORTS = 1000
MAX_STATUS_QUERY = 5
INFLIGHT_WINDOW_S = 300  # getInflightBundleStatuses looks back 5 minutes
RATE_LIMITED_BODY = {"jsonrpc": "2.0", "error": {"code": -32097, "message": "Rate limit exceeded. Limit: 1 per second for txn requests"}, "id": None}
TXN_METHODS = {"sendBundle", "sendTransaction"}
# A region whose view of the chain trails the tip has not seen the bundle's blockhash: its simulation
# fails as a validator's does (agave TransactionError::BlockhashNotFound, "Blockhash not found").
LAGGING_BLOCKHASH_MESSAGE = "bundle simulation failed: Blockhash not found"


def rate_limited_body(per_second: float) -> dict:
    """Jito's 429 body, naming the limit that was hit."""
    return {"jsonrpc": "2.0", "error": {"code": -32097, "message": f"Rate limit exceeded. Limit: {per_second:g} per second for txn requests"}, "id": None}


@dataclass
class AcceptedBundle:
    bundle_id: str
    signatures: list[str]
    blockhash: object
    accepted_at: float
    dropped: bool
    slot: int = 0  # the slot being filled when the engine accepted it


class RateLimiter:
    """Jito's default: N requests per second per IP (1 by default on mainnet); off when None."""

    def __init__(self, per_second: float | None) -> None:
        self.per_second = per_second
        self.recent: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, ip: str) -> bool:
        if not self.per_second:
            return True
        now = time.monotonic()
        window = self.recent[ip]
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.per_second:
            return False
        window.append(now)
        return True


def build_block_engine(cluster: ClusterView, requests_per_second: float | None = None, region: Region | None = None) -> JsonRpcApp:
    """The single block engine, or (with `region`) one region's: its own txn rate limit per IP, drops and lag."""
    limiter = RateLimiter(requests_per_second)
    region_limiter = RateLimiter(None)
    admit_reads = read_fault_gate("block-engine", cluster.faults, cluster.intake.counters, BLOCK_ENGINE_READ_METHODS, RATE_LIMITED_BODY)

    async def admit(request: web.Request, methods: list[str]) -> None:
        """The bundle channel's rate limits (configured and injected) and delay apply to every request,
        as the engine's gateway does; status reads then also meet the reads channel."""
        if region is not None and TXN_METHODS.intersection(methods):
            region_limiter.per_second = region.settings.rate_limit
            if not region_limiter.allow(request.remote or ""):
                region.counters["rate_limited"] += 1
                raise HttpStatus(429, rate_limited_body(region.settings.rate_limit))
        if cluster.intake.rate_limited("bundle") or not limiter.allow(request.remote or ""):
            raise HttpStatus(429, RATE_LIMITED_BODY)
        delay = cluster.faults.bundle.delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        await admit_reads(request, methods)

    app = JsonRpcApp("block-engine", admit)
    ledger = cluster.ledger
    accepted: OrderedDict[str, AcceptedBundle] = OrderedDict()

    def decode_all(encoded: list, encoding: str) -> list[VersionedTransaction]:
        transactions = []
        for text in encoded:
            try:
                raw = base64.b64decode(text, validate=True) if encoding == "base64" else base58.b58decode(text)
                transactions.append(decode_transaction(raw))
            except IntakeRefused as refused:
                raise RpcError(INVALID_PARAMS, f"transaction could not be decoded: {refused}") from None
            except Exception:
                raise RpcError(INVALID_PARAMS, f"transaction could not be decoded: invalid {encoding}") from None
        return transactions

    def check_bundle(transactions: list[VersionedTransaction]) -> None:
        if not 1 <= len(transactions) <= MAX_BUNDLE_TRANSACTIONS:
            raise RpcError(INVALID_PARAMS, f"bundle must contain between 1 and {MAX_BUNDLE_TRANSACTIONS} transactions, got {len(transactions)}")
        signatures = [tx.signatures[0] for tx in transactions]
        if len(set(signatures)) != len(signatures):
            raise RpcError(INVALID_PARAMS, "bundle contains duplicate transactions")
        for tx in transactions:
            if not all(tx.verify_with_results()):
                raise RpcError(INVALID_PARAMS, f"transaction {tx.signatures[0]} signature verification failed")
        loader = ledger._lookup_loader()
        locked = {key for tx in transactions for key in writable_keys(tx, loader)}
        if not locked.intersection(TIP_PUBKEYS):
            raise RpcError(INVALID_PARAMS, "Bundles must write lock at least one tip account")
        # Dry run against the current state to read the tip; a bundle that would fail is
        # accepted and fails silently later, as the real engine's simulation does.
        trial = ledger.try_bundle(transactions, commit=False, tip_accounts=TIP_PUBKEYS)
        if trial.landed and trial.tip_lamports < MIN_TIP_LAMPORTS:
            raise RpcError(INVALID_PARAMS, f"bundle tip of {trial.tip_lamports} lamports is below the minimum of {MIN_TIP_LAMPORTS}")

    def region_verdict(transactions: list[VersionedTransaction], verdict: Verdict) -> Verdict:
        """A region refuses what its lagging view cannot simulate, then drops its share of what it accepts."""
        if region is None:
            return verdict
        if region.settings.lag_slots:
            seen_through = ledger.processed_slot() - region.settings.lag_slots
            hashes = {tx.message.recent_blockhash for tx in transactions}
            if any(slot > seen_through for slot, blockhash in ledger.blockhash_by_slot.items() if blockhash in hashes):
                region.counters["refused_lagging"] += 1
                raise RpcError(INVALID_PARAMS, LAGGING_BLOCKHASH_MESSAGE)
        if verdict is Verdict.accept and region.drops():
            cluster.intake.counters["bundle.drop"] += 1
            return Verdict.drop
        return verdict

    def accept(transactions: list[VersionedTransaction], verdict: Verdict) -> str:
        verdict = region_verdict(transactions, verdict)
        try:
            bundle_id = cluster.intake.receive_bundle(transactions, verdict, region=region.name if region else None)
        except IntakeRefused as refused:
            raise RpcError(INVALID_PARAMS, str(refused)) from None
        accepted[bundle_id] = AcceptedBundle(
            bundle_id=bundle_id,
            signatures=[str(tx.signatures[0]) for tx in transactions],
            blockhash=transactions[0].message.recent_blockhash,
            accepted_at=time.monotonic(),
            dropped=verdict is Verdict.drop,
            slot=ledger.slot,
        )
        if region is not None:
            region.counters["dropped" if verdict is Verdict.drop else "accepted"] += 1
            if verdict is not Verdict.drop:
                region.forward(bundle_id)
        while accepted and time.monotonic() - next(iter(accepted.values())).accepted_at > INFLIGHT_WINDOW_S * 2:
            accepted.popitem(last=False)
        return bundle_id

    @app.method("sendBundle")
    async def send_bundle(params, request):
        verdict = cluster.intake.verdict("bundle")
        encoded = param(params, 0)
        if not isinstance(encoded, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a list of transactions")
        encoding = (param(params, 1, {}) or {}).get("encoding", "base58")
        transactions = decode_all(encoded, encoding)
        check_bundle(transactions)
        return accept(transactions, verdict)

    @app.method("sendTransaction")
    async def send_transaction(params, request):
        verdict = cluster.intake.verdict("bundle")
        encoding = (param(params, 1, {}) or {}).get("encoding", "base58")
        transactions = decode_all([param(params, 0)], encoding)
        if request.query.get("bundleOnly", "").lower() == "true":
            check_bundle(transactions)
            bundle_id = accept(transactions, verdict)
            request[RESPONSE_HEADERS] = {"x-bundle-id": bundle_id}
            return str(transactions[0].signatures[0])
        verdict = region_verdict(transactions, verdict)
        if region is not None and verdict is not Verdict.reject:
            region.counters["dropped" if verdict is Verdict.drop else "accepted"] += 1
        try:
            return str(cluster.intake.receive(transactions[0], "bundle", verdict, region=region.name if region else None))
        except IntakeRefused as refused:
            raise RpcError(INVALID_PARAMS, str(refused)) from None

    @app.method("getTipAccounts")
    async def get_tip_accounts(params, request):
        return list(TIP_ACCOUNTS)

    def bundle_ids(params) -> list[str]:
        ids = param(params, 0)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a list of bundle ids")
        if len(ids) > MAX_STATUS_QUERY:
            raise RpcError(INVALID_PARAMS, f"too many bundle ids: at most {MAX_STATUS_QUERY}")
        return ids

    @app.method("getBundleStatuses")
    async def get_bundle_statuses(params, request):
        value = []
        for bundle_id in bundle_ids(params):
            outcome = ledger.bundles.get(bundle_id)
            if outcome is None or not outcome.landed:
                value.append(None)
                continue
            value.append(
                {
                    "bundle_id": bundle_id,
                    "transactions": outcome.signatures,
                    "slot": outcome.slot,
                    "confirmation_status": ledger.commitment_of(outcome.slot).value,
                    "err": {"Ok": None},
                }
            )
        return {"context": {"slot": ledger.slot_at(Commitment.processed)}, "value": value}

    @app.method("getInflightBundleStatuses")
    async def get_inflight_bundle_statuses(params, request):
        """Jito's meanings (jito-labs/jito-docs lowlatencytxnsend.md, getInflightBundleStatuses):
        `Invalid`: "Bundle ID not in our system (5 minute look back)"; `Pending`: "Not failed, not
        landed, not invalid"; `Failed`: "All regions that have received the bundle have marked it as
        failed and it hasn't been forwarded"; `Landed`: "Landed on-chain (determined using RPC or
        bundles_landed table)". Here: a bundle this engine never accepted, or accepted over 5 minutes
        ago, is Invalid; one that executed is Landed (with its slot) or Failed (it failed in the block,
        lost its auction, or its blockhash expired while held for a Jito leader); one this engine
        dropped is Failed once its blockhash expired, or, with `prompt_failures`, once the slot it
        was sent in is over (the engine marks it failed at that slot's auctions); else Pending."""
        value = []
        prompt = cluster.auction.config.prompt_failures
        for bundle_id in bundle_ids(params):
            bundle = accepted.get(bundle_id)
            outcome = ledger.bundles.get(bundle_id)
            if bundle is None or time.monotonic() - bundle.accepted_at > INFLIGHT_WINDOW_S:
                status, slot = "Invalid", None
            elif outcome is not None:
                status, slot = ("Landed", outcome.slot) if outcome.landed else ("Failed", None)
            elif bundle.dropped and (not ledger.blockhash_valid(bundle.blockhash) or (prompt and ledger.processed_slot() >= bundle.slot)):
                status, slot = "Failed", None
            else:
                status, slot = "Pending", None
            value.append({"bundle_id": bundle_id, "status": status, "landed_slot": slot})
        return {"context": {"slot": ledger.slot_at(Commitment.processed)}, "value": value}

    return app
