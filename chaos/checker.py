"""The campaign's invariants, checked from outside: a pure function from evidence to a verdict.

The evidence is plain JSON (what `chaos.evidence` collects, or what a test writes by hand),
so a verdict can be recomputed from a saved `evidence.json` and every invariant can be
shown to fail on a made-up violation. Its shape:

    {
      "seed": int,
      "plans": {planId: {"method", "kind", "maxLatency", "deadline", "published_ns": int | None}},
      "publishes": [{"planId", "status", "errorCode", "signature", "at_ns"}],  # plain subscription on executed.>, before dedupe
      "stored": [{"seq", "planId", "status", "errorCode", "signature"}],       # the EXECUTED stream, after dedupe
      "workflows": {planId: {"status": "COMPLETED" | "RUNNING" | "FAILED" | ... | "NOT_FOUND",
                             "result_status": str | None, "plan_status": str | None,
                             "events": [{"type", "at_ns", "identity"}]}},        # identity on task-started and started events
      "wire": [{"signature", "firstSeenNs", "timesReceived", "landedSlot", "err", "memos"}],  # the cluster's admin view
      "leases": [{"wallet", "lease", "expires_ms"}], "checked_at_ms": int,    # wallet_leases, as stored
      "running": [workflowId],                                                # visibility: ExecutePlan still running
      "planned_consumer": {"num_pending", "num_ack_pending", "num_redelivered"} | None,
      "kills": [{"kind": "worker" | "nats" | "temporal", "at_ns", "identity"?, "log_plans"?: [planId]}],
      "outages": [{"kind", "from_ns", "to_ns"}],                              # servers down, the halt, for takeover
      "halts": [{"acknowledged_ns": int | None, "resumed_ns": int | None, ...}],
      "faults": [{"kind", "at_ns", ...}],
      "hostile": [{"planId", "kind", "seq": int | None, "refused": bool}],   # `--hostile N` (chaos/hostile.py)
    }
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from devtools.demo import plan_memo

MEMO_PREFIX = plan_memo("")
SUCCESS = "success"
TX_FAILED = "TX_FAILED"
CLOSE_EVENTS = frozenset(
    {
        "WorkflowExecutionCompleted",
        "WorkflowExecutionFailed",
        "WorkflowExecutionTimedOut",
        "WorkflowExecutionTerminated",
        "WorkflowExecutionCanceled",
        "WorkflowExecutionContinuedAsNew",
    }
)
TASK_STARTED = "WorkflowTaskStarted"
EXECUTION_STARTED = "WorkflowExecutionStarted"

# Each of these must be zero for `ok`. duplicate_publishes is counted but is not among them:
# a worker that dies between its publish and its task completion publishes again on the
# re-run (at-least-once); that is harmless as long as the status is the same
# (contradicting_publishes) and the stream keeps one (duplicate_results).
INVARIANTS = (
    "lost",
    "duplicate_results",
    "contradicting_publishes",
    "temporal_mismatch",
    "disagree_with_chain",
    "multiple_signatures",
    "double_landed",
    "sent_after_halt",
    "leases_left",
    "running_left",
    "pending_left",
    "hostile_not_answered_once",
)


@dataclass
class Verdict:
    summary: dict  # the object `--json` prints
    violations: dict[str, list[dict]] = field(default_factory=dict)  # invariant -> [{"planId"?, "why"}]
    takeover: list[dict] = field(default_factory=list)  # one sample per plan a killed worker held
    duplicate_results: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])

    def failing_plans(self) -> dict[str, list[str]]:
        """planId -> the invariants it broke."""
        broken: dict[str, list[str]] = defaultdict(list)
        for name, items in self.violations.items():
            for item in items:
                if item.get("planId"):
                    broken[item["planId"]].append(name)
        return dict(broken)


def plan_of_memo(memos: list[str], plan_ids: set[str] | dict) -> str | None:
    for memo in memos or ():
        if memo.startswith(MEMO_PREFIX) and memo[len(MEMO_PREFIX) :] in plan_ids:
            return memo[len(MEMO_PREFIX) :]
    return None


def percentiles(values: list[float]) -> dict:
    """Nearest-rank p50/p99/max in ms; None when there is nothing to measure."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(round(q * len(ordered), 9)) - 1))
        return round(ordered[index], 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1], 1)}


def check(evidence: dict) -> Verdict:
    plans: dict[str, dict] = evidence["plans"]
    violations: dict[str, list[dict]] = {name: [] for name in INVARIANTS}

    def flag(name: str, plan_id: str | None, why: str, **detail) -> None:
        violations[name].append({"planId": plan_id, "why": why, **detail})

    stored: dict[str, list[dict]] = defaultdict(list)
    for message in sorted(evidence.get("stored", []), key=lambda m: m.get("seq", 0)):
        if message.get("planId") in plans:
            stored[message["planId"]].append(message)
    published: dict[str, list[dict]] = defaultdict(list)
    for message in evidence.get("publishes", []):
        if message.get("planId") in plans:
            published[message["planId"]].append(message)
    wire: dict[str, list[dict]] = defaultdict(list)
    for row in evidence.get("wire", []):
        plan_id = plan_of_memo(row.get("memos", []), plans)
        if plan_id is not None:
            wire[plan_id].append(row)
    workflows: dict[str, dict] = evidence.get("workflows", {})

    # --- result counts ------------------------------------------------------------------
    duplicate_results = 0
    for plan_id in plans:
        results = stored.get(plan_id, [])
        if not results:
            flag("lost", plan_id, "no result on the EXECUTED stream")
        elif len(results) > 1:
            duplicate_results += 1
            flag("duplicate_results", plan_id, f"{len(results)} results stored", statuses=[r["status"] for r in results])
    duplicate_publishes = sum(max(0, len(messages) - 1) for messages in published.values())
    for plan_id in plans:
        statuses = {m["status"] for m in published.get(plan_id, [])} | {m["status"] for m in stored.get(plan_id, [])}
        if len(statuses) > 1:
            flag("contradicting_publishes", plan_id, f"results with statuses {sorted(statuses)}", publishes=len(published.get(plan_id, [])))

    # --- Temporal says the same ----------------------------------------------------------
    for plan_id, results in stored.items():
        if not results:
            continue
        status = results[0]["status"]
        run = workflows.get(plan_id)
        if run is None or run.get("status") in (None, "NOT_FOUND"):
            flag("temporal_mismatch", plan_id, f"stored {status}, but no workflow")
            continue
        if run["status"] == "RUNNING":
            continue  # running_left says it
        if run["status"] != "COMPLETED":
            flag("temporal_mismatch", plan_id, f"stored {status}, workflow {run['status']}")
        elif run.get("result_status") != status or run.get("plan_status") != status:
            flag(
                "temporal_mismatch", plan_id,
                f"stored {status}, workflow result {run.get('result_status')}, PlanStatus {run.get('plan_status')}",
            )  # fmt: skip

    # --- agrees with the chain, and the wire ------------------------------------------------
    for plan_id in plans:
        rows = wire.get(plan_id, [])
        signatures = sorted({row["signature"] for row in rows})
        landed = [row for row in rows if row.get("landedSlot") is not None]
        if len(signatures) > 1:
            flag("multiple_signatures", plan_id, f"{len(signatures)} distinct signatures on the wire", signatures=signatures)
        if len({row["signature"] for row in landed}) > 1:
            flag("double_landed", plan_id, f"{len(landed)} signatures landed", signatures=sorted(row["signature"] for row in landed))
        results = stored.get(plan_id)
        if not results:
            continue
        result = results[0]
        landed_ok = {row["signature"] for row in landed if row.get("err") is None}
        landed_failed = {row["signature"] for row in landed if row.get("err") is not None}
        if result["status"] == SUCCESS:
            if result.get("signature") not in landed_ok:
                flag("disagree_with_chain", plan_id, f"success, but its signature {result.get('signature')} did not land", landed=sorted(landed_ok | landed_failed))
        elif result.get("errorCode") == TX_FAILED:
            if result.get("signature") not in landed_failed:
                flag("disagree_with_chain", plan_id, "TX_FAILED, but no failed transaction of it landed", landed=sorted(landed_ok))
        elif landed_ok or landed_failed:
            flag(
                "disagree_with_chain", plan_id,
                f"{result['status']} {result.get('errorCode')}, but {sorted(landed_ok | landed_failed)} landed",
            )  # fmt: skip

    # --- after a halt, nothing new goes out ------------------------------------------------
    for halt in evidence.get("halts", []):
        acknowledged = halt.get("acknowledged_ns")
        if acknowledged is None:
            # The operator was never told the halt holds: nothing can be promised after it.
            flag("sent_after_halt", None, f"the halt issued at {halt.get('issued_ns')} was never acknowledged: {halt.get('error', '')}"[:300])
            continue
        until = halt.get("resumed_ns") or float("inf")
        for plan_id, rows in wire.items():
            before = [row for row in rows if row["firstSeenNs"] < acknowledged]
            after = [row for row in rows if acknowledged <= row["firstSeenNs"] < until]
            if after and not before:
                first = min(row["firstSeenNs"] for row in after)
                flag(
                    "sent_after_halt", plan_id,
                    f"first seen {(first - acknowledged) / 1e6:.0f} ms after the halt was acknowledged",
                    signatures=sorted({row["signature"] for row in after}),
                )  # fmt: skip

    # --- nothing left over ---------------------------------------------------------------
    now_ms = evidence.get("checked_at_ms", 0)
    for lease in evidence.get("leases", []):
        if lease["expires_ms"] > now_ms:
            plan_id = lease["lease"] if lease["lease"] in plans else None
            flag("leases_left", plan_id, f"lease {lease['lease']} on {lease['wallet']} live for {(lease['expires_ms'] - now_ms) / 1000:.1f} s more")
    running = {workflow_id for workflow_id in evidence.get("running", [])}
    for plan_id, run in workflows.items():
        if run.get("status") == "RUNNING":
            running.add(f"plan-{plan_id}")
    for workflow_id in sorted(running):
        plan_id = workflow_id.removeprefix("plan-")
        flag("running_left", plan_id if plan_id in plans else None, f"workflow {workflow_id} still running")
    consumer = evidence.get("planned_consumer")
    if consumer is None:
        flag("pending_left", None, "the PLANNED consumer could not be read")
        pending_left = 1
    else:
        pending_left = int(consumer.get("num_pending", 0)) + int(consumer.get("num_ack_pending", 0))
        if pending_left or consumer.get("num_redelivered"):
            flag("pending_left", None, "plans still pending on PLANNED", **consumer)

    hostile = evidence.get("hostile", [])
    by_id: dict[str, list[dict]] = defaultdict(list)
    for message in evidence.get("stored", []):
        by_id[message.get("planId")].append(message)
    for sent in hostile:
        if sent.get("refused"):
            continue  # refused at publish (past max_msg_size or NATS's max payload): the planner was told, PLANNED has nothing
        # Its result is under its own id, or, with no usable id, under its message's sequence.
        results = by_id.get(sent["planId"], []) + by_id.get(f"invalid-PLANNED-{sent['seq']}", [])
        if len(results) != 1:
            flag("hostile_not_answered_once", sent["planId"], f"hostile message {sent['seq']} ({sent['kind']}) has {len(results)} results")
        elif results[0].get("status") == SUCCESS or not results[0].get("errorCode"):
            flag("hostile_not_answered_once", sent["planId"], f"hostile message {sent['seq']} ({sent['kind']}) was told {results[0].get('status')} without a code")

    samples = takeover_samples(evidence)
    measured = [s["takeover_ms"] for s in samples if s["takeover_ms"] is not None]

    first_results = [results[0] for results in stored.values() if results]
    kills = Counter(kill["kind"] for kill in evidence.get("kills", []))
    # Plans, and (rarely) a violation no plan can be blamed for, such as a halt never acknowledged.
    counted = {name: len({v["planId"] for v in items if v.get("planId")}) + sum(1 for v in items if not v.get("planId")) for name, items in violations.items()}
    summary = {
        "plans": len(plans),
        "results": sum(len(results) for results in stored.values()),
        "lost": len(violations["lost"]),
        "duplicate_publishes": duplicate_publishes,
        "contradicting_publishes": counted["contradicting_publishes"],
        "temporal_mismatch": counted["temporal_mismatch"],
        "double_landed": counted["double_landed"],
        "multiple_signatures": counted["multiple_signatures"],
        "disagree_with_chain": counted["disagree_with_chain"],
        "sent_after_halt": counted["sent_after_halt"],
        "leases_left": len(violations["leases_left"]),
        "running_left": len(violations["running_left"]),
        "pending_left": pending_left,
        "hostile": {
            "published": len(hostile), "refused_at_publish": sum(1 for h in hostile if h.get("refused")),
            "not_answered_once": len(violations["hostile_not_answered_once"]),
        },
        "takeover_ms": percentiles(measured),
        "success": sum(1 for r in first_results if r["status"] == SUCCESS),
        "kills": {"worker": kills["worker"], "nats": kills["nats"], "temporal": kills["temporal"]},
        "faults": evidence.get("faults", []),
        "error_codes": dict(sorted(Counter(r.get("errorCode") for r in first_results if r.get("errorCode")).items())),
        "seed": evidence.get("seed"),
        "ok": not any(violations.values()),
    }
    return Verdict(summary, {name: items for name, items in violations.items() if items}, samples, duplicate_results)


def takeover_samples(evidence: dict) -> list[dict]:
    """For each worker SIGKILL, every plan that worker held, and how long until it ran again elsewhere.

    Held in its workflows: the last WorkflowTaskStarted before the kill carries the dead
    worker's identity and the workflow had not closed; it runs again at the first
    WorkflowTaskStarted after the kill by another identity. Held in its bridge: the plan was
    received there (its log names it), or published before the kill, and its workflow started
    only after the kill; it runs again when its workflow
    starts. A plan is counted once, for the first kill that held it. Time during which no
    worker could have taken it (NATS or Temporal down, a halt) is not takeover time: it is
    subtracted, and reported beside the sample.
    """
    plans = evidence["plans"]
    workflows = evidence.get("workflows", {})
    outages = [(o["from_ns"], o["to_ns"] or float("inf")) for o in evidence.get("outages", []) if o.get("from_ns") is not None]
    kills = sorted((k for k in evidence.get("kills", []) if k["kind"] == "worker"), key=lambda k: k["at_ns"])
    started_ns: dict[str, int | None] = {}
    for plan_id in plans:
        events = workflows.get(plan_id, {}).get("events", [])
        started_ns[plan_id] = next((e["at_ns"] for e in events if e["type"] == EXECUTION_STARTED), None)

    samples: list[dict] = []
    counted: set[str] = set()

    def sample(plan_id: str, kill: dict, held: str, taken_ns: int | None) -> None:
        counted.add(plan_id)
        at = kill["at_ns"]
        down = _covered(outages, at, taken_ns) if taken_ns is not None else 0
        samples.append(
            {
                "planId": plan_id,
                "kill_ns": at,
                "identity": kill.get("identity"),
                "held": held,
                "takeover_ms": round((taken_ns - at - down) / 1e6, 1) if taken_ns is not None else None,
                "outage_ms": round(down / 1e6, 1),
            }
        )

    for kill in kills:  # in its workflows
        at, identity = kill["at_ns"], kill.get("identity")
        for plan_id in plans:
            events = workflows.get(plan_id, {}).get("events", [])
            before = [e for e in events if e["at_ns"] < at]
            if plan_id in counted or any(e["type"] in CLOSE_EVENTS for e in before):
                continue
            tasks = [e for e in before if e["type"] == TASK_STARTED]
            if tasks and tasks[-1].get("identity") == identity:
                again = next((e for e in events if e["at_ns"] > at and e["type"] == TASK_STARTED and e.get("identity") != identity), None)
                sample(plan_id, kill, "workflow", again["at_ns"] if again else None)

    def held_by_bridge(plan_id: str, at: int) -> bool:
        start = started_ns.get(plan_id)
        return plan_id not in counted and (start is None or start > at)

    for kill in kills:  # in its bridge, by its own log
        for plan_id in kill.get("log_plans", []):
            if plan_id in plans and held_by_bridge(plan_id, kill["at_ns"]):
                sample(plan_id, kill, "bridge", started_ns.get(plan_id))
    for kill in kills:  # in its bridge, by timing: published before the kill, started after it
        for plan_id, plan in plans.items():
            # A dead bridge need not have logged a plan it held (with Temporal down its start hangs
            # before any log line), so timing decides; a plan that was only stuck behind an outage
            # shows here with that outage taken off, a small takeover.
            published = plan.get("published_ns")
            if published is not None and published < kill["at_ns"] and held_by_bridge(plan_id, kill["at_ns"]):
                sample(plan_id, kill, "bridge", started_ns.get(plan_id))
    return samples


def _covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """How much of [start, end] the intervals cover (overlaps counted once)."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if a < end and b > start)
    total, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total
