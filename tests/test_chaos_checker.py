"""The chaos campaign's invariant checker, on hand-made evidence: each invariant can fail.

The evidence is what `hft-executor chaos` collects from outside (EXECUTED stream, a plain
subscription, Temporal, the cluster's admin view, the wallet leases, the PLANNED consumer);
here it is written by hand: one clean run of three plans, then one violation at a time.
"""
from __future__ import annotations

import copy

import pytest

from chaos.checker import INVARIANTS, check, percentiles, takeover_samples
from devtools.demo import plan_memo

MS = 1_000_000
T0 = 1_700_000_000_000 * MS  # the campaign's start, ns
SUMMARY_KEYS = {
    "plans", "results", "lost", "duplicate_publishes", "contradicting_publishes", "temporal_mismatch",
    "double_landed", "multiple_signatures", "disagree_with_chain", "sent_after_halt", "leases_left",
    "running_left", "pending_left", "hostile", "takeover_ms", "success", "kills", "faults", "error_codes", "seed", "ok",
}  # fmt: skip
DEAD = "1001@host"
SURVIVOR = "1002@host"


def events(started_ms: int, *tasks: tuple[int, str], closed_ms: int | None) -> list[dict]:
    history = [{"type": "WorkflowExecutionStarted", "at_ns": T0 + started_ms * MS, "identity": SURVIVOR}]
    for at_ms, identity in tasks:
        history.append({"type": "WorkflowTaskScheduled", "at_ns": T0 + at_ms * MS - MS // 2, "identity": None})
        history.append({"type": "WorkflowTaskStarted", "at_ns": T0 + at_ms * MS, "identity": identity})
    if closed_ms is not None:
        history.append({"type": "WorkflowExecutionCompleted", "at_ns": T0 + closed_ms * MS, "identity": None})
    return history


def row(signature: str, plan_id: str, seen_ms: int, *, landed: int | None = None, err=None) -> dict:
    return {
        "signature": signature, "firstSeenNs": T0 + seen_ms * MS, "timesReceived": 1,
        "landedSlot": landed, "err": err, "memos": [plan_memo(plan_id)],
    }  # fmt: skip


def result(plan_id: str, status: str, signature: str | None, code: str | None, seq: int) -> dict:
    return {"seq": seq, "planId": plan_id, "status": status, "errorCode": code, "signature": signature}


def clean() -> dict:
    """Three plans: `landed` succeeded (and was held by a worker killed at 1 s, taken over at
    1.8 s), `expired` was sent and timed out unlanded, `refused` never left (NO_WALLET). A
    halt from 5 s to 8 s; nothing new went out in it."""
    plans = {
        "landed": {"method": "rpc", "kind": "swap", "maxLatency": 4000, "deadline": 0, "published_ns": T0 + 500 * MS},
        "expired": {"method": "jito_bundle", "kind": "memo", "maxLatency": 2000, "deadline": 0, "published_ns": T0 + 2000 * MS},
        "refused": {"method": "tpu_direct", "kind": "swap", "maxLatency": 8000, "deadline": 0, "published_ns": T0 + 3000 * MS},
    }
    stored = [
        result("landed", "success", "SigLanded", None, 1),
        result("expired", "timeout", "SigExpired", "BLOCKHASH_EXPIRED", 2),
        result("refused", "failed", None, "NO_WALLET", 3),
    ]
    publishes = [{**{k: v for k, v in r.items() if k != "seq"}, "at_ns": T0 + (4000 + r["seq"]) * MS} for r in stored]
    workflows = {
        "landed": {"status": "COMPLETED", "result_status": "success", "plan_status": "success",
                   "events": events(510, (511, DEAD), (1800, SURVIVOR), closed_ms=2500)},
        "expired": {"status": "COMPLETED", "result_status": "timeout", "plan_status": "timeout",
                    "events": events(2010, (2011, SURVIVOR), closed_ms=4500)},
        "refused": {"status": "COMPLETED", "result_status": "failed", "plan_status": "failed",
                    "events": events(3010, (3011, SURVIVOR), closed_ms=3100)},
    }  # fmt: skip
    return {
        "seed": 7,
        "plans": plans,
        "publishes": publishes,
        "stored": stored,
        "workflows": workflows,
        "wire": [
            row("SigLanded", "landed", 520, landed=12),
            row("SigExpired", "expired", 2020),
            {"signature": "SigSomeoneElse", "firstSeenNs": T0 + 6000 * MS, "timesReceived": 1, "landedSlot": 40, "err": None, "memos": ["not ours"]},
        ],
        "leases": [{"wallet": "W1", "lease": "landed", "expires_ms": T0 // MS - 1}],
        "checked_at_ms": T0 // MS + 20_000,
        "running": [],
        "planned_consumer": {"num_pending": 0, "num_ack_pending": 0, "num_redelivered": 0},
        "kills": [{"kind": "worker", "at_ns": T0 + 1000 * MS, "identity": DEAD, "log_plans": ["landed"]}, {"kind": "nats", "at_ns": T0 + 9000 * MS}],
        "outages": [{"kind": "nats", "from_ns": T0 + 9000 * MS, "to_ns": T0 + 9500 * MS}],
        "halts": [{"acknowledged_ns": T0 + 5000 * MS, "resumed_ns": T0 + 8000 * MS}],
        "faults": [{"kind": "worker_kill", "at_ns": T0 + 1000 * MS}],
    }


def violations(evidence: dict, invariant: str) -> list[dict]:
    verdict = check(evidence)
    assert not verdict.ok and verdict.summary["ok"] is False
    return verdict.violations[invariant]


def test_a_clean_run_passes_with_the_issue_s_json_shape():
    verdict = check(clean())
    assert verdict.ok, verdict.violations
    summary = verdict.summary
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["takeover_ms"]) == {"p50", "p99", "max"}
    assert set(summary["kills"]) == {"worker", "nats", "temporal"}
    assert summary["plans"] == summary["results"] == 3
    assert (summary["success"], summary["lost"], summary["duplicate_publishes"]) == (1, 0, 0)
    assert summary["kills"] == {"worker": 1, "nats": 1, "temporal": 0}
    assert summary["error_codes"] == {"BLOCKHASH_EXPIRED": 1, "NO_WALLET": 1}
    assert summary["takeover_ms"] == {"p50": 800.0, "p99": 800.0, "max": 800.0}
    assert verdict.violations == {}


def test_lost_a_plan_without_a_stored_result():
    evidence = clean()
    evidence["stored"] = [r for r in evidence["stored"] if r["planId"] != "expired"]
    assert [v["planId"] for v in violations(evidence, "lost")] == ["expired"]
    assert check(evidence).summary["lost"] == 1


def test_two_stored_results_for_one_plan_fail_even_with_the_same_status():
    evidence = clean()
    evidence["stored"].append(result("expired", "timeout", "SigExpired", "BLOCKHASH_EXPIRED", 4))
    assert [v["planId"] for v in violations(evidence, "duplicate_results")] == ["expired"]
    assert check(evidence).summary["results"] == 4


def test_a_second_publish_with_the_same_status_is_counted_not_failed():
    evidence = clean()
    evidence["publishes"].append({**evidence["publishes"][0], "at_ns": T0 + 9000 * MS})
    verdict = check(evidence)
    assert verdict.summary["duplicate_publishes"] == 1
    assert verdict.ok


def test_contradicting_publishes_one_plan_two_stories():
    evidence = clean()
    evidence["publishes"].append({"planId": "landed", "status": "timeout", "errorCode": "DEADLINE_EXCEEDED", "signature": None, "at_ns": T0})
    assert [v["planId"] for v in violations(evidence, "contradicting_publishes")] == ["landed"]
    summary = check(evidence).summary
    assert (summary["contradicting_publishes"], summary["duplicate_publishes"]) == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"result_status": "timeout", "plan_status": "timeout"},  # the re-run's story won in Temporal
        {"plan_status": None},  # PlanStatus never set
        {"status": "FAILED", "result_status": None},  # the workflow failed after publishing
        {"status": "NOT_FOUND", "result_status": None, "plan_status": None, "events": []},
    ],
)
def test_temporal_mismatch(change):
    evidence = clean()
    evidence["workflows"]["landed"].update(change)
    assert [v["planId"] for v in violations(evidence, "temporal_mismatch")] == ["landed"]


def test_a_success_whose_signature_never_landed_disagrees_with_the_chain():
    evidence = clean()
    evidence["wire"][0]["landedSlot"] = None
    assert [v["planId"] for v in violations(evidence, "disagree_with_chain")] == ["landed"]


def test_a_timeout_whose_transaction_landed_disagrees_with_the_chain():
    evidence = clean()
    evidence["wire"][1]["landedSlot"] = 33  # the false "not landed" of the issue: the planner would trade again
    found = violations(evidence, "disagree_with_chain")
    assert [v["planId"] for v in found] == ["expired"]
    assert "SigExpired" in found[0]["why"]


def test_tx_failed_agrees_only_with_a_failed_landing():
    evidence = clean()
    evidence["stored"][1] = result("expired", "failed", "SigExpired", "TX_FAILED", 2)
    evidence["publishes"][1].update(status="failed", errorCode="TX_FAILED")
    evidence["workflows"]["expired"].update(result_status="failed", plan_status="failed")
    assert [v["planId"] for v in violations(evidence, "disagree_with_chain")] == ["expired"]
    evidence["wire"][1].update(landedSlot=30, err={"InstructionError": [0, "Custom"]})
    assert check(evidence).ok


def test_two_signatures_of_one_plan_on_the_wire():
    evidence = clean()
    evidence["wire"].append(row("SigExpiredResigned", "expired", 2600))
    found = violations(evidence, "multiple_signatures")
    assert [v["planId"] for v in found] == ["expired"]
    assert found[0]["signatures"] == ["SigExpired", "SigExpiredResigned"]
    assert "double_landed" not in check(evidence).violations


def test_two_signatures_of_one_plan_landed():
    evidence = clean()
    evidence["wire"].append(row("SigLandedAgain", "landed", 900, landed=14))
    assert [v["planId"] for v in violations(evidence, "double_landed")] == ["landed"]
    assert check(evidence).summary["multiple_signatures"] == 1


def test_a_plan_first_on_the_wire_after_the_halt_was_acknowledged():
    evidence = clean()
    evidence["wire"].append(row("SigRefused", "refused", 6500))
    found = violations(evidence, "sent_after_halt")
    assert [v["planId"] for v in found] == ["refused"]
    assert "1500 ms after" in found[0]["why"]


def test_what_was_on_the_wire_before_the_halt_may_go_again_and_after_the_resume_anything_may():
    evidence = clean()
    evidence["wire"][1]["firstSeenNs"] = T0 + 4900 * MS  # sent before the ack; its resend is no new send
    evidence["wire"].append(row("SigRefused", "refused", 8100))  # after the resume
    assert check(evidence).ok


def test_a_halt_never_acknowledged_fails_the_run():
    evidence = clean()
    evidence["halts"] = [{"issued_ns": T0 + 5000 * MS, "acknowledged_ns": None, "resumed_ns": T0 + 8000 * MS, "error": "timed out"}]
    found = violations(evidence, "sent_after_halt")
    assert found[0]["planId"] is None and "never acknowledged" in found[0]["why"]
    assert check(evidence).summary["sent_after_halt"] == 1, "no plan to blame, but counted"


def test_a_live_lease_left_over():
    evidence = clean()
    evidence["leases"].append({"wallet": "W2", "lease": "expired", "expires_ms": evidence["checked_at_ms"] + 30_000})
    found = violations(evidence, "leases_left")
    assert [v["planId"] for v in found] == ["expired"]
    assert check(evidence).summary["leases_left"] == 1


def test_a_workflow_still_running():
    evidence = clean()
    evidence["running"] = ["plan-orphan"]
    evidence["workflows"]["refused"]["status"] = "RUNNING"
    found = violations(evidence, "running_left")
    assert sorted(str(v["planId"]) for v in found) == ["None", "refused"]
    assert check(evidence).summary["running_left"] == 2


@pytest.mark.parametrize(
    "consumer, left",
    [({"num_pending": 2, "num_ack_pending": 1, "num_redelivered": 1}, 3), ({"num_pending": 0, "num_ack_pending": 0, "num_redelivered": 1}, 0), (None, 1)],
)
def test_plans_left_pending_on_planned(consumer, left):
    evidence = clean()
    evidence["planned_consumer"] = consumer
    assert violations(evidence, "pending_left")
    assert check(evidence).summary["pending_left"] == left


def test_hostile_messages_are_each_answered_once_with_a_code():
    evidence = clean()
    evidence["hostile"] = [
        {"planId": "h-1", "kind": "set:deadline", "seq": 10, "refused": False},  # told under its own id
        {"planId": "h-2", "kind": "raw:not_utf8", "seq": 11, "refused": False},  # told under its sequence
        {"planId": "h-3", "kind": "raw:oversize", "seq": None, "refused": True},  # refused at publish: nothing to tell
    ]
    evidence["stored"] += [result("h-1", "failed", None, "INVALID_PLAN", 10), result("invalid-PLANNED-11", "failed", None, "INVALID_PLAN", 11)]
    assert check(evidence).ok
    assert check(evidence).summary["hostile"] == {"published": 3, "refused_at_publish": 1, "not_answered_once": 0}

    unanswered = copy.deepcopy(evidence)
    unanswered["stored"] = [r for r in unanswered["stored"] if r["planId"] != "invalid-PLANNED-11"]
    assert [v["planId"] for v in violations(unanswered, "hostile_not_answered_once")] == ["h-2"]
    twice = copy.deepcopy(evidence)
    twice["stored"].append(result("h-1", "failed", None, "INVALID_PLAN", 12))
    assert [v["planId"] for v in violations(twice, "hostile_not_answered_once")] == ["h-1"]
    succeeded = copy.deepcopy(evidence)
    succeeded["stored"][-2] = result("h-1", "success", "Sig", None, 10)
    assert [v["planId"] for v in violations(succeeded, "hostile_not_answered_once")] == ["h-1"]


def test_every_invariant_has_a_failing_test_here():
    tested = {"lost", "duplicate_results", "contradicting_publishes", "temporal_mismatch", "disagree_with_chain", "multiple_signatures",
              "double_landed", "sent_after_halt", "leases_left", "running_left", "pending_left", "hostile_not_answered_once"}  # fmt: skip
    assert tested == set(INVARIANTS)


def test_violations_name_their_plans_for_the_report():
    evidence = clean()
    evidence["wire"][1]["landedSlot"] = 33
    evidence["stored"] = [r for r in evidence["stored"] if r["planId"] != "refused"]
    assert check(evidence).failing_plans() == {"expired": ["disagree_with_chain"], "refused": ["lost"]}


# --- takeover -------------------------------------------------------------------------


def test_takeover_of_a_running_workflow_is_the_first_task_elsewhere_after_the_kill():
    samples = takeover_samples(clean())
    assert [(s["planId"], s["held"], s["takeover_ms"], s["outage_ms"]) for s in samples] == [("landed", "workflow", 800.0, 0.0)]


def test_takeover_of_a_plan_held_in_the_dead_bridge_is_its_workflow_start():
    evidence = clean()
    evidence["workflows"]["expired"]["events"] = events(31_000, (31_001, SURVIVOR), closed_ms=31_100)
    evidence["kills"][0]["log_plans"] = ["landed", "expired"]
    evidence["plans"]["expired"]["published_ns"] = T0 + 900 * MS
    evidence["outages"] = []  # else the NATS outage at 9 s, inside this 30 s wait, is taken off it
    by_plan = {s["planId"]: s for s in takeover_samples(evidence)}
    assert by_plan["expired"]["held"] == "bridge"
    assert by_plan["expired"]["takeover_ms"] == 30_000.0  # today's ack wait
    assert check(evidence).summary["takeover_ms"]["max"] == 30_000.0


def test_time_no_worker_could_take_a_plan_is_not_takeover_time():
    evidence = clean()
    evidence["outages"] += [
        {"kind": "temporal", "from_ns": T0 + 1200 * MS, "to_ns": T0 + 1500 * MS},
        {"kind": "halt", "from_ns": T0 + 1400 * MS, "to_ns": T0 + 1600 * MS},  # overlaps: counted once
    ]
    assert [(s["takeover_ms"], s["outage_ms"]) for s in takeover_samples(evidence)] == [(400.0, 400.0)]
    assert check(evidence).summary["takeover_ms"] == {"p50": 400.0, "p99": 400.0, "max": 400.0}


def test_a_plan_published_before_a_kill_and_started_after_it_was_held_by_the_dead_bridge():
    evidence = clean()
    evidence["kills"].append({"kind": "worker", "at_ns": T0 + 2500 * MS, "identity": "1003@host", "log_plans": []})
    evidence["workflows"]["refused"]["events"] = events(3010, (3011, SURVIVOR), closed_ms=3100)
    evidence["plans"]["refused"]["published_ns"] = T0 + 2100 * MS  # its start hung (Temporal down): no log line names it
    evidence["outages"].append({"kind": "temporal", "from_ns": T0 + 2000 * MS, "to_ns": T0 + 2700 * MS})
    by_plan = {s["planId"]: s for s in takeover_samples(evidence)}
    assert (by_plan["refused"]["held"], by_plan["refused"]["takeover_ms"], by_plan["refused"]["outage_ms"]) == ("bridge", 310.0, 200.0)


def test_a_plan_never_taken_over_has_no_takeover_time():
    evidence = clean()
    evidence["workflows"]["landed"]["events"] = events(510, (511, DEAD), closed_ms=None)
    evidence["workflows"]["landed"]["status"] = "RUNNING"
    assert [s["takeover_ms"] for s in takeover_samples(evidence)] == [None]


def test_percentiles_nearest_rank():
    assert percentiles([]) == {"p50": None, "p99": None, "max": None}
    values = list(range(1, 101))
    assert percentiles(values) == {"p50": 50, "p99": 99, "max": 100}
    assert percentiles([5.0]) == {"p50": 5.0, "p99": 5.0, "max": 5.0}


def test_the_checker_does_not_change_its_evidence():
    evidence = clean()
    before = copy.deepcopy(evidence)
    check(evidence)
    assert evidence == before
