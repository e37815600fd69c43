"""Settle's accounting on hand-made getTransaction answers (no server): actualProfit is the USD value of
the wallet's real balance changes in the plan's tokens, the fee and the tip kept out of it and counted
once, in the cost (issue 20, item 5)."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from solders.pubkey import Pubkey

from executor.settle import settle, trade_profit
from workflows.events import ExecutionPlanEvent
from workflows.stages import SettleRequest

SOL = "So11111111111111111111111111111111111111112"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
BONK = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"
WALLET = str(Pubkey.new_unique())
OTHER = str(Pubkey.new_unique())  # someone else's accounts in the same transaction
TIP_ACCOUNT = "96gYZGLnJYVFmbjzopPSU6QiEV5fGqZNyN9nmNhvrZU5"
PRICE = 150.0  # the plans' solPriceUsd
CONFIGURED = 99.0  # SOL_PRICE_USD: must not be used when the plan has a price


def plan(input_token: str, output_token: str, *, input_amount: int = 1, out_amount: int = 2, expected_profit: float = 1.0, **extensions) -> ExecutionPlanEvent:
    memo = {"programId": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr", "accounts": [{"pubkey": "$WALLET", "isSigner": True, "isWritable": False}], "data": "aGk="}
    route = {"dex": "memo", "inputMint": input_token, "outputMint": output_token, "inAmount": input_amount, "outAmount": out_amount, "instructions": [memo]}
    wire = {
        "planId": "p1", "opportunityId": "o1", "strategy": "arbitrage", "executionMethod": "jito_bundle", "routes": [route],
        "inputToken": input_token, "outputToken": output_token, "inputAmount": input_amount, "expectedProfit": expected_profit,
        "simulationSuccess": True, "slippage": 50, "maxLatency": 10_000, "deadline": 1_900_000_000_000, "timestamp": 1_800_000_000_000,
        "solPriceUsd": PRICE, **extensions,
    }  # fmt: skip
    return ExecutionPlanEvent.model_validate_json(json.dumps(wire))


def token(owner: str, mint: str, amount: int, decimals: int, index: int = 1) -> dict:
    return {"accountIndex": index, "mint": mint, "owner": owner, "uiTokenAmount": {"amount": str(amount), "decimals": decimals}}


def transaction(*, fee: int, lamports: tuple[int, int], pre_tokens=(), post_tokens=(), tip: int = 0, err: object = None) -> dict:
    """A getTransaction answer (json encoding): the wallet pays the fee (first account); a tip goes to a tip account."""
    keys = [WALLET, TIP_ACCOUNT, OTHER]
    return {
        "slot": 1,
        "transaction": {"message": {"accountKeys": keys}, "signatures": ["sig"]},
        "meta": {
            "err": err,
            "fee": fee,
            "preBalances": [lamports[0], 1_000_000, 5_000_000],
            "postBalances": [lamports[1], 1_000_000 + tip, 5_000_000],
            "preTokenBalances": list(pre_tokens),
            "postTokenBalances": list(post_tokens),
            "loadedAddresses": {"writable": [], "readonly": []},
        },
    }


class FakeRpc:
    def __init__(self, tx: dict):
        self.tx = tx

    async def call(self, method: str, params: list):
        assert method == "getTransaction"
        return self.tx


async def settled(event: ExecutionPlanEvent, tx: dict, tip: int = 0):
    settlement = await settle(FakeRpc(tx), SettleRequest(event, WALLET, "sig", tip), CONFIGURED)
    net = settlement.actual_profit_usd - settlement.cost_usd if settlement.actual_profit_usd is not None else None  # as the workflow's _result
    return settlement, net


async def test_a_memo_only_sol_plan_gains_nothing_and_its_fee_is_the_cost():
    """The review's reproduction: native SOL in and out, inAmount 1, outAmount 2, expectedProfit 1.0, a 5,200-lamport
    fee. It reported actualProfit -5200.0 (the fee divided by a 1-lamport expected gain, times $1)."""
    event = plan(SOL, SOL, input_amount=1, out_amount=2, expected_profit=1.0)
    settlement, net = await settled(event, transaction(fee=5_200, lamports=(1_000_000_000, 999_994_800)))
    assert settlement.actual_profit_usd == pytest.approx(0.0, abs=1e-12)
    assert settlement.cost_usd == pytest.approx(0.00078)  # 5,200 lamports at $150, not at the configured $99
    assert net == pytest.approx(-0.00078)


async def test_a_sol_cycle_that_gains_a_hundredth_of_a_sol_after_fee_and_tip():
    """The wallet ends 0.01 SOL richer after paying 5,000 fee and 10,000 tip: the trade made 0.010015 SOL
    ($1.50225), it cost 15,000 lamports ($0.00225), net $1.50 = 0.01 SOL."""
    event = plan(SOL, SOL, input_amount=1_000_000_000, out_amount=1_010_015_000, expected_profit=1.50225)
    tx = transaction(fee=5_000, tip=10_000, lamports=(2_000_000_000, 2_010_000_000))
    settlement, net = await settled(event, tx, tip=10_000)
    assert settlement.actual_profit_usd == pytest.approx(1.50225)
    assert settlement.cost_usd == pytest.approx(0.00225)
    assert net == pytest.approx(1.5)


async def test_wsol_and_native_sol_are_one_asset():
    """Native SOL in, wSOL out: the wallet wraps 1 SOL into its wSOL account (lamports -1 SOL - fee) and the
    route leaves 1.002 SOL of wSOL there. Gain 0.002 SOL = $0.30; another owner's wSOL is not the wallet's."""
    event = plan(SOL, SOL, input_amount=1_000_000_000, out_amount=1_002_000_000, expected_profit=0.3)
    tx = transaction(
        fee=5_000,
        lamports=(3_000_000_000, 1_999_995_000),
        pre_tokens=[token(WALLET, SOL, 0, 9), token(OTHER, SOL, 7_000_000_000, 9, index=2)],
        post_tokens=[token(WALLET, SOL, 1_002_000_000, 9), token(OTHER, SOL, 1_000_000_000, 9, index=2)],
    )
    settlement, net = await settled(event, tx)
    assert settlement.actual_profit_usd == pytest.approx(0.3)
    assert net == pytest.approx(0.3 - 0.00075)


async def test_an_spl_leg_against_sol_is_valued_at_its_plan_price():
    """150 USDC (6 decimals, $1) in, 1.01 SOL out as wSOL that the transaction unwraps (the wSOL account closes:
    no post balance, its lamports go to the wallet). Gain 1.01 × $150 − 150 × $1 = $1.50."""
    event = plan(USDC, SOL, input_amount=150_000_000, out_amount=1_010_000_000, expected_profit=1.5, inputTokenPriceUsd=1.0)
    tx = transaction(
        fee=5_000,
        lamports=(1_000_000_000, 2_009_995_000),
        pre_tokens=[token(WALLET, USDC, 200_000_000, 6)],
        post_tokens=[token(WALLET, USDC, 50_000_000, 6)],
    )
    settlement, _ = await settled(event, tx)
    assert settlement.actual_profit_usd == pytest.approx(1.5)


def spl_swap(**prices) -> tuple[ExecutionPlanEvent, dict]:
    """1.0 USDC in (6 decimals), 1,000 BONK out (5 decimals)."""
    event = plan(USDC, BONK, input_amount=1_000_000, out_amount=100_000_000, expected_profit=0.05, **prices)
    tx = transaction(
        fee=5_000,
        lamports=(1_000_000_000, 999_995_000),
        pre_tokens=[token(WALLET, USDC, 3_000_000, 6), token(OTHER, BONK, 900_000_000, 5, index=2)],
        post_tokens=[token(WALLET, USDC, 2_000_000, 6), token(OTHER, BONK, 800_000_000, 5, index=2), token(WALLET, BONK, 100_000_000, 5, index=3)],
    )
    return event, tx


async def test_an_spl_output_with_prices_is_valued_from_what_arrived():
    """1,000 BONK at $0.00105 = $1.05, less 1 USDC at $1: $0.05. The fee is in the cost only."""
    settlement, net = await settled(*spl_swap(inputTokenPriceUsd=1.0, outputTokenPriceUsd=0.00105))
    assert settlement.actual_profit_usd == pytest.approx(0.05)
    assert net == pytest.approx(0.05 - 0.00075)


@pytest.mark.parametrize("prices", [{}, {"inputTokenPriceUsd": 1.0}, {"outputTokenPriceUsd": 0.00105}])
async def test_an_spl_token_that_moved_without_a_price_makes_the_profit_unknown(prices):
    settlement, net = await settled(*spl_swap(**prices))
    assert settlement.actual_profit_usd is None and net is None
    assert settlement.fee_lamports == 5_000 and settlement.cost_usd == pytest.approx(0.00075), "the cost is still known"


def test_a_token_that_did_not_move_needs_no_price():
    """A memo-only plan on an SPL token (the chaos campaign's): nothing moved, it gained 0, not 'unknown'."""
    event = plan(USDC, USDC, input_amount=0, out_amount=0, expected_profit=0.05)
    tx = transaction(fee=5_000, lamports=(1_000_000_000, 999_995_000), pre_tokens=[token(WALLET, USDC, 7, 6)], post_tokens=[token(WALLET, USDC, 7, 6)])
    assert trade_profit(tx["meta"], tx["transaction"]["message"]["accountKeys"], WALLET, event, 0, PRICE) == 0.0


def test_the_configured_sol_price_values_sol_when_the_plan_has_none():
    event = plan(SOL, SOL, input_amount=1_000_000_000, out_amount=1_010_000_000, expected_profit=1.0).model_copy(update={"sol_price_usd": None})
    tx = transaction(fee=5_000, lamports=(2_000_000_000, 2_009_995_000))
    assert trade_profit(tx["meta"], tx["transaction"]["message"]["accountKeys"], WALLET, event, 0, CONFIGURED) == pytest.approx(0.99)


@pytest.mark.parametrize(
    ("tokens", "prices", "problem"),
    [
        ((SOL, USDC), {"inputTokenPriceUsd": 150.0}, "valued at solPriceUsd"),
        ((USDC, USDC), {"inputTokenPriceUsd": 1.0, "outputTokenPriceUsd": 1.01}, "differ for the same token"),
        ((USDC, BONK), {"outputTokenPriceUsd": 0.0}, "greater than 0"),
        ((USDC, BONK), {"inputTokenPriceUsd": -1.0}, "greater than 0"),
        ((USDC, BONK), {"inputTokenPriceUsd": "1.0"}, "valid number"),
    ],
)
def test_token_prices_are_refused_when_they_cannot_mean_anything(tokens, prices, problem):
    with pytest.raises(ValidationError, match=problem):
        plan(*tokens, **prices)


def test_token_prices_must_be_finite():
    wire = plan(USDC, BONK).model_dump_json(by_alias=True, exclude_none=True).replace('"inputToken"', '"inputTokenPriceUsd": 1e400, "inputToken"')
    with pytest.raises(ValidationError, match="finite"):
        ExecutionPlanEvent.model_validate_json(wire)


async def test_the_worked_example_of_docs_plans_md():
    """docs/plans.md, `actualProfit` and `netProfit`: SOL -> USDC -> SOL, 1 SOL wrapped, 1.01 SOL of wSOL back."""
    event = plan(SOL, SOL, input_amount=1_000_000_000, out_amount=1_010_000_000, expected_profit=1.5)
    tx = transaction(
        fee=5_000,
        tip=10_000,
        lamports=(2_000_000_000, 999_985_000),
        pre_tokens=[token(WALLET, SOL, 0, 9), token(WALLET, USDC, 0, 6, index=3)],
        post_tokens=[token(WALLET, SOL, 1_010_000_000, 9), token(WALLET, USDC, 0, 6, index=3)],
    )
    settlement, net = await settled(event, tx, tip=10_000)
    assert (settlement.actual_profit_usd, settlement.cost_usd) == (pytest.approx(1.5), pytest.approx(0.00225))
    assert net == pytest.approx(1.49775)


async def test_a_transaction_that_failed_on_chain_paid_its_fee_but_not_its_tip():
    """The tip transfer was rolled back with the swap: counting it would put it in the cost and, added back, in the gain."""
    event = plan(SOL, SOL, input_amount=1_000_000_000, out_amount=1_010_000_000, expected_profit=1.5)
    tx = transaction(fee=5_000, lamports=(2_000_000_000, 1_999_995_000), err={"InstructionError": [2, {"Custom": 1}]})
    settlement, net = await settled(event, tx, tip=10_000)
    assert settlement.tip_lamports == 0 and settlement.cost_usd == pytest.approx(0.00075)
    assert settlement.actual_profit_usd == pytest.approx(0.0, abs=1e-12) and net == pytest.approx(-0.00075)
