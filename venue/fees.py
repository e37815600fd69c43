"""Priority fee for a plan that names none: recent fees paid to write the same accounts.

getRecentPrioritizationFees over the plan's writable accounts (at most 128) returns, per
recent slot, the fee a transaction needed to land there; the executor takes a configured
percentile, optionally scales it by how congested those slots were (the seed's
congestion multipliers), and clamps it between a floor and a ceiling. Answers are cached
briefly per account set, so a burst of plans on the same pool costs one RPC call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .rpc import SolanaRpc

MAX_ACCOUNTS = 128  # the RPC method's limit


@dataclass(frozen=True)
class FeePolicy:
    percentile: float = 75.0  # PRIORITY_FEE_PERCENTILE
    floor: int = 1_000  # PRIORITY_FEE_FLOOR, micro-lamports per CU
    ceiling: int = 2_000_000  # PRIORITY_FEE_CEILING
    congestion: bool = False  # PRIORITY_FEE_CONGESTION: scale by the share of slots that paid a fee
    cache_s: float = 0.8  # about two slots


def congestion_multiplier(fees: list[int]) -> float:
    """The seed's levels: busy (most recent slots needed a fee) 2x, moderate 1.5x, quiet 1x."""
    if not fees:
        return 1.0
    paying = sum(1 for fee in fees if fee > 0) / len(fees)
    return 2.0 if paying > 0.75 else 1.5 if paying > 0.25 else 1.0


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    if not ordered:
        return 0
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def choose_fee(recent: list[int], policy: FeePolicy) -> int:
    fee = percentile(recent, policy.percentile)
    if policy.congestion:
        fee = int(fee * congestion_multiplier(recent))
    return max(policy.floor, min(policy.ceiling, fee))


class PriorityFeeEstimator:
    def __init__(self, rpc: SolanaRpc, policy: FeePolicy) -> None:
        self.rpc = rpc
        self.policy = policy
        self._cache: dict[tuple[str, ...], tuple[float, int]] = {}

    async def fee_for(self, writable_accounts: list[str]) -> int:
        key = tuple(sorted(set(writable_accounts)))[:MAX_ACCOUNTS]
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.policy.cache_s:
            return cached[1]
        answer = await self.rpc.call("getRecentPrioritizationFees", [list(key)])
        fee = choose_fee([int(slot["prioritizationFee"]) for slot in answer or []], self.policy)
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), fee)
        return fee
