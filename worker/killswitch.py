"""The kill switch: `system.killswitch` halts, `system.resume` resumes, on the SYSTEM stream.

Every worker keeps the state in process (the bridge stops taking plans and submit refuses
to send), restores it at start from the stream's last halt/resume message, and on a halt
signals `halt` to every running ExecutePlan workflow found by a visibility query. The
query lags new starts by tens of ms; the in-process flag covers that gap.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from temporalio.client import Client

from .streams import KILLSWITCH_SUBJECT, RESUME_SUBJECT, STOPPED_SUBJECT

log = logging.getLogger("hft.killswitch")
RUNNING_PLANS = 'WorkflowType = "ExecutePlan" AND ExecutionStatus = "Running"'


def halt_message(reason: str, by: str) -> bytes:
    return json.dumps({"reason": reason, "by": by, "timestamp": int(time.time() * 1000)}).encode()


class KillSwitch:
    def __init__(self, nc: NATS, js: JetStreamContext, client: Client, executor_name: str, on_change: Callable[[bool], None] | None = None) -> None:
        self.nc = nc
        self.js = js
        self.client = client
        self.executor_name = executor_name
        self.reason: str | None = None
        self.on_change = on_change or (lambda halted: None)
        self._subscriptions = []

    def halted(self) -> str | None:
        return self.reason

    async def start(self) -> None:
        await self._restore()
        self._subscriptions = [
            await self.nc.subscribe(KILLSWITCH_SUBJECT, cb=self._on_halt),
            await self.nc.subscribe(RESUME_SUBJECT, cb=self._on_resume),
        ]
        self.on_change(self.reason is not None)
        if self.reason is not None:
            log.warning("stage=killswitch event=restored halted=true reason=%s", self.reason)
            await self.halt_running()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    async def _restore(self) -> None:
        """The newer of the last halt and the last resume decides, so a restart keeps a halt."""
        last: dict[str, tuple[int, bytes]] = {}
        for subject in (KILLSWITCH_SUBJECT, RESUME_SUBJECT):
            try:
                message = await self.js.get_last_msg("SYSTEM", subject)
                last[subject] = (message.seq, message.data or b"")
            except NotFoundError:
                pass
        halt = last.get(KILLSWITCH_SUBJECT)
        resume = last.get(RESUME_SUBJECT)
        if halt is not None and (resume is None or halt[0] > resume[0]):
            self.reason = _reason(halt[1])

    async def _on_halt(self, message) -> None:
        self.reason = _reason(message.data)
        self.on_change(True)
        log.warning("stage=killswitch event=halt reason=%s", self.reason)
        await self.halt_running()
        await self.nc.publish(STOPPED_SUBJECT, json.dumps({"executor": self.executor_name, "reason": self.reason, "timestamp": int(time.time() * 1000)}).encode())

    async def _on_resume(self, message) -> None:
        self.reason = None
        self.on_change(False)
        log.warning("stage=killswitch event=resume")

    async def halt_running(self) -> int:
        """Signal every running plan; each ends HALTED unless it has already submitted."""
        handles = [self.client.get_workflow_handle(execution.id, run_id=execution.run_id) async for execution in self.client.list_workflows(RUNNING_PLANS)]
        outcomes = await asyncio.gather(*(handle.signal("halt", self.reason or "halted") for handle in handles), return_exceptions=True)
        failed = sum(1 for outcome in outcomes if isinstance(outcome, Exception))  # most likely finished meanwhile
        log.warning("stage=killswitch event=signalled workflows=%d already_finished=%d", len(handles) - failed, failed)
        return len(handles) - failed


def _reason(data: bytes | None) -> str:
    try:
        payload = json.loads(data or b"{}")
        return str(payload.get("reason") or "halted") if isinstance(payload, dict) else "halted"
    except ValueError:
        return (data or b"halted").decode(errors="replace")[:200] or "halted"
