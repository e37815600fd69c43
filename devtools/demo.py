"""Sample swap-shaped plans for the local cluster (`dev --demo`, the tests, the benchmark).

A plan pays `amountIn` of token A into the pool's vault and receives `amountOut` of token B
from a vault that has approved the wallet as its delegate: real SPL Token transfers, so
balances really move and settle can measure the actual profit. The pool's out-vault is
per wallet (an SPL account has one delegate), so these plans pin their wallet; a Memo
instruction carries the plan id, so every transaction on the wire can be traced to its plan.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

from solders.pubkey import Pubkey

from venue.instructions import TokenInstruction
from workflows.events import ExecutionPlanEvent

TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"  # SPL Memo v2 (built into LiteSVM)


def _transfer_checked(source: str, mint: str, destination: str, amount: int, decimals: int) -> dict:
    data = bytes([TokenInstruction.TRANSFER_CHECKED]) + amount.to_bytes(8, "little") + bytes([decimals])
    return {
        "programId": TOKEN_PROGRAM,
        "accounts": [
            {"pubkey": source, "isSigner": False, "isWritable": True},
            {"pubkey": mint, "isSigner": False, "isWritable": False},
            {"pubkey": destination, "isSigner": False, "isWritable": True},
            {"pubkey": "$WALLET", "isSigner": True, "isWritable": False},
        ],
        "data": base64.b64encode(data).decode(),
    }


def memo(text: str) -> dict:
    return {"programId": MEMO_PROGRAM, "accounts": [{"pubkey": "$WALLET", "isSigner": True, "isWritable": False}], "data": base64.b64encode(text.encode()).decode()}


def plan_memo(plan_id: str) -> str:
    return f"hft-executor plan {plan_id}"


@dataclass(frozen=True)
class DemoPool:
    """The JSON the local cluster's admin returns from POST /fixtures/swap-pool."""

    mint_in: str
    mint_out: str
    decimals: int
    vault_in: str
    vaults_out: dict[str, str]

    @classmethod
    def from_json(cls, data: dict) -> "DemoPool":
        return cls(data["mintIn"], data["mintOut"], data["decimals"], data["vaultIn"], dict(data["vaultsOut"]))

    def plan(
        self,
        plan_id: str,
        wallet: str,
        method: str = "rpc",
        *,
        amount_in: int = 1_000_000,
        amount_out: int = 1_010_000,
        expected_profit: float = 0.05,
        deadline_ms: int = 30_000,
        max_latency_ms: int = 30_000,
        opportunity_id: str | None = None,
        now_ms: int | None = None,
        token_price_usd: float | None = 5.0,
    ) -> dict:
        """One plan as wire JSON (camelCase dict). Both tokens are priced at `token_price_usd` per
        whole token, so settle can value what moved: 1.01 B for 1.0 A at $5 is the $0.05 expected."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        Pubkey.from_string(wallet)
        instructions = [
            _transfer_checked(f"$WALLET_ATA:{self.mint_in}", self.mint_in, self.vault_in, amount_in, self.decimals),
            _transfer_checked(self.vaults_out[wallet], self.mint_out, f"$WALLET_ATA:{self.mint_out}", amount_out, self.decimals),
            memo(plan_memo(plan_id)),
        ]
        return {
            "planId": plan_id,
            "opportunityId": opportunity_id or f"opp-{plan_id}",
            "strategy": "arbitrage",
            "executionMethod": method,
            "routes": [
                {
                    "dex": "localnet-pool",
                    "inputMint": self.mint_in,
                    "outputMint": self.mint_out,
                    "inAmount": amount_in,
                    "outAmount": amount_out,
                    "instructions": instructions,
                }
            ],
            "inputToken": self.mint_in,
            "outputToken": self.mint_out,
            "inputAmount": amount_in,
            "expectedProfit": expected_profit,
            "simulationSuccess": True,
            "gasEstimate": 60_000,
            "priorityFee": 1_000,
            "slippage": 50,
            "maxLatency": max_latency_ms,
            "deadline": now + deadline_ms,
            "timestamp": now,
            "wallet": wallet,
        } | ({"inputTokenPriceUsd": token_price_usd, "outputTokenPriceUsd": token_price_usd} if token_price_usd is not None else {})


def validate(plan: dict) -> ExecutionPlanEvent:
    return ExecutionPlanEvent.model_validate_json(json.dumps(plan))  # strict: enums only from JSON text
