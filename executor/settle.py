"""Settle: what the landed transaction really cost and earned, from its balance changes.

Cost = fee + tip in lamports (no tip when the transaction failed on-chain: its transfer was rolled
back), valued at the plan's `solPriceUsd`, else SOL_PRICE_USD.

Actual profit = the USD value of what the wallet really gained or lost in the plan's input and
output tokens, with the fee and the tip kept out (they are the cost, counted once):

    actualProfit = Σ over the plan's assets (inputToken, outputToken; once when they are the same)
                   of  change in base units / 10^decimals × USD price per whole token

- SOL is one asset, native or wrapped (wSOL, mint So111…112): the wallet's lamport change plus the
  change of the wSOL token balances it owns, with the fee (when the wallet paid it) and the tip
  added back, because the lamport change already has them taken out. 9 decimals, valued at the
  SOL price above.
- An SPL token: the change of the token balances the wallet owns, decimals from the transaction's
  own token balances, valued at the plan's `inputTokenPriceUsd` / `outputTokenPriceUsd`. The
  executor has no oracle: a token that moved without a price makes actualProfit unknown (None,
  absent from the result) rather than a number that is wrong. A token that did not move needs no
  price.
- Nothing is a ratio against what the plan expected: a memo-only plan that moved nothing gained 0,
  whatever its expectedProfit.

The figures come from the transaction's own meta (pre/post balances and token balances), so they
are what the chain did, not what the routes promised. Other assets the transaction touched (an
intermediate token's dust, SOL moved by a plan whose tokens are not SOL, such as the rent of an
account it opens) are not part of this trade's profit. `trade_profit` is the whole computation,
pure; `settle` only reads the transaction.
"""
from __future__ import annotations

from venue import LAMPORTS_PER_SOL
from workflows.events import NATIVE_MINT, ErrorCode, ExecutionPlanEvent
from workflows.stages import Settlement, SettleRequest

from .errors import fail
from venue.rpc import SolanaRpc

SOL_DECIMALS = 9


class UnreadableTransaction(ValueError):
    """The transaction's meta does not say what the wallet's balances did."""


def _owned(balances: list[dict] | None, wallet: str, mint: str) -> int:
    return sum(int(b["uiTokenAmount"]["amount"]) for b in balances or [] if b.get("mint") == mint and b.get("owner") == wallet)


def _decimals(meta: dict, mint: str) -> int | None:
    for balance in (meta.get("postTokenBalances") or []) + (meta.get("preTokenBalances") or []):
        if balance.get("mint") == mint:
            return int(balance["uiTokenAmount"]["decimals"])
    return None


def token_change(meta: dict, mint: str, wallet: str) -> int:
    """The wallet's change in `mint` base units, over every token account it owns for that mint."""
    return _owned(meta.get("postTokenBalances"), wallet, mint) - _owned(meta.get("preTokenBalances"), wallet, mint)


def sol_change(meta: dict, account_keys: list[str], wallet: str, tip_lamports: int) -> int:
    """The wallet's SOL change in lamports, native plus wSOL, before the fee and the tip it paid."""
    try:
        index = account_keys.index(wallet)
    except ValueError:
        raise UnreadableTransaction(f"wallet {wallet} is not among the transaction's accounts") from None
    native = meta["postBalances"][index] - meta["preBalances"][index]
    fee = meta["fee"] if index == 0 else 0  # the fee payer is the first account
    return native + fee + tip_lamports + token_change(meta, NATIVE_MINT, wallet)


def token_price_usd(plan: ExecutionPlanEvent, asset: str, sol_price_usd: float) -> float | None:
    """USD per whole token: SOL at the plan's or configured price, an SPL token only if the plan says."""
    if asset == NATIVE_MINT:
        return plan.sol_price_usd or sol_price_usd
    if asset == plan.output_token and plan.output_token_price_usd is not None:
        return plan.output_token_price_usd
    if asset == plan.input_token:
        return plan.input_token_price_usd
    return None


def trade_profit(meta: dict, account_keys: list[str], wallet: str, plan: ExecutionPlanEvent, tip_lamports: int, sol_price_usd: float) -> float | None:
    """actualProfit in USD (see the module docstring), or None when a token that moved has no price."""
    profit = 0.0
    # A plan names native SOL and wSOL by the same mint: one asset, valued once, in sol_change.
    for asset in dict.fromkeys((plan.input_token, plan.output_token)):
        if asset == NATIVE_MINT:
            change, decimals = sol_change(meta, account_keys, wallet, tip_lamports), SOL_DECIMALS
        else:
            change, decimals = token_change(meta, asset, wallet), _decimals(meta, asset)
        if change == 0:
            continue
        price = token_price_usd(plan, asset, sol_price_usd)
        if price is None or decimals is None:
            return None  # unknown, not wrong
        profit += change / 10**decimals * price
    return round(profit, 9)


def account_keys(tx: dict) -> list[str]:
    """Static keys, then those loaded from lookup tables: the order the balances are listed in."""
    loaded = tx["meta"].get("loadedAddresses") or {}
    return list(tx["transaction"]["message"]["accountKeys"]) + list(loaded.get("writable", [])) + list(loaded.get("readonly", []))


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
    price = request.plan.sol_price_usd or sol_price_usd
    # A transaction that failed on-chain paid its fee, but its tip transfer was rolled back with the rest.
    tip = request.tip_lamports if meta.get("err") is None else 0
    cost_usd = (meta["fee"] + tip) / LAMPORTS_PER_SOL * price
    try:
        profit = trade_profit(meta, account_keys(tx), request.wallet, request.plan, tip, price)
    except UnreadableTransaction as error:
        fail(ErrorCode.TX_FAILED, f"cannot settle: {error}")
    return Settlement(
        fee_lamports=meta["fee"],
        tip_lamports=tip,
        actual_profit_usd=profit,
        cost_usd=round(cost_usd, 9),
        sol_price_usd=price,
    )
