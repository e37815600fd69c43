"""The ExecutePlan activities, bound to the worker's shared resources.

Each is small and idempotent: select_wallet returns the same lease for the same plan,
sign returns the plan's first recorded signed transaction, submit resends the same
bytes, publish is deduplicated by plan id. Every log line carries plan id and stage.
"""
from __future__ import annotations

import base64
import logging
import os
import signal
import time
from dataclasses import replace
from typing import Callable

from solana.rpc.async_api import AsyncClient
from solders.message import from_bytes_versioned
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.events import ErrorCode, ExecutionResultEvent
from workflows.stages import (
    BuildRequest,
    BuiltTransaction,
    Confirmation,
    ConfirmRequest,
    Executed,
    ExecuteRequest,
    ReleaseRequest,
    SettleRequest,
    Settlement,
    SignedTransaction,
    SignRequest,
    Submission,
    SubmitRequest,
    WalletLeaseInfo,
    WalletRequest,
)

from .build import TransactionBuilder
from .confirm import SignatureWatcher, follow
from .errors import fail
from .keystore import KeyStore
from .publish import publish_result
from .records import PlanRecords
from .settle import settle
from .submit import Submitter
from .wallets import NoWalletAvailable, WalletPool

log = logging.getLogger("hft.activities")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class ExecutionActivities:
    def __init__(
        self,
        *,
        rpc: AsyncClient,
        wallets: WalletPool,
        keys: KeyStore,
        builder: TransactionBuilder,
        records: PlanRecords,
        submitter: Submitter,
        watcher: SignatureWatcher,
        js,
        commitment: str = "confirmed",
        rebroadcast_s: float = 1.0,
        sol_price_usd: float = 150.0,
        on_result: Callable[[ExecutionResultEvent], None] | None = None,
        crash_after: str | None = None,
        confirmation_timeout_ms: int = 30_000,
        tpu_rebroadcast_s: float = 0.4,
    ) -> None:
        self.rpc = rpc
        self.wallets = wallets
        self.keys = keys
        self.builder = builder
        self.records = records
        self.submitter = submitter
        self.watcher = watcher
        self.js = js
        self.commitment = commitment
        self.rebroadcast_s = rebroadcast_s
        self.sol_price_usd = sol_price_usd
        self.on_result = on_result
        self.crash_after = crash_after
        self.confirmation_timeout_ms = confirmation_timeout_ms
        self.tpu_rebroadcast_s = tpu_rebroadcast_s

    def _crash_point(self, stage: str) -> None:
        """Fault injection for the durability tests (HFT_TEST_CRASH_AFTER): the worker dies here, hard."""
        if self.crash_after == stage:
            log.warning("stage=%s event=test_crash HFT_TEST_CRASH_AFTER: SIGKILL to this worker", stage)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def all(self) -> list:
        return [self.execute, self.confirm, self.settle, self.release_wallet, self.publish]

    @activity.defn(name="execute")
    async def execute(self, request: ExecuteRequest) -> Executed:
        """Lease -> build -> sign -> send. A definite refusal gives the lease back; a send whose
        fate is unknown returns normally, so the workflow goes on to find out on chain."""
        plan = request.plan
        if time.time() * 1000 > plan.deadline and not await self.records.was_sent(plan.plan_id):
            # Retries of a failing build must end at the deadline, whatever the retry policy does.
            fail(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed before anything was sent")
        lease = await self.select_wallet(WalletRequest(plan.plan_id, plan.wallet, request.lease_ttl_ms))
        try:
            built = await self.build(BuildRequest(plan, lease.wallet))
            signed = await self.sign(SignRequest(plan.plan_id, lease.wallet, built))
            submit = SubmitRequest(plan.plan_id, plan.execution_method.value, signed, plan.deadline, request.halt_reason)
            try:
                submission = await self.submit(submit)
            except ApplicationError:
                raise
            except Exception as error:  # connection lost or timed out mid-send: the bytes may be out
                log.warning("plan=%s stage=submit outcome=unknown error=%s", plan.plan_id, error)
                submission = Submission(signed.signature, None, int(time.time() * 1000))
        except Exception:
            await self.wallets.release(lease.lease_id, lease.wallet, "none")
            raise
        return Executed(lease, built.elapsed_ms, signed, submission)

    async def select_wallet(self, request: WalletRequest) -> WalletLeaseInfo:
        started = time.perf_counter()
        try:
            lease = await self.wallets.acquire(request.plan_id, request.pinned, ttl_ms=request.ttl_ms)
        except NoWalletAvailable as error:
            # Busy or low wallets may recover before the deadline; a wallet we hold no key for never will.
            fail(ErrorCode.NO_WALLET, str(error), final=request.pinned is not None and request.pinned not in self.keys)
        log.info("plan=%s stage=select_wallet wallet=%s", request.plan_id, lease.wallet)
        return WalletLeaseInfo(lease.lease_id, lease.wallet, lease.expires_at_ms, _ms_since(started))

    async def build(self, request: BuildRequest) -> BuiltTransaction:
        started = time.perf_counter()
        built = await self.builder.build(request.plan, request.wallet)
        log.info("plan=%s stage=build size=%d lastValidBlockHeight=%d", request.plan.plan_id, built.size, built.last_valid_block_height)
        return replace(built, elapsed_ms=_ms_since(started))

    async def sign(self, request: SignRequest) -> SignedTransaction:
        """Sign once per plan, ever: an earlier run's record wins over this build."""
        started = time.perf_counter()
        # Signing costs ~50 us; a read of the record first would cost a KV round trip on every
        # plan. So sign, then let the create-only write decide which transaction counts.
        message = from_bytes_versioned(base64.b64decode(request.built.message))
        tx = self.keys.sign(request.wallet, message)
        candidate = SignedTransaction(
            plan_id=request.plan_id,
            wallet=request.wallet,
            signature=str(tx.signatures[0]),
            transaction=base64.b64encode(bytes(tx)).decode(),
            last_valid_block_height=request.built.last_valid_block_height,
            tip_lamports=request.built.tip_lamports,
        )
        existing = await self.records.keep_first(candidate)
        if existing.reused:
            existing = replace(existing, sent=await self.records.was_sent(request.plan_id))
        log.info("plan=%s stage=sign signature=%s reused=%s sent=%s", request.plan_id, existing.signature, existing.reused, existing.sent)
        self._crash_point("sign")
        return replace(existing, elapsed_ms=_ms_since(started))

    async def submit(self, request: SubmitRequest) -> Submission:
        started = time.perf_counter()
        submission = await self.submitter.submit(request)
        self._crash_point("submit")
        log.info("plan=%s stage=submit method=%s signature=%s bundle=%s", request.plan_id, request.method, submission.signature, submission.bundle_id)
        return replace(submission, elapsed_ms=_ms_since(started))

    @activity.defn(name="confirm")
    async def confirm(self, request: ConfirmRequest) -> Confirmation:
        self._crash_point("confirm")
        raw = base64.b64decode(request.signed.transaction)
        # CONFIRMATION_TIMEOUT caps the wait after the send, within the plan's own maxLatency.
        give_up = min(request.give_up_at_ms, request.submission.sent_at_ms + self.confirmation_timeout_ms)
        request = replace(request, give_up_at_ms=give_up)

        async def rebroadcast() -> None:
            await self.submitter.send(request.method, raw)

        # rpc: resend every REBROADCAST_MS; tpu_direct: every TPU_REBROADCAST_MS, so each new
        # leader window gets a copy. Bundles are sent once: resending would spend the block
        # engine's per-IP rate limit that new plans need (a dropped bundle ends BLOCKHASH_EXPIRED).
        every = {"rpc": self.rebroadcast_s, "tpu_direct": self.tpu_rebroadcast_s}.get(request.method)
        outcome = await follow(
            request,
            self.watcher,
            commitment=self.commitment,
            rebroadcast=rebroadcast if every is not None else None,
            rebroadcast_s=every or self.rebroadcast_s,
            heartbeat=(lambda details: None) if activity.info().is_local else activity.heartbeat,
        )
        log.info(
            "plan=%s stage=confirm landed=%s slot=%s code=%s rebroadcasts=%d",
            request.plan_id, outcome.landed, outcome.slot, outcome.error_code, outcome.rebroadcasts,
        )
        return outcome

    @activity.defn(name="settle")
    async def settle(self, request: SettleRequest) -> Settlement:
        settlement = await settle(self.rpc, request, self.sol_price_usd)
        log.info("plan=%s stage=settle fee=%d tip=%d profit=%s", request.plan.plan_id, settlement.fee_lamports, settlement.tip_lamports, settlement.actual_profit_usd)
        return settlement

    @activity.defn(name="release_wallet")
    async def release_wallet(self, request: ReleaseRequest) -> None:
        await self.wallets.release(request.lease_id, request.wallet, request.outcome)
        log.info("plan=%s stage=release wallet=%s outcome=%s", request.lease_id, request.wallet, request.outcome)

    @activity.defn(name="publish")
    async def publish(self, result: ExecutionResultEvent) -> None:
        await publish_result(self.js, result)
        log.info("plan=%s stage=publish status=%s code=%s", result.plan_id, result.status.value, result.error_code.value if result.error_code else None)
        if self.on_result is not None:
            self.on_result(result)
