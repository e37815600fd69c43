"""Settle: what the landed transaction really cost and earned, from its balance changes.

Cost = fee + tip in lamports (USD at the plan's solPriceUsd, else SOL_PRICE_USD).
Actual profit: the planner priced the trade in USD, the chain moves base units, so the
realized profit is the expected profit scaled by what really arrived of the output token
against what the routes promised (for a cycle, input token = output token, the net gain
against the expected net gain). Both figures come from the transaction's own pre/post
token balances for the wallet (lamports for native SOL).
"""
from __future__ import annotations

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.pubkey import Pubkey
from solders.signature import Signature

from workflows.events import ErrorCode
from workflows.stages import Settlement, SettleRequest

from .errors import fail

NATIVE_MINT = "So11111111111111111111111111111111111111112"
LAMPORTS_PER_SOL = 1_000_000_000


def token_delta(meta, account_keys: list[Pubkey], wallet: Pubkey, mint: str) -> int:
    """The wallet's change in `mint` base units (lamports, net of nothing, for native SOL)."""
    if mint == NATIVE_MINT:
        index = account_keys.index(wallet)
        return meta.post_balances[index] - meta.pre_balances[index]

    def total(balances) -> int:
        return sum(int(b.ui_token_amount.amount) for b in balances or [] if str(b.mint) == mint and b.owner == wallet)

    return total(meta.post_token_balances) - total(meta.pre_token_balances)


def realized_profit(request: SettleRequest, delta_in: int, delta_out: int) -> float | None:
    plan = request.plan
    promised_out = plan.routes[-1].out_amount
    if plan.input_token == plan.output_token:
        expected_gain = promised_out - plan.input_amount
        return plan.expected_profit * (delta_out / expected_gain) if expected_gain > 0 else None
    return plan.expected_profit * (delta_out / promised_out) if promised_out > 0 else None


async def settle(rpc: AsyncClient, request: SettleRequest, sol_price_usd: float) -> Settlement:
    answer = await rpc.get_transaction(Signature.from_string(request.signature), commitment=Confirmed, max_supported_transaction_version=0)
    if answer.value is None:
        raise RuntimeError("confirmed transaction not yet visible to getTransaction")  # retried
    tx = answer.value.transaction
    meta = tx.meta
    if meta is None:
        fail(ErrorCode.TX_FAILED, "landed transaction has no status meta")
    keys = list(tx.transaction.message.account_keys) + list(meta.loaded_addresses.writable if meta.loaded_addresses else []) + list(
        meta.loaded_addresses.readonly if meta.loaded_addresses else []
    )
    wallet = Pubkey.from_string(request.wallet)
    delta_out = token_delta(meta, keys, wallet, request.plan.output_token)
    delta_in = token_delta(meta, keys, wallet, request.plan.input_token)
    price = request.plan.sol_price_usd or sol_price_usd
    cost_usd = (meta.fee + request.tip_lamports) / LAMPORTS_PER_SOL * price
    return Settlement(
        fee_lamports=meta.fee,
        tip_lamports=request.tip_lamports,
        actual_profit_usd=realized_profit(request, delta_in, delta_out),
        cost_usd=round(cost_usd, 9),
        sol_price_usd=price,
    )
