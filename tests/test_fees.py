"""Priority fees and compute budget for plans that leave them to the executor."""
from __future__ import annotations

from solders.signature import Signature

from executor.build import BuildSettings, compute_unit_limit
from venue.fees import FeePolicy, choose_fee, congestion_multiplier, percentile
from devtools.demo import validate


def test_percentile_clamped_between_floor_and_ceiling():
    recent = [0, 0, 5_000, 10_000, 20_000, 40_000, 80_000, 160_000]
    assert percentile(recent, 50) in (10_000, 20_000)
    assert choose_fee(recent, FeePolicy(percentile=75, floor=1_000, ceiling=2_000_000)) == 40_000
    assert choose_fee(recent, FeePolicy(percentile=100, floor=1_000, ceiling=50_000)) == 50_000  # ceiling
    assert choose_fee([0, 0, 0], FeePolicy(floor=1_000)) == 1_000  # quiet accounts: the floor
    assert choose_fee([], FeePolicy(floor=777)) == 777


def test_congestion_multipliers_scale_the_estimate_when_enabled():
    busy = [10_000] * 9 + [0]
    assert congestion_multiplier(busy) == 2.0
    assert congestion_multiplier([10_000, 0, 0, 10_000]) == 1.5
    assert congestion_multiplier([0, 0, 0, 10_000, 0, 0, 0, 0]) == 1.0
    policy = FeePolicy(percentile=50, floor=0, ceiling=10**9, congestion=True)
    assert choose_fee(busy, policy) == 20_000
    assert choose_fee(busy, FeePolicy(percentile=50, floor=0, ceiling=10**9)) == 10_000


def test_compute_unit_limit_from_gas_estimate_with_margin_and_flash_loan_default(stack):
    plan = stack.plan("rpc")
    settings = BuildSettings(compute_unit_limit=200_000, compute_unit_margin=0.25)
    assert compute_unit_limit(validate(plan), settings) == int(plan["gasEstimate"] * 1.25)
    del plan["gasEstimate"]
    assert compute_unit_limit(validate(plan), settings) == 200_000
    plan["flashLoan"] = {"provider": "kamino", "amount": 1_000_000, "reserve": stack.pool.mint_in}
    assert compute_unit_limit(validate(plan), settings) == 600_000
    plan["gasEstimate"] = 1_390_000
    assert compute_unit_limit(validate(plan), settings) == 1_400_000  # never past the runtime's cap


async def test_plan_without_priority_fee_pays_the_estimate_and_lands(stack):
    plan = stack.plan("rpc", wallet=3)
    del plan["priorityFee"]
    result = await stack.execute(plan)
    assert result["status"] == "success", result
    answer = await stack.rpc.get_transaction(Signature.from_string(result["signature"]), encoding="base64", max_supported_transaction_version=0)
    message = answer.value.transaction.transaction.message
    price = [bytes(ix.data) for ix in message.instructions if bytes(ix.data)[:1] == b"\x03"][0]
    # The local cluster's recent fees for these accounts are below the floor: the floor is paid.
    assert int.from_bytes(price[1:9], "little") == stack.config.priority_fee_floor
