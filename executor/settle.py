"""Settle: what the landed transaction really cost and earned, from its balance changes.

Cost = fee + tip in lamports (USD at the plan's solPriceUsd, else SOL_PRICE_USD).
Actual profit: the planner priced the trade in USD, the chain moves base units, so the
realized profit is the expected profit scaled by what really arrived of the output token
against what the routes promised (for a cycle, input token = output token, the net gain
against the expected net gain). Both figures come from the transaction's own pre/post
token balances for the wallet (lamports for native SOL).
"""
from __future__ import annotations

from venue import LAMPORTS_PER_SOL
from workflows.events import ErrorCode
from workflows.stages import Settlement, SettleRequest

from .errors import fail
from venue.rpc import SolanaRpc

NATIVE_MINT = "So11111111111111111111111111111111111111112"


def token_delta(meta: dict, account_keys: list[str], wallet: str, mint: str) -> int:
    """The wallet's change in `mint` base units (lamports, net of nothing, for native SOL)."""
    if mint == NATIVE_MINT:
        index = account_keys.index(wallet)
        return meta["postBalances"][index] - meta["preBalances"][index]

    def total(balances) -> int:
        return sum(int(b["uiTokenAmount"]["amount"]) for b in balances or [] if b.get("mint") == mint and b.get("owner") == wallet)

    return total(meta.get("postTokenBalances")) - total(meta.get("preTokenBalances"))


def realized_profit(request: SettleRequest, delta_in: int, delta_out: int) -> float | None:
    plan = request.plan
    promised_out = plan.routes[-1].out_amount
    if plan.input_token == plan.output_token:
        expected_gain = promised_out - plan.input_amount
        return plan.expected_profit * (delta_out / expected_gain) if expected_gain > 0 else None
    return plan.expected_profit * (delta_out / promised_out) if promised_out > 0 else None


async def settle(rpc: SolanaRpc, request: SettleRequest, sol_price_usd: float) -> Settlement:
    # On the aiohttp client, like the other per-plan calls: solana-py's httpx client cost ~5% of
    # the worker's busy CPU in a 20 plans/s profile for this one call.
    options = {"encoding": "json", "commitment": "confirmed", "maxSupportedTransactionVersion": 0}
    tx = await rpc.call("getTransaction", [request.signature, options])
    if tx is None:
        raise RuntimeError("confirmed transaction not yet visible to getTransaction")  # retried
    meta = tx.get("meta")
    if meta is None:
        fail(ErrorCode.TX_FAILED, "landed transaction has no status meta")
    loaded = meta.get("loadedAddresses") or {}
    keys = list(tx["transaction"]["message"]["accountKeys"]) + list(loaded.get("writable", [])) + list(loaded.get("readonly", []))
    delta_out = token_delta(meta, keys, request.wallet, request.plan.output_token)
    delta_in = token_delta(meta, keys, request.wallet, request.plan.input_token)
    price = request.plan.sol_price_usd or sol_price_usd
    cost_usd = (meta["fee"] + request.tip_lamports) / LAMPORTS_PER_SOL * price
    return Settlement(
        fee_lamports=meta["fee"],
        tip_lamports=request.tip_lamports,
        actual_profit_usd=realized_profit(request, delta_in, delta_out),
        cost_usd=round(cost_usd, 9),
        sol_price_usd=price,
    )
