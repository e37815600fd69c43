"""Submit: put the plan's signed bytes on the wire the way the plan asks (rpc, jito_bundle, tpu_direct).

Resending the same bytes is always safe (a signature is processed at most once), so a
retry never risks a second landing. `refusal` is the last check before a plan commits to
the wire: the workflow's halt signal, the worker's own halt flag (a signal cannot stop a
local activity already running) and the plan's deadline.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Callable, Sequence


from workflows.events import ErrorCode
from workflows.stages import SignedTransaction, Submission

from .errors import GateRefusal, fail
from venue.jito import JitoClient, JitoError, JitoRateLimited, JitoUnavailable
from venue.rpc import RpcRateLimited, RpcRefused, SolanaRpc
from venue.tpu import TpuClient


class TpuUndelivered(Exception):
    """Every leader refused or timed out: the outcome is unknown until the chain says."""

log = logging.getLogger("hft.submit")
SENDABLE = ("rpc", "jito_bundle", "tpu_direct")


class Submitter:
    def __init__(
        self,
        rpc: SolanaRpc,
        jito: JitoClient,
        halted: Callable[[], str | None],
        backups: Sequence[SolanaRpc] = (),
        tpu: TpuClient | None = None,
        unheard: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.rpc = rpc
        self.jito = jito
        self.tpu = tpu
        self.halted = halted
        self.unheard = unheard  # why the kill switch cannot be read now (fail-closed), or None
        self.backups = list(backups)  # RPC_BACKUPS: get a copy of every rpc send, never waited on
        self._background: set[asyncio.Task] = set()
        self.in_flight = 0  # sends past the gate (backup copies included), not yet answered
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def submit(self, method: str, signed: SignedTransaction, *, halt_reason: str | None = None, deadline_ms: int | None = None) -> Submission:
        """The plan's send, behind the gate (`refusal`) checked in the same step as the in-flight slot is
        taken, right before the bytes leave: a halt applied while the caller awaited something (a record
        claim) refuses it here, and one applied after it waits, in the kill switch's drain, for it."""
        if method not in SENDABLE:
            fail(ErrorCode.SUBMIT_REJECTED, f"execution method {method} is not available")
        gate = None if deadline_ms is None else (lambda: self.refusal(halt_reason, deadline_ms))
        bundle_id = await self.send(method, base64.b64decode(signed.transaction), gate=gate)
        return Submission(signature=signed.signature, bundle_id=bundle_id, sent_at_ms=int(time.time() * 1000))

    def refusal(self, halt_reason: str | None, deadline_ms: int) -> GateRefusal | None:
        """Why a plan must not go on the wire now, and whether that is final: a halt, or its deadline
        (final); a kill switch this worker cannot hear (not final: it may be heard again before the deadline)."""
        reason = halt_reason or self.halted()
        if reason is not None:
            return GateRefusal(ErrorCode.HALTED, f"halted before submit: {reason}", final=True)
        if time.time() * 1000 > deadline_ms:
            return GateRefusal(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed before anything was sent", final=True)
        unheard = self.unheard()
        if unheard is not None:
            return GateRefusal(ErrorCode.HALTED, f"not sent while {unheard}", final=False)
        return None

    async def drained(self) -> None:
        """Until no send is under way (a halt's acknowledgment waits for this)."""
        await self._quiet.wait()

    async def send(self, method: str, raw: bytes, *, gate: Callable[[], GateRefusal | None] | None = None) -> str | None:
        """Send once; returns the bundle id for jito_bundle. Uncertain failures raise for a retry.

        The slot is taken and ``gate`` asked in one step (no await between them, nor between them and
        the bytes leaving), so the kill switch either sees this send counted or this send sees its halt."""
        self._take_slot()
        try:
            refusal = gate() if gate is not None else None
            if refusal is not None:
                refusal.fail()  # nothing left: the caller voids or withholds
            return await self._send(method, raw)
        finally:
            self._give_slot()

    def _take_slot(self) -> None:
        self.in_flight += 1
        self._quiet.clear()

    def _give_slot(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._quiet.set()

    async def _send(self, method: str, raw: bytes) -> str | None:
        if method == "rpc":
            try:
                await self.rpc.send_transaction(raw)
            except RpcRefused as error:
                fail(ErrorCode.SUBMIT_REJECTED, f"RPC refused the transaction: {error}")
            except RpcRateLimited:
                fail(ErrorCode.RATE_LIMITED, "RPC rate limited (HTTP 429)")
            except BaseException:
                self._copy_to_backups(raw)  # unknown whether it arrived: it may be out, so the copies may go too
                raise  # RpcUnavailable: the caller follows the signature on chain
            # Copies only once the primary has not refused: a refusal must mean nothing left.
            self._copy_to_backups(raw)
            return None
        if method == "tpu_direct":
            if self.tpu is None:
                fail(ErrorCode.SUBMIT_REJECTED, "direct TPU submission is not available on this worker (its TPU client did not start)")
            report = await self.tpu.send(raw)
            if report.delivered == 0:
                # No leader acknowledged it; confirm resends on every leader window until it expires.
                raise TpuUndelivered(f"no leader acknowledged the transaction: {dict(report.outcomes)}")
            return None
        if method == "jito_bundle":
            try:
                return await self.jito.send_bundle([raw])
            except JitoRateLimited as error:
                fail(ErrorCode.RATE_LIMITED, f"Jito rate limited: {error}")
            except JitoUnavailable:
                raise  # unknown whether it arrived: retry the same bytes
            except JitoError as error:
                fail(ErrorCode.SUBMIT_REJECTED, f"block engine refused the bundle: {error}")
        fail(ErrorCode.SUBMIT_REJECTED, f"execution method {method} is not available")


    def _copy_to_backups(self, raw: bytes) -> None:
        """Copies are sends too: each holds an in-flight slot until answered, so a halt is acknowledged only
        once they are out (they are started before the primary send's slot is given back)."""
        for backup in self.backups:
            self._take_slot()
            task = asyncio.create_task(_copy_to(backup, raw))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(lambda _: self._give_slot())


async def _copy_to(backup: SolanaRpc, raw: bytes) -> None:
    try:
        await backup.send_transaction(raw)
    except Exception as error:  # a backup's trouble never fails the plan
        log.debug("backup RPC %s refused a copy: %s", backup.shown, error)
