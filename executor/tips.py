"""Tips from the market (issue 23, item 4): a plan's Jito tip priced from Jito's tip floor. Not yet wired.

One pure function, `price_tip`: no I/O, no clock of its own (the caller passes `now`, on the clock
`TipFloor.fetched_at` was read on: `time.monotonic()`), so it can run just before signing without
waiting on the network. The floor itself comes from `venue.jito.JitoClient.tip_floor()` (Jito's
`GET /api/v1/bundles/tip_floor`: percentiles of the tips of recently landed bundles; jito-labs/jito-docs
lowlatencytxnsend.md, "Get Tip Information"), converted there from SOL to lamports.

The rule, for a plan that pays a tip (jito_bundle), in this order:

1. the plan's own `tipLamports` wins, at least Jito's minimum (1000 lamports), exactly as today
   (`executor.build.tip_lamports`); it is the plan's decision, and the policy still checks it;
2. no floor, a floor read more than `JITO_TIP_FLOOR_MAX_AGE_MS` ago, or `JITO_TIP_PERCENTILE=off`:
   today's rule, `executor.build.tip_lamports` (max(JITO_TIP_BASE, JITO_TIP_PROFIT_SHARE x profit, 1000));
3. otherwise the market: the floor's `JITO_TIP_PERCENTILE` (25, 50, 75, 95, 99 or ema50), at most
   `JITO_TIP_MAX_PROFIT_SHARE` of the expected profit (USD -> lamports at the plan's `solPriceUsd`, else
   `SOL_PRICE_USD`, the conversion JITO_TIP_PROFIT_SHARE uses), then at least the floors: Jito's minimum
   1000 lamports (a bundle tipping less is refused) and `JITO_TIP_BASE`;
4. last, a floor-priced tip is at most the policy's `POLICY_MAX_TIP_LAMPORTS` (settings/policy.py; the
   policy refuses a transaction whose tips sum above it, executor/policy/rules.py, so a market tip above
   it would only lose the trade). Rules 1 and 2 are left exactly as today: a plan's own tip or today's
   rule above the cap is refused by the policy, as now.

Why a cap of its own and not JITO_TIP_PROFIT_SHARE: today that share is a floor (a tip is at least 5%
of the profit); as a cap it would stop the market from ever raising a tip above today's, which is the
point of reading it. The profit cap yields to the floors (a plan with no expected profit still pays
JITO_TIP_BASE, as today); the policy cap yields to nothing.

Worked example, defaults (JITO_TIP_BASE 10,000; JITO_TIP_MAX_PROFIT_SHARE 0.5; SOL_PRICE_USD 150;
POLICY_MAX_TIP_LAMPORTS 10,000,000) and JITO_TIP_PERCENTILE=75, with Jito's example floor
(75th percentile 3.61965e-05 SOL = 36,197 lamports; 95th 1.4479055e-03 SOL = 1,447,906 lamports):

- expectedProfit $1.00: profit cap 0.5 x 1 / 150 SOL = 3,333,333 lamports; tip = 36,197 (the 75th);
- expectedProfit $0.01: profit cap 33,333; tip = min(36,197, 33,333) = 33,333 (capped by the profit);
- expectedProfit $0.001: profit cap 3,333; tip = max(3,333, 1000, 10,000) = 10,000 (JITO_TIP_BASE);
- at 95 and $1.00: 1,447,906; at 99 (10,007,999 lamports) and $100: capped to 10,000,000 by the policy;
- the floor read 40 s ago (max age 30 s), $1.00: today's rule, max(10,000, 0.05 x 1 / 150 SOL) = 333,333.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from executor.build import MIN_JITO_TIP, BuildSettings, tip_lamports
from workflows.events import ExecutionPlanEvent
from venue import LAMPORTS_PER_SOL
from venue.jito import TipFloor

TipSource = Literal["plan", "floor", "fallback"]


@dataclass(frozen=True)
class TipSettings:
    """What the rule reads: JitoSettings' tip settings, SOL_PRICE_USD and the policy's max tip."""

    percentile: str = "75"  # JITO_TIP_PERCENTILE: 25 | 50 | 75 | 95 | 99 | ema50 | off
    max_profit_share: float = 0.5  # JITO_TIP_MAX_PROFIT_SHARE
    floor_max_age_s: float = 30.0  # JITO_TIP_FLOOR_MAX_AGE_MS / 1000
    policy_max_tip: int = 10_000_000  # POLICY_MAX_TIP_LAMPORTS
    build: BuildSettings = BuildSettings()  # JITO_TIP_BASE, JITO_TIP_PROFIT_SHARE, SOL_PRICE_USD: today's rule

    @classmethod
    def from_settings(cls, jito, policy, build: BuildSettings) -> TipSettings:
        """From a loaded `settings.executor.JitoSettings` and `settings.policy` group (anything with max_tip_lamports)."""
        return cls(
            percentile=jito.jito_tip_percentile,
            max_profit_share=jito.jito_tip_max_profit_share,
            floor_max_age_s=jito.jito_tip_floor_max_age_ms / 1000,
            policy_max_tip=policy.max_tip_lamports,
            build=build,
        )


@dataclass(frozen=True)
class TipPrice:
    """A priced tip and where it came from (for the record and the metrics: tip lamports by source)."""

    lamports: int
    source: TipSource
    capped_by: Literal["profit", "policy"] | None = None


def profit_cap(plan: ExecutionPlanEvent, settings: TipSettings) -> int:
    """JITO_TIP_MAX_PROFIT_SHARE of the plan's expected profit (USD), in lamports; 0 for no profit."""
    sol_price = plan.sol_price_usd or settings.build.sol_price_usd
    return int(max(plan.expected_profit, 0.0) * settings.max_profit_share / sol_price * LAMPORTS_PER_SOL)


def is_fresh(floor: TipFloor | None, now: float, settings: TipSettings) -> bool:
    return floor is not None and 0.0 <= now - floor.fetched_at <= settings.floor_max_age_s


def price_tip(plan: ExecutionPlanEvent, floor: TipFloor | None, now: float, settings: TipSettings) -> TipPrice:
    """The tip a plan pays, by the rule in this module's doc. `now` is on `floor.fetched_at`'s clock."""
    if plan.tip_lamports is not None:
        return TipPrice(tip_lamports(plan, settings.build), "plan")  # max(1000, tipLamports), as today
    if settings.percentile == "off" or not is_fresh(floor, now, settings):
        return TipPrice(tip_lamports(plan, settings.build), "fallback")
    market = floor.percentile(settings.percentile)
    cap = profit_cap(plan, settings)
    capped_by = "profit" if market > cap else None
    lamports = max(min(market, cap), MIN_JITO_TIP, settings.build.jito_tip_base)
    if capped_by and lamports > cap:
        capped_by = None  # the floors, not the profit, decided it
    return _policy_capped(lamports, "floor", capped_by, settings)


def _policy_capped(lamports: int, source: TipSource, capped_by, settings: TipSettings) -> TipPrice:
    if lamports > settings.policy_max_tip:
        return TipPrice(settings.policy_max_tip, source, "policy")
    return TipPrice(lamports, source, capped_by)


__all__ = ["TipPrice", "TipSettings", "is_fresh", "price_tip", "profit_cap"]
