"""A plan's way to the wire in this process: one owner for its lease, its record and its send.

A `Dispatch`'s transaction moves through the states of `wire_state.WireState` (preparing ->
unsent | found -> sending -> maybe out, or withheld, or void), by the steps of that module's one
table; the dispatch itself is open here until it is claimed or abandoned:

- prepare: read the plan's record first. If the plan already has a transaction (an earlier
  run, another worker, a dead bridge), that transaction is the plan's fate: its wallet's lease
  is adopted, nothing is built or signed. Otherwise lease a wallet, build, check the plan
  policy on the built message (executor/policy/: a violation fails POLICY_VIOLATION, nothing signed),
  sign and record (create-only). A void record ends the plan: it sends nothing, ever.
- send: the send gate (the halt flag or signal, the plan's deadline) right before the bytes
  leave. A transaction this dispatch recorded and never sent is still provably unsent: a
  refusal voids the record (compare-and-set on the revision it wrote) and says "nothing
  sent". A transaction someone else recorded may be out already: it is claimed (revision
  bumped) before a resend, and a refusal only withholds it, so confirm follows it on chain.
- claimed by the workflow's `execute`, which takes the lease with it; or abandoned (a
  duplicate plan, a failed start, a task that went to another worker), which gives the
  lease back.

The bridge holds a `StartAhead` while the workflow start is in flight (`Dispatcher.beside_start`:
the prepare-ahead limit, the open, and the abandon of a start that did not happen) and tells it
whether the start came back eager; an eager start's dispatch is sent at once (the plan is durable
before its bytes leave). `execute` claims it, or opens its own on a re-run or a start that was not
eager; bench's direct path uses one without a record. Failures raise `errors.PlanFailure`.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import time
from dataclasses import replace

from solders.message import from_bytes_versioned

from workflows.events import ErrorCode, ExecutionPlanEvent
from workflows.stages import Executed, SignedTransaction, Submission, WalletLeaseInfo

from .build import BuiltTransaction, TransactionBuilder
from .errors import PlanFailure, fail
from .keystore import KeyStore
from .policy import PlanPolicy, PolicySettings
from .records import PlanRecords, Record
from .submit import Submitter
from .wallets import NoWalletAvailable, WalletPool
from .wire_state import Step, WireState

log = logging.getLogger("hft.dispatch")

LEASE_MARGIN_MS = 60_000
# A dispatch no run claims by its plan's deadline (+1 s), or within this, is abandoned: its
# workflow task went to another worker, or its workflow stopped before execute.
UNCLAIMED_TTL_S = 30.0
# A plan is prepared ahead (record, lease, build, sign) only while fewer starts than this are in
# flight. In a burst the rest prepare inside their own `execute`: a transaction recorded ahead is
# the plan's for good, so it must not wait in a queue while its blockhash ages, and leases taken
# ahead for queued plans would starve the plans actually executing.
PREPARE_AHEAD_MAX_STARTING = 4


def lease_ttl_for(plan: ExecutionPlanEvent) -> int:
    """A plan holds its wallet for its whole life plus a margin; an orphaned lease expires after it."""
    return plan.max_latency + LEASE_MARGIN_MS


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class Dispatch:
    """One plan's lease, transaction and send in this process."""

    def __init__(self, plan: ExecutionPlanEvent, dispatcher: "Dispatcher", *, durable: bool = True) -> None:
        self.plan = plan
        self._dispatcher = dispatcher
        self.durable = durable
        # Has its transaction left, and who may still send it: `self.state.left`, `self.state.sender`.
        self.state = WireState.PREPARING
        self.lease: WalletLeaseInfo | None = None
        # This dispatch created the lease (not the plan's running dispatch elsewhere, whose lease a
        # duplicate delivery finds under the same id): only then may it give the lease back.
        self.lease_taken = False
        self.built: BuiltTransaction | None = None
        self.signed: SignedTransaction | None = None
        self.record: Record | None = None
        self.prepared = asyncio.get_running_loop().create_task(self._prepare())
        self._sending: asyncio.Task[Submission] | None = None

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id

    def _step(self, step: Step) -> None:
        """Every change of `state` goes through wire_state's table: a step it does not allow raises."""
        self.state = self.state.then(step)

    # --- prepare ----------------------------------------------------------------------------

    async def _prepare(self) -> None:
        d = self._dispatcher
        plan = self.plan
        record = await d.records.read(plan.plan_id) if self.durable else None
        if record is not None:
            self._take_record(record)
            self.lease, self.lease_taken = await d.adopt(plan, record.signed.wallet)
            self._step(Step.FOUND_RECORD)
            return
        if time.time() * 1000 > plan.deadline:
            # Retries of a failing build must end at the deadline, whatever the retry policy does.
            fail(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed before anything was sent")
        self.lease, self.lease_taken = await d.lease(plan)
        try:
            started = time.perf_counter()
            built = await d.builder.build(plan, self.lease.wallet)
            log.info(
                "plan=%s stage=build size=%d lastValidBlockHeight=%d tip=%d tip_source=%s tip_capped_by=%s tip_escalation=%d", plan.plan_id,
                built.size, built.last_valid_block_height, built.tip_lamports, built.tip_source, built.tip_capped_by, built.tip_escalation,
            )  # fmt: skip
            # The built, compiled message is what would be signed: checked before any key touches it.
            await d.policy.check(plan, self.lease.wallet, built)
            self.built = replace(built, elapsed_ms=_ms_since(started))  # build includes the policy check
            candidate = d.sign(plan.plan_id, self.lease.wallet, self.built)
            recorded_here = True  # without a record (bench's direct path) the signed transaction is this dispatch's alone
            if not self.durable:
                self.signed = candidate
            else:
                started = time.perf_counter()
                record, recorded_here = await d.records.create(candidate)
                self._take_record(record)
                self.signed = replace(self.signed, elapsed_ms=round(candidate.elapsed_ms + _ms_since(started), 3))
                if self.signed.wallet != self.lease.wallet:  # another run recorded the plan with another wallet
                    if self.lease_taken:
                        await d.wallets.release(plan.plan_id, self.lease.wallet, "none")
                    self.lease, self.lease_taken = await d.adopt(plan, self.signed.wallet)
            log.info("plan=%s stage=sign signature=%s reused=%s", plan.plan_id, self.signed.signature, self.signed.reused)
        except BaseException:
            if self.lease_taken:
                d.release_soon(plan.plan_id, self.lease.wallet)  # this dispatch took it; nothing was recorded
            raise
        self._step(Step.RECORDED_HERE if recorded_here else Step.FOUND_RECORD)

    def _take_record(self, record: Record) -> None:
        if record.void:
            self._step(Step.VOIDED)
            fail(ErrorCode(record.void_code) if record.void_code in ErrorCode.__members__ else ErrorCode.BUILD_FAILED,
                 f"this plan ended without a transaction: {record.void_reason}")
        self.record, self.signed = record, record.signed

    # --- send ---------------------------------------------------------------------------------

    def send_ahead(self) -> None:
        """The start is durable and its first task is this process's: send now, in the background."""
        if self._sending is None and (self.state is WireState.PREPARING or self.state.prepared):
            self._sending = asyncio.get_running_loop().create_task(self.send(None))
            self._sending.add_done_callback(lambda task: task.cancelled() or task.exception())  # awaited by the claim, if any

    async def outcome(self, halt_reason: str | None) -> Submission:
        """The send ahead's outcome if there was one, else the gate and the send now."""
        sending, self._sending = self._sending, None
        if sending is not None:
            try:
                return await sending
            except PlanFailure as failure:
                if not failure.retryable:
                    raise
                # retryable (a rate limit): nothing was accepted; try again now
        return await self.send(halt_reason)

    async def send(self, halt_reason: str | None) -> Submission:
        await self.prepared
        d = self._dispatcher
        plan, signed = self.plan, self.signed
        # Asked now, before the claim, so a plan halted already goes no further; asked again by the
        # submitter in the same step as the bytes leave (a halt may come while the claim is awaited).
        refusal = d.submitter.refusal(halt_reason, plan.deadline)
        if refusal is not None:
            if not refusal.final:
                refusal.fail()  # nothing sent; the retry asks the gate again
            return await self._refuse(refusal.code, refusal.why)
        if self.state is WireState.FOUND:
            # Someone else recorded it: bump the revision first, so its writer can no longer void it.
            self.record = await d.records.claim(self.record)
            if self.record.void:
                self._take_record(self.record)
            self._step(Step.CLAIMED)
        d.crash_point("sign")
        started = time.perf_counter()
        self._step(Step.SEND)
        try:
            submission = await d.submitter.submit(plan.execution_method.value, signed, halt_reason=halt_reason, deadline_ms=plan.deadline)
        except PlanFailure as failure:  # the venue (or the gate, in the send's own step) took nothing
            self._step(Step.NOTHING_LEFT)
            if failure.retryable:
                raise  # a rate limit: the retry sends the same bytes
            return await self._refuse(failure.code, failure.message)
        except Exception as error:  # connection lost or timed out mid-send: the bytes may be out
            self._step(Step.MAY_BE_OUT)
            log.warning("plan=%s stage=submit outcome=unknown error=%s", plan.plan_id, error)
            return Submission(signed.signature, None, int(time.time() * 1000), elapsed_ms=_ms_since(started))
        except BaseException:
            self._step(Step.MAY_BE_OUT)  # cancelled mid-send
            raise
        self._step(Step.MAY_BE_OUT)
        d.crash_point("submit")
        log.info("plan=%s stage=submit method=%s signature=%s bundle=%s", plan.plan_id, plan.execution_method.value, submission.signature, submission.bundle_id)
        return replace(submission, elapsed_ms=_ms_since(started))

    async def _refuse(self, code: ErrorCode, why: str) -> Submission:
        """Not sent now. Provably never sent (UNSENT: this dispatch's own record, never out): void it
        and fail. Otherwise it may be on the wire: withhold it, and confirm follows it on chain."""
        if self.state is WireState.UNSENT:
            if not self.durable:
                self._step(Step.VOIDED)
                fail(code, why)
            record = await self._dispatcher.records.void(self.plan_id, code.value, why, over=self.record)
            if record.void:
                self._step(Step.VOIDED)
                fail(code, why)
            self.record = record  # claimed by another run a moment ago: it may be out
        self._step(Step.WITHHELD)
        log.info("plan=%s stage=submit withheld=%s signature=%s following the recorded transaction", self.plan_id, code.value, self.signed.signature)
        return Submission(self.signed.signature, None, int(time.time() * 1000), withheld_code=code.value, withheld=f"{why}; its recorded transaction was followed and did not land")

    def executed(self, submission: Submission) -> Executed:
        return Executed(self.lease, self.built.elapsed_ms if self.built else 0.0, self.signed, submission)


class Dispatcher:
    """This process's open dispatches, and what they share (pool, keys, builder, record, submitter)."""

    def __init__(
        self,
        *,
        wallets: WalletPool,
        keys: KeyStore,
        builder: TransactionBuilder,
        records: PlanRecords | None,
        submitter: Submitter,
        crash_after: str | None = None,
        policy: PlanPolicy | None = None,
    ) -> None:
        self.wallets = wallets
        self.keys = keys
        self.builder = builder
        # Between build and sign. A dispatcher without one given still enforces the default rules.
        self.policy = policy or PlanPolicy(PolicySettings(), lookup_tables=builder.lookup_tables, reserves=builder.reserves)
        self.records = records
        self.submitter = submitter
        self.crash_after = crash_after
        self._open: dict[str, Dispatch] = {}
        self._background: set[asyncio.Task] = set()
        self.starting = 0  # workflow starts in flight (`beside_start`): the prepare-ahead limit counts them

    def beside_start(self, plan: ExecutionPlanEvent) -> "StartAhead":
        """The bridge's one handle on a plan while its workflow start is in flight: prepared ahead
        (record, lease, build, sign overlap the start's round trip) while fewer than
        PREPARE_AHEAD_MAX_STARTING starts are in flight, sent once the start comes back eager
        (`StartAhead.started`), abandoned when the block ends without a start. Use it as a `with`."""
        ahead = self.open_ahead(plan) if self.starting < PREPARE_AHEAD_MAX_STARTING else None
        return StartAhead(self, ahead)

    def open(self, plan: ExecutionPlanEvent) -> Dispatch:
        """The plan's open dispatch, or a new one (its preparation starts at once)."""
        dispatch = self._open.get(plan.plan_id)
        if dispatch is None:
            dispatch = self._open[plan.plan_id] = Dispatch(plan, self)
        return dispatch

    def open_ahead(self, plan: ExecutionPlanEvent) -> Dispatch | None:
        """The bridge, beside the workflow start: prepare now so the send can follow the start.
        None when it opened nothing (the plan is already open here: a duplicate delivery must not
        touch the running plan's dispatch; or its deadline has passed)."""
        if plan.plan_id in self._open:
            return None
        useful_s = plan.deadline / 1000 - time.time()
        if useful_s <= 0:
            return None  # execute refuses it DEADLINE_EXCEEDED before leasing: a lease would only block a wallet
        dispatch = self.open(plan)
        asyncio.get_running_loop().call_later(min(useful_s + 1.0, UNCLAIMED_TTL_S), self._abandon_if_unclaimed, dispatch)
        return dispatch

    async def claim(self, plan: ExecutionPlanEvent, halt_reason: str | None) -> Executed:
        """`execute`: the plan's dispatch (opened ahead, or now), sent if it was not. Raises the
        plan's error code on a refusal; the dispatch stays open across a retryable failure
        of its send, so the retry still knows whether anything went out."""
        dispatch = self.open(plan)
        try:
            submission = await dispatch.outcome(halt_reason)
        except PlanFailure as failure:
            if not failure.retryable or dispatch.state is WireState.VOID or not dispatch.prepared.done() or dispatch.prepared.exception() is not None:
                self._forget(dispatch)
            raise
        except BaseException:
            self._forget(dispatch)
            raise
        self._forget(dispatch)
        return dispatch.executed(submission)

    def abandon(self, dispatch: Dispatch) -> None:
        """Nobody will claim it here (a duplicate plan, a failed start): give its lease back once
        its preparation is over. A send ahead already under way is followed by the run that claims
        the plan, wherever it runs (it finds the record)."""
        if self._open.get(dispatch.plan_id) is dispatch:
            del self._open[dispatch.plan_id]
            self._give_back(dispatch)

    def _abandon_if_unclaimed(self, dispatch: Dispatch) -> None:
        self.abandon(dispatch)

    def _forget(self, dispatch: Dispatch) -> None:
        if self._open.get(dispatch.plan_id) is dispatch:
            del self._open[dispatch.plan_id]

    def _give_back(self, dispatch: Dispatch) -> None:
        def release(done: asyncio.Task) -> None:
            if dispatch.lease is not None and dispatch.lease_taken:  # a lease found held is the running plan's
                self.release_soon(dispatch.plan_id, dispatch.lease.wallet)

        dispatch.prepared.add_done_callback(release)

    # --- what dispatches share ---------------------------------------------------------------

    async def lease(self, plan: ExecutionPlanEvent) -> tuple[WalletLeaseInfo, bool]:
        """The plan's lease, and whether this call took it (False: the plan id held it already)."""
        started = time.perf_counter()
        try:
            lease = await self.wallets.acquire(plan.plan_id, plan.wallet, ttl_ms=lease_ttl_for(plan))
        except NoWalletAvailable as error:
            # Busy or low wallets may recover before the deadline; a wallet we hold no key for never will.
            fail(ErrorCode.NO_WALLET, str(error), final=plan.wallet is not None and plan.wallet not in self.keys)
        log.info("plan=%s stage=lease wallet=%s taken=%s", plan.plan_id, lease.wallet, lease.taken)
        return WalletLeaseInfo(lease.lease_id, lease.wallet, lease.expires_at_ms, _ms_since(started)), lease.taken

    async def adopt(self, plan: ExecutionPlanEvent, wallet: str) -> tuple[WalletLeaseInfo, bool]:
        """The lease on the wallet that signed the recorded transaction, whatever its health, and whether this call took it."""
        started = time.perf_counter()
        lease = await self.wallets.adopt(plan.plan_id, wallet, ttl_ms=lease_ttl_for(plan))
        log.info("plan=%s stage=lease wallet=%s adopted=true taken=%s", plan.plan_id, wallet, lease.taken)
        return WalletLeaseInfo(lease.lease_id, lease.wallet, lease.expires_at_ms, _ms_since(started)), lease.taken

    def sign(self, plan_id: str, wallet: str, built: BuiltTransaction) -> SignedTransaction:
        """Sign in memory (~50 us). Only the record makes it the plan's transaction."""
        started = time.perf_counter()
        tx = self.keys.sign(wallet, from_bytes_versioned(base64.b64decode(built.message)))
        return SignedTransaction(
            plan_id=plan_id,
            wallet=wallet,
            signature=str(tx.signatures[0]),
            transaction=base64.b64encode(bytes(tx)).decode(),
            last_valid_block_height=built.last_valid_block_height,
            tip_lamports=built.tip_lamports,
            elapsed_ms=_ms_since(started),
        )

    def release_soon(self, plan_id: str, wallet: str) -> None:
        task = asyncio.get_running_loop().create_task(self._release(plan_id, wallet))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, plan_id: str, wallet: str) -> None:
        try:
            await self.wallets.release(plan_id, wallet, "none")
        except Exception as error:  # the lease expires on its own
            log.warning("plan=%s stage=release event=release_failed wallet=%s error=%s", plan_id, wallet, error)

    def crash_point(self, stage: str) -> None:
        """Fault injection for the durability tests (HFT_TEST_CRASH_AFTER): the worker dies here, hard."""
        if self.crash_after == stage:
            log.warning("stage=%s event=test_crash HFT_TEST_CRASH_AFTER: SIGKILL to this worker", stage)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


class StartAhead:
    """A plan's dispatch beside its workflow start (`Dispatcher.beside_start`). Inside the `with`
    block the start counts against the prepare-ahead limit; a block that ends without `started`
    (the plan was already told, the id already started, the start failed) abandons what it opened,
    and only that: a duplicate delivery must not touch the running plan's dispatch."""

    def __init__(self, dispatcher: Dispatcher | None, dispatch: Dispatch | None) -> None:
        self._dispatcher = dispatcher
        self.dispatch = dispatch  # None: nothing opened (the limit, a duplicate here, a passed deadline, no dispatcher)
        self._started = False

    def started(self, *, eager: bool) -> bool:
        """The start was accepted. `eager`: its response carried the first workflow task, which the
        SDK hands to this process, so the plan is durable and its `execute` runs here: send now, in
        the background. True when a send went ahead."""
        self._started = True
        if eager and self.dispatch is not None:
            self.dispatch.send_ahead()
            return True
        return False

    def __enter__(self) -> "StartAhead":
        if self._dispatcher is not None:
            self._dispatcher.starting += 1
        return self

    def __exit__(self, *exc_info) -> None:
        if self._dispatcher is None:
            return
        self._dispatcher.starting -= 1
        if not self._started and self.dispatch is not None:
            self._dispatcher.abandon(self.dispatch)
