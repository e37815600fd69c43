"""The campaign's plans: mixed methods, swap and memo-only, realistic deadlines, all drawn from the seed.

Swap plans pin their wallet (the demo pool's out-vault is per wallet); memo-only plans let
the pool pick any wallet. Every plan's transaction carries `plan_memo(planId)`, so the
cluster's admin view attributes each signature on the wire to its plan.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from devtools.demo import MEMO_PROGRAM, DemoPool, memo, plan_memo

METHODS = ("rpc", "jito_bundle", "tpu_direct", "race")
MAX_LATENCY_MS = (2_000, 8_000)


@dataclass(frozen=True)
class PlanSpec:
    """What is drawn for a plan before the run; its timestamps are set when it is published."""

    plan_id: str
    method: str
    kind: str  # "swap" | "memo"
    max_latency_ms: int
    wallet: str | None

    def build(self, pool: DemoPool, now_ms: int) -> dict:
        if self.kind == "swap":
            return pool.plan(
                self.plan_id, self.wallet, self.method,
                deadline_ms=self.max_latency_ms, max_latency_ms=self.max_latency_ms, now_ms=now_ms,
            )  # fmt: skip
        return memo_plan(pool, self.plan_id, self.method, max_latency_ms=self.max_latency_ms, now_ms=now_ms)


def memo_plan(pool: DemoPool, plan_id: str, method: str, *, max_latency_ms: int, now_ms: int) -> dict:
    """A plan whose one route's only instruction is its memo: nothing moves but the fee (and a tip)."""
    plan = pool.plan(plan_id, next(iter(pool.vaults_out)), method, deadline_ms=max_latency_ms, max_latency_ms=max_latency_ms, now_ms=now_ms)
    plan["routes"] = [
        {
            "dex": "memo",
            "inputMint": pool.mint_in,
            "outputMint": pool.mint_in,
            "inAmount": 0,
            "outAmount": 0,
            "instructions": [memo(plan_memo(plan_id))],
        }
    ]
    plan["inputAmount"] = 0
    plan["outputToken"] = pool.mint_in
    del plan["wallet"]  # any wallet will do
    assert plan["routes"][0]["instructions"][0]["programId"] == MEMO_PROGRAM
    return plan


def draw_plans(rng: random.Random, count: int, wallets: list[str], run: str) -> list[PlanSpec]:
    specs = []
    for index in range(count):
        kind = "swap" if rng.random() < 0.6 else "memo"
        specs.append(
            PlanSpec(
                plan_id=f"chaos-{run}-{index:04d}",
                method=rng.choice(METHODS),
                kind=kind,
                max_latency_ms=rng.randint(*MAX_LATENCY_MS),
                wallet=wallets[index % len(wallets)] if kind == "swap" else None,
            )
        )
    return specs
