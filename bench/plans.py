"""Benchmark plans: small, unique, wallet-agnostic.

Each plan pays a few lamports from whichever wallet the pool picks (`$WALLET`) to a sink
account and carries a memo with its plan id, so the cluster's admin view attributes every
transaction on the wire to exactly one plan (and finds a plan that landed twice).
"""
from __future__ import annotations

import base64
import time

from devtools.demo import MEMO_PROGRAM, plan_memo
from venue.instructions import SystemInstruction

SYSTEM_PROGRAM = "11111111111111111111111111111111"
NATIVE_MINT = "So11111111111111111111111111111111111111112"


def bench_plan(plan_id: str, method: str, sink: str, *, lamports: int = 5_000, deadline_ms: int = 30_000, max_latency_ms: int = 30_000) -> dict:
    now = int(time.time() * 1000)
    transfer = {
        "programId": SYSTEM_PROGRAM,
        "accounts": [
            {"pubkey": "$WALLET", "isSigner": True, "isWritable": True},
            {"pubkey": sink, "isSigner": False, "isWritable": True},
        ],
        "data": base64.b64encode(SystemInstruction.TRANSFER.to_bytes(4, "little") + lamports.to_bytes(8, "little")).decode(),
    }
    memo = {
        "programId": MEMO_PROGRAM,
        "accounts": [{"pubkey": "$WALLET", "isSigner": True, "isWritable": False}],
        "data": base64.b64encode(plan_memo(plan_id).encode()).decode(),
    }
    return {
        "planId": plan_id,
        "opportunityId": f"bench-{plan_id}",
        "strategy": "arbitrage",
        "executionMethod": method,
        "routes": [
            {
                "dex": "bench",
                "inputMint": NATIVE_MINT,
                "outputMint": NATIVE_MINT,
                "inAmount": lamports,
                "outAmount": lamports,
                "instructions": [transfer, memo],
            }
        ],
        "inputToken": NATIVE_MINT,
        "outputToken": NATIVE_MINT,
        "inputAmount": lamports,
        "expectedProfit": 0.01,
        "simulationSuccess": True,
        "gasEstimate": 20_000,
        "priorityFee": 1_000,
        "slippage": 0,
        "maxLatency": max_latency_ms,
        "deadline": now + deadline_ms,
        "timestamp": now,
    }
