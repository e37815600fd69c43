"""Race plans and bundle resends through the whole product: planner -> bridge -> workflow -> the
cluster's regions, with the worker configured from the cluster as `dev` does (issue 23)."""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from tests.stack import stack_with_worker

# Two regions, no rate limit (the pace is issue 23's limiter tests' business), Jito's prompt Failed
# statuses. Each test sets the drops it needs through the admin endpoint.
TWO_REGIONS = {
    "description": "two regions for the race tests",
    "regions": {"ams": {"latency_ms": 1, "rate_limit": 0}, "fra": {"latency_ms": 2, "rate_limit": 0}},
    "auction": {"enabled": True, "prompt_failures": True},
}


@pytest.fixture(scope="module")
async def regional(worker_log):
    path = Path(tempfile.mkdtemp(prefix="hft-race-")) / "two-regions.json"
    path.write_text(json.dumps(TWO_REGIONS))
    async with stack_with_worker("hft-race-", market=str(path)) as running:
        yield running


async def set_drops(stack, ams: float = 0.0, fra: float = 0.0) -> None:
    await stack.admin("PUT", "/regions/ams", {"drop": ams})
    await stack.admin("PUT", "/regions/fra", {"drop": fra})


async def test_the_worker_sends_bundles_to_the_clusters_regions(regional):
    assert [name for name in regional.worker.engines.names] == ["ams", "fra"]
    assert regional.config.jito_requests_per_second == 1000.0  # the cluster sets no limit: the pace is far above any plan rate


async def test_a_race_plan_lands_once_and_its_result_says_how(regional):
    plans = [regional.plan("race", wallet=i) for i in range(3)]
    results = await asyncio.gather(*(regional.execute(plan, timeout=60) for plan in plans))
    for plan, result in zip(plans, results):
        assert result["status"] == "success", result
        assert result["executionMethod"] == "race"
        assert {"bundle:ams", "bundle:fra", "tpu", "rpc"} <= set(result["routes"])
        assert result["sendSlot"] is not None and result["slotsToLand"] == result["blockSlot"] - result["sendSlot"] >= 0
        assert result["executionCost"]["tipLamports"] > 0  # a race pays its tip whichever route lands it
        wire = await regional.wire_transactions(plan["planId"])
        assert len(wire) == 1 and wire[0]["landedSlot"] == result["blockSlot"]  # one signature, one landing, across every route
        if result.get("landedVia") is not None:  # said only when a region's status says so, and then it agrees with the cluster
            assert result["landedVia"] == f"bundle:{wire[0]['landedVia']['region']}"


async def test_every_bundle_plan_lands_though_one_region_drops_every_bundle(regional):
    """ams drops everything. A bundle the board sends there first reads Failed a slot later and is resent to
    fra; before issue 23 it waited ~150 blocks for its blockhash to expire and ended BLOCKHASH_EXPIRED."""
    await set_drops(regional, ams=1.0)
    try:
        plans = [regional.plan("jito_bundle", wallet=i) for i in range(6)]
        results = await asyncio.gather(*(regional.execute(plan, timeout=60) for plan in plans))
        assert [r["status"] for r in results] == ["success"] * 6, results
        regions = await regional.admin("GET", "/regions")
        assert regions["ams"]["counters"]["dropped"] >= 1  # some went to ams first: the board's first choice while unmeasured
        for plan, result in zip(plans, results):
            [row] = await regional.wire_transactions(plan["planId"])
            assert row["landedVia"]["region"] == "fra"
            assert result["landedVia"] == "bundle:fra"
    finally:
        await set_drops(regional)
