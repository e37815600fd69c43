"""The kill switch: `system.killswitch` halts, `system.resume` resumes, on the SYSTEM stream.

The state is a value the stream holds: the newer (by stream sequence) of the last halt and
the last resume decides. Every worker keeps it in process (the bridge stops taking plans
and submit refuses to send while it is set) and follows the stream three ways, all fed
through one rule, "apply a message only if its sequence is newer than the last applied":

1. An ordered consumer on SYSTEM filtered to the two subjects, deliver policy
   last-per-subject: created before anything is read, it hands over the current last halt
   and resume and then every new one, so no halt falls between "restore" and "subscribe"
   (the old start read the last messages, then subscribed with core NATS: a halt in between
   was missed, and one published while the connection was down was never seen).
2. A re-read of the last halt and resume on every reconnect (nats-py's reconnected
   callback). The ordered consumer alone is not enough there: nats-py resubscribes its
   inbox on reconnect, but the server drops the ephemeral consumer after 5 s without
   interest (and all of them when nats-server restarts, they are in memory), and nats-py
   only notices and recreates it after two missed idle heartbeats (10 s), or on the next
   message's sequence gap, which a halt that was already sent into the dead connection
   never produces. The re-read makes the halt effective as soon as requests flow again.
3. The same re-read every HEARTBEAT_S, a backstop for anything else that silences the
   consumer (slow-consumer drops, a consumer deleted by hand, SYSTEM recreated).

A worker that cannot hear the stream (cut off from NATS) cannot know whether a halt was
published: after UNHEARD_S without a successful read it refuses to send anything new
(`unheard`), fail-closed, until it hears the stream again. Its plans cannot be recorded
meanwhile anyway (the record is in NATS), so what this stops is copies of transactions that
may never have reached the wire.

Each worker acknowledges a halt in its presence entry (`worker/presence.py`) right after
the flag is set, so `hft-executor halt --wait` can tell which live workers stopped
sending. On a halt the worker also signals `halt` to every running ExecutePlan workflow
found by a visibility query (the query lags new starts by tens of ms; the flag covers that
gap) and announces it on `metrics.executor.stopped`.
"""
from __future__ import annotations

import asyncio
import getpass
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from temporalio.client import Client

from .presence import HEARTBEAT_S, Identity, Presence, now_ms
from .streams import KILLSWITCH_SUBJECT, RESUME_SUBJECT, STOPPED_SUBJECT

log = logging.getLogger("hft.killswitch")
UNHEARD_S = 3.0  # three missed re-reads
ACK_DRAIN_S = 5.0
RUNNING_PLANS = 'WorkflowType = "ExecutePlan" AND ExecutionStatus = "Running"'
SYSTEM_STREAM = "SYSTEM"


def default_sender() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def halt_message(reason: str, by: str) -> bytes:
    return json.dumps({"reason": reason, "by": by, "timestamp": int(time.time() * 1000)}).encode()


def parse_message(data: bytes | None) -> tuple[str, str]:
    """(reason, by) of a halt or resume; anything an operator may have typed by hand is accepted."""
    try:
        payload = json.loads(data or b"{}")
    except ValueError:
        return (data or b"halted").decode(errors="replace")[:200] or "halted", "unknown"
    if not isinstance(payload, dict):
        return "halted", "unknown"
    return str(payload.get("reason") or "halted")[:200], str(payload.get("by") or "unknown")[:200]


async def last_state(js: JetStreamContext) -> tuple[tuple[int, bytes] | None, tuple[int, bytes] | None]:
    """(seq, data) of the last halt and of the last resume, as one consistent snapshot.

    Two reads are not atomic: a halt and a resume landing between them could give a resume
    that looks newest while a later halt exists. Reading the halt again and retrying when it
    moved closes that.
    """

    async def last(subject: str) -> tuple[int, bytes] | None:
        try:
            message = await js.get_last_msg(SYSTEM_STREAM, subject)
            return message.seq, message.data or b""
        except NotFoundError:
            return None

    halt = await last(KILLSWITCH_SUBJECT)
    while True:
        resume = await last(RESUME_SUBJECT)
        again = await last(KILLSWITCH_SUBJECT)
        if again == halt:
            return halt, resume
        halt = again


class KillSwitch:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        client: Client | None,
        executor_name: str,
        on_change: Callable[[bool], None] | None = None,
        *,
        worker_id: str | None = None,
        replicas: int = 1,
        sends_drained: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.replicas = replicas
        self.client = client  # None: nothing to signal (a process without a Temporal client)
        self.executor_name = executor_name
        self.identity = Identity.of_this_process(executor_name, worker_id)
        self.reason: str | None = None
        self.by: str | None = None
        self.halt_seq: int | None = None
        self.halt_applied_at: int | None = None
        # A send that passed the gate just before the flag was set may still be on its way: the
        # acknowledgment waits for it, so nothing new reaches the wire after `halt --wait` returns.
        self.sends_drained = sends_drained
        self.acked_seq: int | None = None
        self.applied_seq = 0
        self.on_change = on_change or (lambda halted: None)
        self.presence: Presence | None = None
        self._subscription = None
        self._tasks: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None
        self._starting = True
        self._reset_lock = asyncio.Lock()
        self.heard_at = time.monotonic()  # the last successful read of the state from the stream
        self._unheard_logged = False

    @property
    def worker_id(self) -> str:
        return self.identity.id

    def halted(self) -> str | None:
        return self.reason

    def unheard(self) -> str | None:
        """Why this worker cannot tell whether a halt is in force now (fail-closed), or None."""
        unheard = time.monotonic() - self.heard_at
        if unheard > UNHEARD_S:
            if not self._unheard_logged:
                self._unheard_logged = True
                log.warning("stage=killswitch event=unheard seconds=%.1f worker=%s: sending nothing new until the state is read again", unheard, self.worker_id)
            return f"the kill switch has not been heard for {unheard:.1f} s (NATS unreachable)"
        return None

    def _heard(self) -> None:
        self.heard_at = time.monotonic()
        if self._unheard_logged:
            self._unheard_logged = False
            log.info("stage=killswitch event=heard_again worker=%s", self.worker_id)

    def state(self) -> dict:
        """What the presence entry says about the kill switch (read at each write)."""
        return {
            "halted": self.reason is not None,
            "reason": self.reason,
            "by": self.by,
            "haltSeq": self.acked_seq if self.reason is not None else self.halt_seq,
            "haltAppliedAt": self.halt_applied_at,
            "stateSeq": self.applied_seq,
        }

    async def start(self) -> None:
        self.presence = await Presence.open(self.js, self.identity, self.state, replicas=self.replicas)
        await self._subscribe()
        # The consumer delivers asynchronously; reading here as well means the state is
        # settled when start returns, before the bridge takes its first plan.
        await self.refresh("start")
        self.on_change(self.reason is not None)
        self._starting = False
        await self.presence.write()
        self.presence.start()
        self._refresher = asyncio.create_task(self._refresh_periodically(), name="killswitch-refresh")
        log.info("stage=killswitch event=started worker=%s halted=%s stateSeq=%d", self.worker_id, str(self.reason is not None).lower(), self.applied_seq)

    async def _subscribe(self) -> None:
        self._subscription = await self.js.subscribe(
            KILLSWITCH_SUBJECT,
            stream=SYSTEM_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            config=ConsumerConfig(filter_subjects=[KILLSWITCH_SUBJECT, RESUME_SUBJECT]),
        )

    async def stop(self) -> None:
        tasks = [task for task in (self._refresher, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.presence is not None:
            await self.presence.stop()
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception:  # the connection may be closing already
                pass

    # --- following the stream -------------------------------------------------------------------

    async def _on_message(self, message) -> None:
        self._heard()
        self._apply(message.metadata.sequence.stream, message.subject, message.data, "start" if self._starting else "stream")

    async def reconnected(self) -> None:
        """For nats-py's reconnected callback, which runs inside its reconnect loop: the reading
        is done outside it, so a slow or failing read cannot stall or restart the reconnect."""
        log.info("stage=killswitch event=reconnected worker=%s", self.worker_id)
        self._spawn(self.refresh("reconnect"))

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.refresh("refresh")
            except Exception as error:  # disconnected: the reconnect re-read follows
                log.debug("stage=killswitch event=refresh_failed error=%s", type(error).__name__)

    async def refresh(self, source: str) -> None:
        """Re-read the last halt and resume from the stream and apply the newer one."""
        halt, resume = await last_state(self.js)
        self._heard()
        newest = max((m for m in ((halt, KILLSWITCH_SUBJECT), (resume, RESUME_SUBJECT)) if m[0] is not None), key=lambda m: m[0][0], default=None)
        newest_seq = newest[0][0] if newest else 0
        if newest_seq < self.applied_seq:
            async with self._reset_lock:  # two re-reads noticing it together resubscribe once
                if newest_seq < self.applied_seq and await self._stream_was_reset():
                    # A recreated SYSTEM starts again at sequence 1: without this, every halt
                    # below the old sequence would be ignored as stale.
                    log.warning("stage=killswitch event=stream_reset appliedSeq=%d lastSeq=%d", self.applied_seq, newest_seq)
                    self.applied_seq = 0
                    await self._resubscribe()
                    if newest is None:
                        self._clear(0, "stream_reset", "unknown")
                        return
        if newest is not None:
            (seq, data), subject = newest
            self._apply(seq, subject, data, source)

    async def _stream_was_reset(self) -> bool:
        # Asked after applied_seq was set, so a stream holding that message reports a last
        # sequence at least as high; only a recreated stream reports less.
        info = await self.js.stream_info(SYSTEM_STREAM)
        return info.state.last_seq < self.applied_seq

    async def _resubscribe(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception:
                pass
        await self._subscribe()

    def _apply(self, seq: int, subject: str, data: bytes | None, source: str) -> None:
        # Synchronous from the sequence check to the flag: two paths delivering the same
        # message, or an older one late, cannot interleave here.
        if seq <= self.applied_seq:
            return
        self.applied_seq = seq
        reason, by = parse_message(data)
        if subject == KILLSWITCH_SUBJECT:
            self.reason, self.by, self.halt_seq, self.halt_applied_at = reason, by, seq, now_ms()
            self.on_change(True)
            event = "restored halted=true" if source == "start" else "halt"
            log.warning("stage=killswitch event=%s seq=%d reason=%s by=%s source=%s worker=%s", event, seq, json.dumps(reason), json.dumps(by), source, self.worker_id)
            self._spawn(self._after_halt(seq, announce=source != "start"))
        else:
            self._clear(seq, source, by)

    def _clear(self, seq: int, source: str, by: str) -> None:
        was = self.reason
        self.reason, self.by = None, by
        self.on_change(False)
        if was is not None or source != "start":
            log.warning("stage=killswitch event=resume seq=%d by=%s source=%s worker=%s", seq, json.dumps(by), source, self.worker_id)
        if self.presence is not None:
            self._spawn(self.presence.write())

    async def _after_halt(self, seq: int, announce: bool) -> None:
        # The flag is already set: nothing new passes the gate from here on. The acknowledgment says
        # that nothing more reaches the wire, so it waits until every send already past the gate (and
        # every backup copy) is answered, however long that takes (each has its own timeout). Never
        # before: `halt --wait` that times out says "not acknowledged", which is then the truth.
        signalled = asyncio.create_task(self.halt_running())  # the workflows meanwhile, not after the drain
        if self.sends_drained is not None:
            while True:
                try:
                    await asyncio.wait_for(self.sends_drained(), ACK_DRAIN_S)
                    break
                except asyncio.TimeoutError:
                    log.warning("stage=killswitch event=sends_still_in_flight seq=%d worker=%s waited_s=%.0f: not acknowledged yet", seq, self.worker_id, ACK_DRAIN_S)
        if self.reason is None:  # resumed while draining: this halt is over, nothing to acknowledge
            await signalled
            return
        self.acked_seq = seq
        if self.presence is not None and await self.presence.write():
            log.info("stage=killswitch event=acknowledged seq=%d worker=%s", seq, self.worker_id)
        await signalled
        if announce:
            payload = {"executor": self.executor_name, "worker": self.worker_id, "reason": self.reason, "by": self.by, "seq": seq, "timestamp": now_ms()}
            try:
                await self.nc.publish(STOPPED_SUBJECT, json.dumps(payload).encode())
            except Exception as error:
                log.warning("stage=killswitch event=announce_failed error=%s", type(error).__name__)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed re-read is retried by the next one (every second); say so once here.
            log.warning("stage=killswitch event=task_failed task=%s error=%s", task.get_coro().__qualname__, type(task.exception()).__name__)

    async def halt_running(self) -> int:
        """Signal every running plan; each ends HALTED unless it has already submitted."""
        if self.client is None:
            return 0
        try:
            handles = [self.client.get_workflow_handle(execution.id, run_id=execution.run_id) async for execution in self.client.list_workflows(RUNNING_PLANS)]
        except Exception as error:  # Temporal unreachable: the flag still stops every send
            log.warning("stage=killswitch event=signal_failed error=%s", type(error).__name__)
            return 0
        outcomes = await asyncio.gather(*(handle.signal("halt", self.reason or "halted") for handle in handles), return_exceptions=True)
        failed = sum(1 for outcome in outcomes if isinstance(outcome, Exception))  # most likely finished meanwhile
        log.warning("stage=killswitch event=signalled workflows=%d already_finished=%d", len(handles) - failed, failed)
        return len(handles) - failed
