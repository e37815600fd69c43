"""Tips from the market (issue 23, item 4): a plan's Jito tip priced from Jito's tip floor, escalated
when tipped plans stop landing.

`price_tip` is the rule, a pure function: no I/O, no clock of its own (the caller passes `now`, on the
clock `TipFloor.fetched_at` was read on: `time.monotonic()`), so it runs just before signing without
waiting on the network (one signature per plan: a tip is never changed after it). The floor comes from
`venue.jito.TipStream` (Jito's tip stream websocket, `GET /api/v1/bundles/tip_floor` while it is down:
percentiles of the tips of recently landed bundles; jito-labs/jito-docs lowlatencytxnsend.md, "Get Tip
Information"), converted there from SOL to lamports. `TipPricer` is what the builder holds: the
settings, a `floor()` callable (the stream's latest floor, never waiting) and a `TipEscalation`.

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

Escalation (the seed's `jitoTipBase`/`jitoTipStep`: "use what landed"): `TipEscalation` is told each
tipped plan's outcome (landed, or BLOCKHASH_EXPIRED: the chain's "not landed") and keeps the land rate
of the last `JITO_TIP_ESCALATION_WINDOW` of them. Each time a window of that many outcomes completes,
a land rate below `JITO_TIP_ESCALATION_LAND_RATE` raises the level by one (at most
`JITO_TIP_ESCALATION_MAX_STEPS`), one at or above it lowers it by one (at least 0). A plan without
`tipLamports` then pays `level x JITO_TIP_STEP` lamports more, added BEFORE the caps of rules 3 and 4:
on a floor price, to the percentile; on today's rule, to its result, where the caps only ever take back
the escalation (what today's rule alone gives is never lowered). A plan's own `tipLamports` is never
escalated; a plan already signed is never re-priced (escalation only reaches plans built after it).

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

Escalated two levels (JITO_TIP_STEP 5,000: 10,000 lamports more), same floor:
- $1.00: 36,197 + 10,000 = 46,197; $0.01: min(46,197, 33,333) = 33,333 (the profit cap holds);
- $0.001: max(min(46,197, 3,333), 1000, 10,000) = 10,000 (the floors, as unescalated);
- the floor stale, $1.00: 333,333 + 10,000 = 343,333; $0.001: today's 10,000, the escalation capped
  away by the profit (3,333 < 10,000: today's rule stands, nothing more).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from executor.build import MIN_JITO_TIP, BuildSettings, tip_lamports
from workflows.events import TIPPED_METHODS, ErrorCode, ExecutionPlanEvent, ExecutionResultEvent
from venue import LAMPORTS_PER_SOL
from venue.jito import TipFloor

log = logging.getLogger(__name__)

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
    escalation: int = 0  # lamports the escalation added before the caps (0: none, or a plan's own tip)


def profit_cap(plan: ExecutionPlanEvent, settings: TipSettings) -> int:
    """JITO_TIP_MAX_PROFIT_SHARE of the plan's expected profit (USD), in lamports; 0 for no profit."""
    sol_price = plan.sol_price_usd or settings.build.sol_price_usd
    return int(max(plan.expected_profit, 0.0) * settings.max_profit_share / sol_price * LAMPORTS_PER_SOL)


def is_fresh(floor: TipFloor | None, now: float, settings: TipSettings) -> bool:
    return floor is not None and 0.0 <= now - floor.fetched_at <= settings.floor_max_age_s


def price_tip(plan: ExecutionPlanEvent, floor: TipFloor | None, now: float, settings: TipSettings, escalation: int = 0) -> TipPrice:
    """The tip a plan pays, by the rule in this module's doc. `now` is on `floor.fetched_at`'s clock;
    `escalation` (lamports, `TipEscalation.lamports`) is added before the caps, never to a plan's own tip."""
    if plan.tip_lamports is not None:
        return TipPrice(tip_lamports(plan, settings.build), "plan")  # max(1000, tipLamports), as today
    escalation = max(escalation, 0)
    if settings.percentile == "off" or not is_fresh(floor, now, settings):
        return _escalated_rule(plan, escalation, settings)
    market = floor.percentile(settings.percentile) + escalation
    cap = profit_cap(plan, settings)
    capped_by = "profit" if market > cap else None
    lamports = max(min(market, cap), MIN_JITO_TIP, settings.build.jito_tip_base)
    if capped_by and lamports > cap:
        capped_by = None  # the floors, not the profit, decided it
    return _policy_capped(lamports, "floor", capped_by, settings, escalation)


def _escalated_rule(plan: ExecutionPlanEvent, escalation: int, settings: TipSettings) -> TipPrice:
    """Today's rule, plus the escalation as far as the profit share and the policy's max tip allow:
    the caps take back only the escalation, never what today's rule alone gives (rule 2 stays as today)."""
    today = tip_lamports(plan, settings.build)
    if not escalation:
        return TipPrice(today, "fallback")
    lamports, capped_by = today + escalation, None
    for name, cap in (("profit", profit_cap(plan, settings)), ("policy", settings.policy_max_tip)):
        if lamports > max(cap, today):
            lamports, capped_by = max(cap, today), name
    return TipPrice(lamports, "fallback", capped_by, escalation)


def _policy_capped(lamports: int, source: TipSource, capped_by, settings: TipSettings, escalation: int = 0) -> TipPrice:
    if lamports > settings.policy_max_tip:
        return TipPrice(settings.policy_max_tip, source, "policy", escalation)
    return TipPrice(lamports, source, capped_by, escalation)


def tip_label(price: TipPrice, settings: TipSettings) -> str:
    """Where a tip came from, for logs and the record: "plan", "floor:p75" (or "floor:ema50"), "rule"."""
    if price.source == "floor":
        return "floor:" + (settings.percentile if settings.percentile == "ema50" else f"p{settings.percentile}")
    return "rule" if price.source == "fallback" else price.source


# --- escalation across plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EscalationSettings:
    """JITO_TIP_STEP, JITO_TIP_ESCALATION_LAND_RATE, JITO_TIP_ESCALATION_WINDOW, JITO_TIP_ESCALATION_MAX_STEPS."""

    step: int = 5_000  # lamports a level adds; 0 switches escalation off
    land_rate: float = 0.9  # a window landing less than this share raises the level
    window: int = 20  # tipped outcomes per window
    max_steps: int = 10  # the highest level

    @classmethod
    def from_settings(cls, jito) -> EscalationSettings:
        """From a loaded `settings.executor.JitoSettings` (or the flat `ExecutorConfig`)."""
        return cls(jito.jito_tip_step, jito.jito_tip_escalation_land_rate, jito.jito_tip_escalation_window, jito.jito_tip_escalation_max_steps)


class TipEscalation:
    """The land rate of the last `window` tipped plans, and the escalation level it has led to.

    Told each outcome by `observe(result)` (the worker's result callback) or `record(landed)`. Only a
    tipped plan's (`jito_bundle`, `race`) outcome that says something about landing counts: landed (a
    `blockSlot`), or BLOCKHASH_EXPIRED (sent, and the chain's word after expiry is "not landed"). A plan
    refused before sending, halted or past its deadline says nothing about the tip, and is not counted.
    Windows do not overlap: the level moves once per `window` outcomes. Not thread-safe; one per worker,
    on its event loop.
    """

    def __init__(self, settings: EscalationSettings = EscalationSettings()) -> None:
        if settings.window < 1 or settings.max_steps < 0 or settings.step < 0 or not 0.0 <= settings.land_rate <= 1.0:
            raise ValueError(f"escalation settings out of range: {settings}")
        self.settings = settings
        self.level = 0
        self._recent: deque[bool] = deque(maxlen=settings.window)
        self._since_window = 0
        self.counted = 0  # outcomes counted since start

    @property
    def lamports(self) -> int:
        """What a plan built now pays on top of its price: level x JITO_TIP_STEP."""
        return self.level * self.settings.step

    @property
    def land_rate(self) -> float | None:
        """Landed share of the last `window` (or fewer) counted outcomes; None before any."""
        return sum(self._recent) / len(self._recent) if self._recent else None

    def record(self, landed: bool) -> None:
        self._recent.append(bool(landed))
        self.counted += 1
        self._since_window += 1
        if self._since_window < self.settings.window:
            return
        self._since_window = 0
        rate = self.land_rate
        before = self.level
        if rate < self.settings.land_rate:
            self.level = min(self.level + 1, self.settings.max_steps)
        else:
            self.level = max(self.level - 1, 0)
        if self.level != before:
            log.info("stage=tip event=escalation level=%d extra=%d landRate=%.3f window=%d", self.level, self.lamports, rate, self.settings.window)

    def observe(self, result: ExecutionResultEvent) -> None:
        """A published result: counted when it is a tipped plan's landed or BLOCKHASH_EXPIRED outcome."""
        if result.execution_method not in _TIPPED_NAMES or result.tip_lamports is None:
            return  # not tipped, or never sent (nothing was signed with a tip)
        if result.block_slot is not None:
            self.record(True)
        elif result.error_code is ErrorCode.BLOCKHASH_EXPIRED:
            self.record(False)


_TIPPED_NAMES = frozenset(method.value for method in TIPPED_METHODS)


class TipPricer:
    """What the builder prices a tip with: the settings, the latest floor (a callable that never waits,
    e.g. `TipStream.floor`), the escalation, and the clock the floor was stamped on."""

    def __init__(
        self,
        settings: TipSettings,
        floor: Callable[[], TipFloor | None] | None = None,
        escalation: TipEscalation | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.floor = floor or (lambda: None)
        self.escalation = escalation
        self.clock = clock

    def price(self, plan: ExecutionPlanEvent) -> TipPrice:
        extra = self.escalation.lamports if self.escalation is not None else 0
        return price_tip(plan, self.floor(), self.clock(), self.settings, extra)

    def label(self, price: TipPrice) -> str:
        return tip_label(price, self.settings)


__all__ = ["EscalationSettings", "TipEscalation", "TipPrice", "TipPricer", "TipSettings", "is_fresh", "price_tip", "profit_cap", "tip_label"]
