"""One fault campaign: publish plans open loop, inject faults on schedule, wait, collect, check.

The campaign process is the planner (it publishes), the fault injector and the observer (a
plain subscription on executed.> from before the first plan, the EXECUTED stream, Temporal,
the cluster's admin view, the wallet leases, the PLANNED consumer). It never reaches into a
worker: everything it knows, an operator could know.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from nats.js.errors import NotFoundError

from worker.config import ExecutorConfig
from worker.main import connect_temporal
from worker.nats_connection import connect as nats_connect
from worker.streams import ensure_streams

from . import evidence, operator
from .checker import Verdict, check, plan_of_memo
from .plans import MAX_LATENCY_MS, PlanSpec, draw_plans
from .schedule import Fault, draw_schedule
from .stack import ChaosStack, WorkerSlot

PUBLISH_TIMEOUT_S = 2.0
PUBLISH_RETRY_S = 0.25
VICTIM_WAIT_S = 15.0
# A kill waits this long for a survivor to be ready before it is skipped (a kill is never
# skipped for a moment's lack of one: a run must carry its kills).
VICTIM_PATIENCE_S = 120.0
BLOCKHASH_WAIT_S = 90.0
STORY_LOG_LINES = 120


@dataclass
class Settings:
    plans: int = 300
    rate: float = 10.0
    workers: int = 2
    seed: int = 0
    slot_ms: float = 100.0
    wallets: int = 24
    nats_cluster: int = 1
    cluster_faults: bool = True
    worker_kills: int = 10
    nats_kills: int = 2
    temporal_kills: int = 1
    halts: int = 1
    results_timeout_s: float = 120.0
    hostile: int = 0  # hostile messages (chaos/hostile.py) published among the plans
    market: str | None = None  # the local cluster's market profile (None: calm); the campaign's own cluster faults still apply


@dataclass
class Outcome:
    verdict: Verdict
    evidence: dict
    stories: dict[str, dict]
    report: dict
    run_dir: Path


class Campaign:
    def __init__(self, settings: Settings, run_dir: Path, stderr=sys.stderr) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.stderr = stderr
        self.rng = random.Random(settings.seed)
        self.runtime_rng = random.Random(settings.seed + 1)  # choices made at run time (a replacement victim)
        self.stack = ChaosStack(
            run_dir, slot_ms=settings.slot_ms, wallets=settings.wallets, workers=settings.workers,
            nats_cluster=settings.nats_cluster, note=self.note, market=settings.market,
        )  # fmt: skip
        self.started_ns = 0
        self.faults: list[dict] = []  # what the campaign did
        self.events: list[dict] = []  # what it saw happen on its own (a worker that exited, NATS reconnects)
        self.kills: list[dict] = []
        self.outages: list[dict] = []
        self.halts: list[dict] = []
        self.plans: dict[str, dict] = {}  # planId -> the plan as published
        self.hostile: list[dict] = []  # {"planId", "kind", "seq", "refused"}: what became of each hostile message at publish
        self.specs: dict[str, PlanSpec] = {}
        self.published_ns: dict[str, int] = {}
        self.publishes: list[dict] = []
        self.stored: dict[int, dict] = {}
        self.stored_plans: set[str] = set()
        self.exclusive = asyncio.Lock()
        self.halts_waiting = 0
        self.cluster_wanted: dict | None = None
        self.cluster_paused = False
        self.cluster_applied: dict | None = None
        self.market_faults: dict | None = None  # the cluster's own (its --market's) faults, read before the first change
        self.closing = False
        self._next_seq = 1

    # --- logging --------------------------------------------------------------------------------

    def note(self, kind: str, fault: bool = True, **fields) -> dict:
        """Record an event with its wall-clock time and say it on stderr, one key=value line."""
        event = {"kind": kind, "at_ns": time.time_ns(), **fields}
        (self.faults if fault else self.events).append(event)
        elapsed = (event["at_ns"] - self.started_ns) / 1e9 if self.started_ns else 0.0
        details = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        self.say(f"chaos event={kind} t={elapsed:.2f}s at_ns={event['at_ns']} {details}".rstrip())
        return event

    def say(self, line: str) -> None:
        self.stderr.write(line + "\n")
        self.stderr.flush()

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        s = self.settings
        self.say(f"chaos event=starting plans={s.plans} rate={s.rate} workers={s.workers} seed={s.seed} dir={self.run_dir}")
        await self.stack.start()
        self.env = self.stack.environment(role="operator")  # halt and resume are the operator's
        # The observer reads as the operator; plans go in as the planner's (each user only what it may do).
        self.nc = await nats_connect(
            self.stack.nats_url, self.stack.nats_auth("operator"), name="chaos-observer", max_reconnect_attempts=-1,
            reconnect_time_wait=0.25, connect_timeout=2, error_cb=_quiet, disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
        )  # fmt: skip
        self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        self.planner = await nats_connect(
            self.stack.nats_url, self.stack.nats_auth("planner"), name="chaos-planner", max_reconnect_attempts=-1,
            reconnect_time_wait=0.25, connect_timeout=2, error_cb=_quiet,
        )  # fmt: skip
        self.planner_js = self.planner.jetstream(timeout=PUBLISH_TIMEOUT_S)
        await ensure_streams(self.js)
        # Every publish, before JetStream's dedupe: a plain core subscription, from before the first plan.
        await self.nc.subscribe("executed.>", cb=self._on_publish)
        await self.nc.flush()
        self.http = aiohttp.ClientSession()
        try:
            self.say(f"chaos event=ready workers={[slot.name for slot in self.stack.slots]}")
            return await self._campaign()
        finally:
            self.closing = True
            await self.http.close()
            try:
                await asyncio.wait_for(self.planner.close(), 5)
                await asyncio.wait_for(self.nc.close(), 5)
            except Exception:  # noqa: BLE001 - closing a connection to a stack being torn down
                pass

    async def _campaign(self) -> Outcome:
        s = self.settings
        run = uuid.uuid4().hex[:6]
        specs = draw_plans(self.rng, s.plans, self.stack.keys.public_keys(), run)
        self.specs = {spec.plan_id: spec for spec in specs}
        schedule, window_s = draw_schedule(
            self.rng, publish_s=s.plans / s.rate, workers=s.workers, nats_nodes=len(self.stack.nats.nodes),
            max_latency_s=MAX_LATENCY_MS[1] / 1000, worker_kills=s.worker_kills, nats_kills=s.nats_kills,
            temporal_kills=s.temporal_kills, halts=s.halts, cluster_faults=s.cluster_faults,
        )  # fmt: skip
        self.say(f"chaos event=schedule faults={len(schedule)} window_s={window_s:.1f} " + " ".join(f"{f.kind}@{f.at_s}" for f in schedule if f.kind != "cluster_faults"))

        loop = asyncio.get_running_loop()
        self.started_ns = time.time_ns()
        start = loop.time()
        poller = asyncio.create_task(self._poll_stored_forever())
        progress = asyncio.create_task(self._progress())
        try:
            publisher = asyncio.create_task(self._publish_all(specs, start))
            injector = asyncio.create_task(self._inject(schedule, start))
            hostile = asyncio.create_task(self._publish_hostile(start))
            await asyncio.gather(publisher, injector, hostile)
            self.note("last_fault", fault=False)
            await self._set_cluster_faults(None, clear=True)
            await self._all_workers_up()
            results_wait = await self._wait_for_results()
            expiry = await self._wait_for_blockhashes()
        finally:
            poller.cancel()
            progress.cancel()
        await self._poll_stored_once()
        await asyncio.sleep(1.0)  # visibility lags a closed workflow by a moment
        found, histories = await self._collect()
        found["results_wait"] = results_wait
        found["blockhash_wait"] = expiry
        verdict = check(found)
        stories = self._stories(verdict, found, histories)
        report = self._report(verdict, found, stories)
        return Outcome(verdict, found, stories, report, self.run_dir)

    # --- publishing --------------------------------------------------------------------------------

    async def _publish_all(self, specs: list[PlanSpec], start: float) -> None:
        """Open loop: plan i at start + i/rate, whatever became of the ones before it."""
        loop = asyncio.get_running_loop()
        pending = []
        for index, spec in enumerate(specs):
            delay = start + index / self.settings.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            plan = spec.build(self.stack.pool, int(time.time() * 1000))
            self.plans[spec.plan_id] = plan
            pending.append(asyncio.create_task(self._publish(plan)))
        await asyncio.gather(*pending)
        self.note("last_plan_published", fault=False, published=len(self.published_ns))

    async def _publish(self, plan: dict) -> None:
        """The planner is not under test: it retries until NATS stores the plan (Nats-Msg-Id drops a retry's copy)."""
        data = json.dumps(plan).encode()
        subject = f"execution.planned.{plan['opportunityId']}"
        while True:
            try:
                await self.planner_js.publish(subject, data, timeout=PUBLISH_TIMEOUT_S, headers={"Nats-Msg-Id": plan["planId"]})
                self.published_ns[plan["planId"]] = time.time_ns()
                return
            except Exception:  # noqa: BLE001 - NATS down or reconnecting
                await asyncio.sleep(PUBLISH_RETRY_S)

    async def _publish_hostile(self, start: float) -> None:
        """`--hostile N`: N hostile messages spread over the same window as the plans, with the planner's credentials."""
        count = self.settings.hostile
        if not count:
            return
        from .hostile import generate

        wallet = self.stack.keys.public_keys()[0]
        made = await asyncio.to_thread(generate, lambda plan_id: self.stack.pool.plan(plan_id, wallet, "rpc"), count, self.settings.seed)
        self.say(f"chaos event=hostile_generated count={len(made)} seed={self.settings.seed}")
        loop = asyncio.get_running_loop()
        window = self.settings.plans / self.settings.rate
        for index, hostile in enumerate(made):
            delay = start + index * window / count - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.hostile.append(await self._publish_one_hostile(hostile))
        self.note("last_hostile_published", fault=False, published=len(self.hostile), refused=sum(h["refused"] for h in self.hostile))

    async def _publish_one_hostile(self, hostile) -> dict:
        entry = {"planId": hostile.plan_id, "kind": hostile.kind, "seq": None, "refused": False}
        while True:
            try:
                ack = await self.planner_js.publish(
                    f"execution.planned.{hostile.subject_tail}", hostile.data, timeout=PUBLISH_TIMEOUT_S, headers={"Nats-Msg-Id": hostile.plan_id}
                )
                return entry | {"seq": ack.seq}
            except Exception as error:  # noqa: BLE001
                if "maximum" in str(error).lower():  # past max_msg_size or NATS's max payload: told to the planner, final
                    return entry | {"refused": True}
                await asyncio.sleep(PUBLISH_RETRY_S)  # NATS down or reconnecting

    def _hostile_unanswered(self) -> list[str]:
        stored = self.stored_plans
        return [h["planId"] for h in self.hostile if not h["refused"] and h["planId"] not in stored and f"invalid-PLANNED-{h['seq']}" not in stored]

    # --- results, as they come ---------------------------------------------------------------------

    async def _on_publish(self, message) -> None:
        try:
            result = json.loads(message.data)
        except ValueError:
            result = {}
        self.publishes.append(
            {
                "planId": result.get("planId"), "status": result.get("status"), "errorCode": result.get("errorCode"),
                "signature": result.get("signature"), "subject": message.subject, "at_ns": time.time_ns(),
            }
        )  # fmt: skip

    async def _poll_stored_once(self) -> None:
        info = await self.js.stream_info("EXECUTED")
        while self._next_seq <= info.state.last_seq:
            try:
                message = await self.js.get_msg("EXECUTED", self._next_seq)
            except NotFoundError:
                self._next_seq += 1
                continue
            result = json.loads(message.data)
            self.stored[message.seq] = {
                "seq": message.seq, "planId": result.get("planId"), "status": result.get("status"),
                "errorCode": result.get("errorCode"), "signature": result.get("signature"), "subject": message.subject,
            }  # fmt: skip
            self.stored_plans.add(result.get("planId"))
            self._next_seq += 1

    async def _poll_stored_forever(self) -> None:
        while True:
            try:
                await self._poll_stored_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - NATS down: read on when it is back
                pass
            await asyncio.sleep(0.5)

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            results = len(self.stored_plans & self.plans.keys())
            ready = len(self.stack.ready_slots())
            self.say(
                f"chaos progress t={(time.time_ns() - self.started_ns) / 1e9:.1f}s published={len(self.published_ns)}/{self.settings.plans} "
                f"results={results} publishes={len(self.publishes)} workers_ready={ready}/{self.settings.workers} faults={len(self.faults)}"
            )

    async def _disconnected(self) -> None:
        if self.started_ns and not self.closing:
            self.note("observer_disconnected", fault=False)

    async def _reconnected(self) -> None:
        if self.started_ns:
            self.note("observer_reconnected", fault=False)

    # --- faults --------------------------------------------------------------------------------------

    async def _inject(self, schedule: list[Fault], start: float) -> None:
        loop = asyncio.get_running_loop()

        async def at(fault: Fault) -> None:
            delay = start + fault.at_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            handler = {
                "worker_kill": self._worker_kill,
                "nats_kill": self._nats_kill,
                "temporal_kill": self._temporal_kill,
                "halt": self._halt,
                "cluster_faults": self._cluster_window,
            }[fault.kind]
            try:
                await handler(fault.params)
            except Exception as error:  # noqa: BLE001 - a fault that could not be injected is reported, the run goes on
                self.note("fault_failed", fault=False, fault_kind=fault.kind, error=f"{type(error).__name__}: {error}"[:300])

        await asyncio.gather(*(at(fault) for fault in schedule))

    async def _victim(self, preferred: int, *, hold: bool) -> WorkerSlot | None:
        """A ready worker that is neither cut off nor being killed, always leaving at least one ready
        survivor when there are two or more (waiting for one if need be, skipping the fault only
        after VICTIM_PATIENCE_S); marked (held, or being killed) before this returns.
        Between the check and the mark nothing awaits, so two faults due at once never pick the same worker."""
        deadline = time.monotonic() + VICTIM_WAIT_S
        if hold:
            self.halts_waiting += 1
        try:
            return await self._choose(preferred, hold, deadline)
        finally:
            if hold:
                self.halts_waiting -= 1

    async def _choose(self, preferred: int, hold: bool, deadline: float) -> WorkerSlot | None:
        while True:
            if not hold and self.halts_waiting:
                # A halt waits for two ready workers (one to cut off, one to carry on); kills that keep
                # taking workers would push it past the last plan, where it would stop nothing.
                await asyncio.sleep(0.05)
                deadline = time.monotonic() + VICTIM_WAIT_S
                continue
            candidates = [slot for slot in self.stack.ready_slots() if not slot.held and not slot.killing]
            survivors_needed = 1 if self.settings.workers > 1 else 0
            # Never the last ready worker: a takeover is measured onto a survivor, not onto a restart.
            if len(candidates) > survivors_needed:
                chosen = [slot for slot in candidates if slot.index == preferred]
                slot = chosen[0] if chosen else self.runtime_rng.choice(candidates)
                if hold:
                    slot.held = True
                else:
                    slot.killing = True
                return slot
            if time.monotonic() > deadline + VICTIM_PATIENCE_S:
                return None
            await asyncio.sleep(0.05)

    async def _worker_kill(self, params: dict) -> None:
        slot = await self._victim(params["slot"], hold=False)
        if slot is None:
            self.note("worker_kill_skipped", fault=False, reason="no ready worker")
            return
        kill = await self.stack.kill_worker(slot)
        self.kills.append(kill)
        self.note("worker_kill", slot=slot.index, name=kill["name"], pid=kill["pid"], identity=kill["identity"], restart_after_s=params["restart_after_s"])
        await asyncio.sleep(params["restart_after_s"])
        self.stack.start_worker(slot)
        self.note("worker_restart", slot=slot.index, name=slot.name, pid=slot.process.pid)

    async def _nats_kill(self, params: dict) -> None:
        async with self.exclusive:
            node = params["node"] % len(self.stack.nats.nodes)
            pid = await self.stack.nats.kill(node)
            down = time.time_ns()
            self.kills.append({"kind": "nats", "at_ns": down, "node": node, "pid": pid})
            self.note("nats_kill", node=node, pid=pid, down_s=params["down_s"])
            await asyncio.sleep(params["down_s"])
            await self.stack.nats.restart(node)
            up = time.time_ns()
            if len(self.stack.nats.nodes) == 1:  # one node of a cluster down is no outage
                self.outages.append({"kind": "nats", "from_ns": down, "to_ns": up})
            self.note("nats_restart", node=node, pid=self.stack.nats.nodes[node].pid, outage_s=round((up - down) / 1e9, 2))

    async def _temporal_kill(self, params: dict) -> None:
        async with self.exclusive:
            pid = await self.stack.kill_temporal()
            down = time.time_ns()
            self.kills.append({"kind": "temporal", "at_ns": down, "pid": pid})
            self.note("temporal_kill", pid=pid, down_s=params["down_s"])
            await asyncio.sleep(params["down_s"])
            await self.stack.restart_temporal()
            up = time.time_ns()
            self.outages.append({"kind": "temporal", "from_ns": down, "to_ns": up})
            self.note("temporal_restart", pid=self.stack.temporal.pid, outage_s=round((up - down) / 1e9, 2))

    async def _halt(self, params: dict) -> None:
        """Cut one worker off NATS, halt, restore the cut while halted, then resume."""
        async with self.exclusive:
            await self._pause_cluster_faults(True)
            slot = await self._victim(params["slot"], hold=True)
            if slot is None:
                self.note("halt_skipped", fault=False, reason="no ready worker to cut off")
                await self._pause_cluster_faults(False)
                return
            record: dict = {"cut_slot": slot.index, "cut_worker": slot.name}
            try:
                closed = slot.proxy.cut()
                record["cut_ns"] = self.note("cut", slot=slot.index, name=slot.name, connections_closed=closed)["at_ns"]
                await asyncio.sleep(0.5)
                halting = asyncio.create_task(self._halt_command())
                self.note("halt_issued", cut_off=slot.name)
                await asyncio.sleep(params["restore_after_s"])
                slot.proxy.restore()
                record["restored_ns"] = self.note("cut_restored", slot=slot.index, name=slot.name)["at_ns"]
                record.update(await halting)
                await asyncio.sleep(params["resume_after_s"])
            finally:
                slot.proxy.restore()
                record["resumed_ns"] = await self._resume()
                acknowledged, resumed = record.get("acknowledged_ns"), record["resumed_ns"]
                record["plans_published_while_halted"] = sum(
                    1 for at in self.published_ns.values() if acknowledged and acknowledged <= at < resumed
                )
                if not record["plans_published_while_halted"]:
                    self.note("halt_without_plans", fault=False, why="no plan was published while halted: sent_after_halt checked nothing")
                self.halts.append(record)
                self.outages.append({"kind": "halt", "from_ns": record.get("issued_ns") or record.get("cut_ns"), "to_ns": record["resumed_ns"]})
                slot.held = False
                await self._pause_cluster_faults(False)

    async def _halt_command(self) -> dict:
        outcome = await operator.halt(self.env)
        self.note(
            "halt_acknowledged" if outcome["acknowledged_ns"] else "halt_failed",
            returncode=outcome["returncode"], acknowledged=outcome["acknowledged"], missing=outcome["missing"],
            took_s=round((outcome["returned_ns"] - outcome["issued_ns"]) / 1e9, 2), error=outcome.get("error"),
        )  # fmt: skip
        return outcome

    async def _resume(self) -> int:
        """Resume, again until it is stored: a campaign left halted would only measure deadlines."""
        for attempt in range(10):
            outcome = await operator.resume(self.env)
            if outcome["returncode"] == 0:
                self.note("resume", took_s=round((outcome["returned_ns"] - outcome["issued_ns"]) / 1e9, 2))
                return outcome["issued_ns"]
            self.note("resume_failed", fault=False, attempt=attempt, error=outcome.get("error"))
            await asyncio.sleep(1.0)
        raise RuntimeError("resume failed 10 times")

    async def _cluster_window(self, params: dict) -> None:
        self.cluster_wanted = params if params.get("on") else None
        await self._apply_cluster_faults()

    async def _set_cluster_faults(self, wanted: dict | None, *, clear: bool = False) -> None:
        if clear:
            self.cluster_paused = False
        self.cluster_wanted = wanted
        await self._apply_cluster_faults(force=clear)

    async def _pause_cluster_faults(self, paused: bool) -> None:
        self.cluster_paused = paused
        await self._apply_cluster_faults()

    async def _apply_cluster_faults(self, *, force: bool = False) -> None:
        """Put what is wanted (nothing while paused) on the cluster; say so when it changes."""
        wanted = None if self.cluster_paused else self.cluster_wanted
        if wanted == self.cluster_applied and not force:
            return
        if self.market_faults is None:
            self.market_faults = await operator.get_faults(self.http, self.stack.admin)
        body = operator.cluster_faults(
            drop=wanted["drop"] if wanted else 0.0, rate_limit=wanted["rate_limit"] if wanted else 0.0, delay_ms=wanted["delay_ms"] if wanted else 0.0,
            market=self.market_faults,
        )  # fmt: skip
        await operator.put_faults(self.http, self.stack.admin, body)
        changed = wanted != self.cluster_applied
        self.cluster_applied = wanted
        if wanted and changed:
            self.note("cluster_faults_on", drop=wanted["drop"], rate_limit=wanted["rate_limit"], delay_ms=wanted["delay_ms"], reads="reads" in body)
        elif changed:
            self.note("cluster_faults_off", **({"why": "halt"} if self.cluster_paused else {}))

    # --- after the last plan ---------------------------------------------------------------------------

    async def _all_workers_up(self) -> None:
        for slot in self.stack.slots:
            if not slot.alive:
                self.stack.start_worker(slot)
                self.note("worker_restart", fault=False, slot=slot.index, name=slot.name, why="every worker runs for the end")
        if not await self.stack.wait_ready(self.stack.slots, timeout=60):
            self.note("workers_not_ready", fault=False, slots=[slot.name for slot in self.stack.slots if not slot.ready])

    async def _wait_for_results(self) -> dict:
        """Until every plan has its stored result and nothing waits on PLANNED, within a generous bound."""
        started = time.monotonic()
        bound = self.settings.results_timeout_s
        consumer = None
        while time.monotonic() - started < bound:
            missing = len(self.plans.keys() - self.stored_plans) + len(self._hostile_unanswered())
            try:
                consumer = await evidence.planned_consumer(self.js)
            except Exception:  # noqa: BLE001
                consumer = None
            drained = consumer is not None and not (consumer["num_pending"] or consumer["num_ack_pending"])
            if not missing and drained:
                break
            await asyncio.sleep(0.5)
        waited = round(time.monotonic() - started, 1)
        missing = sorted(self.plans.keys() - self.stored_plans)
        exceeded = bool(missing) or consumer is None or bool(consumer["num_pending"] or consumer["num_ack_pending"])
        if exceeded:
            self.note("results_wait_exceeded", fault=False, bound_s=bound, missing=len(missing), consumer=consumer)
        else:
            self.note("all_results", fault=False, waited_s=waited)
        return {"bound_s": bound, "waited_s": waited, "exceeded": exceeded, "missing": missing[:50]}

    async def _wait_for_blockhashes(self) -> dict:
        """Until the chain is past every recorded transaction's lastValidBlockHeight: nothing of this run can land later."""
        records = {plan_id: record for plan_id, record in (await evidence.records(self.js)).items() if plan_id in self.plans}
        heights = [r["last_valid_block_height"] for r in records.values() if r.get("last_valid_block_height") is not None]
        target = max(heights, default=0)
        started = time.monotonic()
        height = await evidence.block_height(self.http, self.stack.admin)
        while height <= target and time.monotonic() - started < BLOCKHASH_WAIT_S:
            await asyncio.sleep(0.2)
            height = await evidence.block_height(self.http, self.stack.admin)
        self.records = records
        outcome = {"last_valid_block_height": target, "block_height": height, "waited_s": round(time.monotonic() - started, 1), "expired": height > target}
        self.note("blockhashes_expired" if height > target else "blockhash_wait_exceeded", fault=False, **outcome)
        return outcome

    async def _collect(self) -> tuple[dict, dict]:
        self.say("chaos event=collecting")
        config = ExecutorConfig.from_environment(self.env)
        client = await connect_temporal(config)  # a fresh client: the campaign's server may have been restarted
        workflows, histories = await evidence.workflows(client, list(self.plans))
        running = await evidence.running(client)
        leases, checked_at_ms = await evidence.leases(self.js)
        consumer = await evidence.planned_consumer(self.js)
        wire = await evidence.wire(self.http, self.stack.admin, self.started_ns - 1)
        plans = {
            plan_id: {
                "method": plan["executionMethod"], "kind": self.specs[plan_id].kind, "maxLatency": plan["maxLatency"],
                "deadline": plan["deadline"], "published_ns": self.published_ns.get(plan_id),
            }
            for plan_id, plan in self.plans.items()
        }  # fmt: skip
        found = {
            "seed": self.settings.seed,
            "started_ns": self.started_ns,
            "settings": self.settings.__dict__,
            "plans": plans,
            "publishes": self.publishes,
            "stored": [self.stored[seq] for seq in sorted(self.stored)],
            "workflows": workflows,
            "wire": wire,
            "records": self.records,
            "leases": leases,
            "checked_at_ms": checked_at_ms,
            "running": running,
            "planned_consumer": consumer,
            "kills": self.kills,
            "outages": self.outages,
            "halts": self.halts,
            "faults": self.faults,
            "events": self.events,
            "workers": [entry | {"slot": slot.index} for slot in self.stack.slots for entry in slot.history],
            "hostile": self.hostile,
        }
        return found, histories

    # --- the report ------------------------------------------------------------------------------------

    def _stories(self, verdict: Verdict, found: dict, histories: dict) -> dict[str, dict]:
        """Every failing plan, told whole: the plan, its publishes and stored result, Temporal's view and
        history, its record, its signatures on the wire, its leases, and every worker log line naming it."""
        failing = verdict.failing_plans()
        for sample in verdict.takeover:
            if sample["takeover_ms"] is None:
                failing.setdefault(sample["planId"], []).append("not_taken_over")
        logs = {path.name: path.read_bytes() for path in sorted((self.run_dir / "logs").glob("*.log"))}
        stories = {}
        for plan_id, broken in sorted(failing.items()):
            history = histories.get(plan_id)
            pattern = re.compile(rb"^.*plan=" + re.escape(plan_id.encode()) + rb"(?![A-Za-z0-9_.:-]).*$", re.MULTILINE)
            lines = [f"{name}: {match.group(0).decode(errors='replace')}" for name, data in logs.items() for match in pattern.finditer(data)]
            stories[plan_id] = {
                "invariants": broken,
                "violations": [v for items in verdict.violations.values() for v in items if v.get("planId") == plan_id],
                "plan": self.plans.get(plan_id),
                "published_ns": self.published_ns.get(plan_id),
                "publishes": [p for p in found["publishes"] if p["planId"] == plan_id],
                "stored": [m for m in found["stored"] if m["planId"] == plan_id],
                "workflow": {k: v for k, v in found["workflows"].get(plan_id, {}).items() if k != "events"},
                "history": json.loads(history.to_json()) if history is not None else None,
                "record": found["records"].get(plan_id),
                "wire": [row for row in found["wire"] if plan_of_memo(row.get("memos", []), {plan_id})],
                "leases": [lease for lease in found["leases"] if lease["lease"] == plan_id],
                "takeover": [s for s in verdict.takeover if s["planId"] == plan_id],
                "log": lines[:STORY_LOG_LINES],
            }
        return stories

    def _report(self, verdict: Verdict, found: dict, stories: dict) -> dict:
        samples = verdict.takeover
        return {
            "summary": verdict.summary,
            "violations": verdict.violations,
            "duplicate_results": verdict.duplicate_results,
            "takeover": {
                "samples": len(samples),
                "measured": sum(1 for s in samples if s["takeover_ms"] is not None),
                "with_outage_taken_off": sum(1 for s in samples if s["outage_ms"]),
                "not_taken_over": sum(1 for s in samples if s["takeover_ms"] is None),
                "by_held": {held: sum(1 for s in samples if s["held"] == held) for held in ("workflow", "bridge")},
                "slowest": sorted((s for s in samples if s["takeover_ms"] is not None), key=lambda s: -s["takeover_ms"])[:10],
            },
            "results_wait": found.get("results_wait"),
            "blockhash_wait": found.get("blockhash_wait"),
            "halts": found["halts"],
            "outages": found["outages"],
            "kills": found["kills"],
            "events": found["events"],
            "workers": found["workers"],
            "stories": stories,
        }


async def _quiet(_error: Exception) -> None:
    pass


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
