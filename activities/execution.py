"""The ExecutePlan activities, bound to the worker's shared resources.

Each step is small and idempotent: select_wallet returns the same lease for the same plan,
record returns the plan's first recorded signed transaction, submit resends the same
bytes, publish is deduplicated by plan id. The steps up to the record run ahead, in the
bridge while the workflow start is in flight (`prepare_ahead`), and once the server has
persisted the start and handed its first workflow task to this process, the send goes too
(`send_ahead`): the workflow's `execute` claims what was done. A plan whose work was not
done ahead (a re-run, a start that was not eager) does it inside `execute`. Every log line
carries plan id and stage.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable

from solders.message import from_bytes_versioned
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.events import ErrorCode, ExecutionPlanEvent, ExecutionResultEvent
from workflows.execute_plan import lease_ttl_for
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
from .rpc import SolanaRpc
from .settle import settle
from .submit import Submitter
from .wallets import NoWalletAvailable, WalletPool

log = logging.getLogger("hft.activities")


# A preparation no run claims by its plan's deadline (+1 s), or within this, is undone: its
# workflow task went to another worker, or its workflow stopped before execute.
PREPARED_TTL_S = 30.0


@dataclass(frozen=True)
class Prepared:
    """A plan's lease, built transaction and recorded signed transaction: ready for the wire."""

    lease: WalletLeaseInfo
    built: BuiltTransaction
    signed: SignedTransaction


@dataclass
class Ahead:
    """A plan's work done ahead of its workflow's `execute`: the preparation, then maybe the send."""

    prepared: asyncio.Task[Prepared]
    # None until `send_ahead`; it yields None when the preparation failed (execute prepares again)
    sent: asyncio.Task[Submission | None] | None = None


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class ExecutionActivities:
    def __init__(
        self,
        *,
        rpc: SolanaRpc,
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
        self._ahead: dict[str, Ahead] = {}
        self._tasks: set[asyncio.Task] = set()

    def _crash_point(self, stage: str) -> None:
        """Fault injection for the durability tests (HFT_TEST_CRASH_AFTER): the worker dies here, hard."""
        if self.crash_after == stage:
            log.warning("stage=%s event=test_crash HFT_TEST_CRASH_AFTER: SIGKILL to this worker", stage)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def all(self) -> list:
        return [self.execute, self.confirm, self.settle, self.release_wallet, self.publish]

    # --- the hot path: lease -> build -> sign -> record -> send ----------------------------------------

    def prepare_ahead(self, plan: ExecutionPlanEvent) -> None:
        """Lease, build, sign and record while the bridge's workflow start is in flight (~6 ms on
        the dev server), so the send can follow the start at once. Nothing is sent here.
        Unclaimed work gives its lease back (`forget_prepared`); a record alone sends nothing."""
        if plan.plan_id in self._ahead or self.wallets.holds(plan.plan_id):
            return  # this plan is already running here: its own run has (or takes) the lease
        useful_s = plan.deadline / 1000 - time.time()
        if useful_s <= 0:
            return  # execute refuses it DEADLINE_EXCEEDED before leasing: a lease would only block a wallet
        self._ahead[plan.plan_id] = Ahead(asyncio.create_task(self._prepare(plan)))
        asyncio.get_running_loop().call_later(min(useful_s + 1.0, PREPARED_TTL_S), self.forget_prepared, plan.plan_id)

    def send_ahead(self, plan: ExecutionPlanEvent) -> None:
        """The start is persisted and its first workflow task is this process's (eager): send the
        prepared transaction now, after the same halt and deadline check `execute` makes, instead
        of after the workflow task's round trip through the SDK (~5 ms). The plan is durable
        before its bytes leave; `execute` claims the outcome, or raises the refusal."""
        ahead = self._ahead.get(plan.plan_id)
        if ahead is None or ahead.sent is not None:
            return  # not prepared here (or execute has claimed it already), or sent already

        async def send() -> Submission | None:
            try:
                prepared = await ahead.prepared
            except Exception:
                return None  # execute's claim prepares again and reports its own error
            return await self._send_checked(plan, prepared.signed, halt_reason=None)

        ahead.sent = asyncio.create_task(send())

    def forget_prepared(self, plan_id: str) -> None:
        """Undo work ahead no run claimed (a duplicate plan, a failed start, a task that went to
        another worker): give its lease back. A transaction sent ahead is followed by the run
        that does claim the plan, wherever it runs (it finds the record)."""
        ahead = self._ahead.pop(plan_id, None)
        if ahead is None:
            return

        def release(done: asyncio.Task) -> None:
            if not done.cancelled() and done.exception() is None:
                lease = done.result().lease
                self._background(self.wallets.release(lease.lease_id, lease.wallet, "none"))

        ahead.prepared.add_done_callback(release)
        if ahead.sent is not None:
            ahead.sent.add_done_callback(lambda done: done.cancelled() or done.exception())  # nobody awaits it

    @activity.defn(name="execute")
    async def execute(self, request: ExecuteRequest) -> Executed:
        """Claim the prepared (leased, built, signed, recorded) transaction and, if it was sent
        ahead, that send's outcome; else the last halt and deadline check, then send. A definite
        refusal gives the lease back; a send whose fate is unknown returns normally, so the
        workflow goes on to find out on chain."""
        plan = request.plan
        ahead = self._ahead.pop(plan.plan_id, None)  # whoever pops work done ahead owns its lease
        prepared = await self._claim(ahead.prepared if ahead else None, plan, request.lease_ttl_ms)
        lease, signed = prepared.lease, prepared.signed
        try:
            submission = await ahead.sent if ahead is not None and ahead.sent is not None else None
            if submission is None:
                submission = await self._send_checked(plan, signed, request.halt_reason)
        except Exception:
            await self.wallets.release(lease.lease_id, lease.wallet, "none")
            raise
        return Executed(lease, prepared.built.elapsed_ms, signed, submission)

    async def _send_checked(self, plan: ExecutionPlanEvent, signed: SignedTransaction, halt_reason: str | None) -> Submission:
        """The last halt and deadline check, then the send."""
        self._crash_point("sign")
        refusal = self.submitter.refusal(halt_reason, plan.deadline)
        if refusal is not None and not signed.reused:
            fail(*refusal)  # recorded by this run a moment ago: nothing of this plan has been sent
        if refusal is not None:
            # An earlier run recorded it and may have sent it: never resend, but follow it, so
            # the result says what really happened on chain.
            code, why = refusal
            log.info("plan=%s stage=submit withheld=%s signature=%s following an earlier run's transaction", plan.plan_id, code.value, signed.signature)
            return Submission(signed.signature, None, int(time.time() * 1000), withheld_code=code.value, withheld=f"{why}; an earlier run's transaction was followed and did not land")
        return await self._send(SubmitRequest(plan.plan_id, plan.execution_method.value, signed))

    async def _send(self, request: SubmitRequest) -> Submission:
        try:
            return await self.submit(request)
        except ApplicationError:
            raise
        except Exception as error:  # connection lost or timed out mid-send: the bytes may be out
            log.warning("plan=%s stage=submit outcome=unknown error=%s", request.plan_id, error)
            return Submission(request.signed.signature, None, int(time.time() * 1000))

    async def _claim(self, ahead: asyncio.Task | None, plan: ExecutionPlanEvent, lease_ttl_ms: int) -> Prepared:
        """The bridge's preparation if it succeeded, else the same work now."""
        if ahead is not None:
            try:
                return await ahead
            except Exception:
                pass  # e.g. no wallet was free a few ms ago: this run tries again and reports its own error
        if time.time() * 1000 > plan.deadline and await self.records.recorded(plan.plan_id) is None:
            # Retries of a failing build must end at the deadline, whatever the retry policy does.
            fail(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed before anything was sent")
        return await self._prepare(plan, lease_ttl_ms)

    async def _prepare(self, plan: ExecutionPlanEvent, lease_ttl_ms: int | None = None) -> Prepared:
        """Lease, build, sign and record. The record is create-only: an earlier run's wins."""
        ttl = lease_ttl_ms if lease_ttl_ms is not None else lease_ttl_for(plan)
        lease = await self.select_wallet(WalletRequest(plan.plan_id, plan.wallet, ttl))
        try:
            built = await self.build(BuildRequest(plan, lease.wallet))
            signed = await self.record(self.sign(SignRequest(plan.plan_id, lease.wallet, built)))
            return Prepared(lease, built, signed)
        except Exception:
            await self.wallets.release(lease.lease_id, lease.wallet, "none")
            raise

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

    def sign(self, request: SignRequest) -> SignedTransaction:
        """Sign in memory (~50 us). Only `record` makes it the plan's transaction."""
        started = time.perf_counter()
        message = from_bytes_versioned(base64.b64decode(request.built.message))
        tx = self.keys.sign(request.wallet, message)
        return SignedTransaction(
            plan_id=request.plan_id,
            wallet=request.wallet,
            signature=str(tx.signatures[0]),
            transaction=base64.b64encode(bytes(tx)).decode(),
            last_valid_block_height=request.built.last_valid_block_height,
            tip_lamports=request.built.tip_lamports,
            elapsed_ms=_ms_since(started),
        )

    async def record(self, candidate: SignedTransaction) -> SignedTransaction:
        """Make one transaction the plan's, once ever (create-only); an earlier run's record wins."""
        started = time.perf_counter()
        signed = await self.records.keep_first(candidate)
        log.info("plan=%s stage=sign signature=%s reused=%s", candidate.plan_id, signed.signature, signed.reused)
        return replace(signed, elapsed_ms=round(candidate.elapsed_ms + _ms_since(started), 3))

    async def submit(self, request: SubmitRequest) -> Submission:
        started = time.perf_counter()
        submission = await self.submitter.submit(request)
        self._crash_point("submit")
        log.info("plan=%s stage=submit method=%s signature=%s bundle=%s", request.plan_id, request.method, submission.signature, submission.bundle_id)
        return replace(submission, elapsed_ms=_ms_since(started))

    def _background(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        if request.submission.withheld_code is not None:
            every = None  # this run may not send: only watch what an earlier run sent
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
