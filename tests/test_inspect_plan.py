"""`hft-executor inspect-plan`: what a plan would become, checked against vectors derived here
from the klend IDL (discriminator = sha256("global:<name>")[:8], accounts in IDL order)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.token.associated import get_associated_token_address

from tests.stack import ROOT

KLEND = "KLend2g3cP87fffoy8q1mQqGKjrxjC8boSyAYavgmjD"
INSTRUCTIONS_SYSVAR = "Sysvar1nstructions1111111111111111111111111"
TOKEN = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
RESERVE = {name: str(Keypair().pubkey()) for name in ("reserve", "lendingMarket", "liquidityMint", "supplyVault", "feeReceiver")}


async def inspect(stack, plan: dict, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.dev.environment()}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker.cli", "inspect-plan", "-", *extra],
        cwd=ROOT, env=env, input=json.dumps(plan), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def flash_plan(stack, method: str, *, create_account: bool, amount: int = 20_000_000_000) -> dict:
    plan = stack.plan(method, wallet=0)
    del plan["gasEstimate"]
    plan["flashLoan"] = {
        "provider": "kamino", "amount": amount, "reserve": RESERVE["reserve"], "lendingMarket": RESERVE["lendingMarket"],
        "liquidityMint": RESERVE["liquidityMint"], "supplyVault": RESERVE["supplyVault"], "feeReceiver": RESERVE["feeReceiver"],
        "tokenProgram": TOKEN, "createTokenAccount": create_account,
    }  # fmt: skip
    return plan


def expected_klend(name: str, args: bytes, wallet: str, user_account: str, reserve_side: str) -> dict:
    authority = str(Pubkey.find_program_address([b"lma", bytes(Pubkey.from_string(RESERVE["lendingMarket"]))], Pubkey.from_string(KLEND))[0])
    accounts = [
        (wallet, True, False),  # userTransferAuthority
        (authority, False, False),  # lendingMarketAuthority
        (RESERVE["lendingMarket"], False, False),
        (RESERVE["reserve"], False, True),
        (RESERVE["liquidityMint"], False, False),
        (reserve_side, False, True),  # reserveSourceLiquidity (borrow) / reserveDestinationLiquidity (repay)
        (user_account, False, True),  # userDestinationLiquidity (borrow) / userSourceLiquidity (repay)
        (RESERVE["feeReceiver"], False, True),
        (KLEND, False, False),  # referrerTokenState: absent -> program id
        (KLEND, False, False),  # referrerAccount: absent -> program id
        (INSTRUCTIONS_SYSVAR, False, False),
        (TOKEN, False, False),
    ]
    return {
        "programId": KLEND,
        "data": base64.b64encode(hashlib.sha256(f"global:{name}".encode()).digest()[:8] + args).decode(),
        "accounts": [{"pubkey": p, "isSigner": s, "isWritable": w} for p, s, w in accounts],
    }


@pytest.mark.parametrize(("method", "create_account", "borrow_index"), [("jito_bundle", True, 3), ("rpc", False, 2)])
async def test_flash_loan_plan_wraps_the_route_in_klend_borrow_and_repay(stack, method, create_account, borrow_index):
    plan = flash_plan(stack, method, create_account=create_account)
    done = await inspect(stack, plan, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    wallet = plan["wallet"]
    user_account = str(get_associated_token_address(Pubkey.from_string(wallet), Pubkey.from_string(RESERVE["liquidityMint"])))
    ixs = report["instructions"]
    names = [ix["name"] for ix in ixs]

    assert names[:2] == ["set_compute_unit_limit", "set_compute_unit_price"], "compute budget first"
    assert ixs[0]["units"] == 600_000 and report["computeUnitLimit"] == 600_000  # flash loan, no gasEstimate
    assert report["flashLoanBorrowIndex"] == borrow_index
    if create_account:
        assert names[2] == "create_idempotent"
        assert ixs[2]["accounts"][1] == {"pubkey": user_account, "isSigner": False, "isWritable": True}
    borrow, repay = ixs[borrow_index], ixs[borrow_index + 4]  # three route instructions in between
    amount = plan["flashLoan"]["amount"].to_bytes(8, "little")
    want_borrow = expected_klend("flash_borrow_reserve_liquidity", amount, wallet, user_account, RESERVE["supplyVault"])
    want_repay = expected_klend("flash_repay_reserve_liquidity", amount + bytes([borrow_index]), wallet, user_account, RESERVE["supplyVault"])
    assert {k: borrow[k] for k in want_borrow} == want_borrow
    assert {k: repay[k] for k in want_repay} == want_repay
    assert repay["borrowInstructionIndex"] == borrow_index and ixs[repay["borrowInstructionIndex"]]["name"] == "flash_borrow_reserve_liquidity"
    assert names[borrow_index + 1 : borrow_index + 4] == ["transfer_checked", "transfer_checked", "memo"]
    if method == "jito_bundle":
        assert names[-1] == "jito tip" and len(ixs) == borrow_index + 6
    else:
        assert len(ixs) == borrow_index + 5
    assert report["fits"] and report["size"] <= 1232
    assert await stack.wire_transactions(plan["planId"]) == [], "inspect never sends"


async def test_plain_plan_report_and_human_output(stack):
    plan = stack.plan("rpc", wallet=1)
    report = json.loads((await inspect(stack, plan, "--json")).stdout)
    assert [ix["name"] for ix in report["instructions"]] == ["set_compute_unit_limit", "set_compute_unit_price", "transfer_checked", "transfer_checked", "memo"]
    assert report["computeUnitLimit"] == int(plan["gasEstimate"] * 1.1) and report["computeUnitPrice"] == plan["priorityFee"]
    assert report["fee"]["baseLamports"] == 5_000 and report["blockhash"] and report["lookupTables"] == []
    text = (await inspect(stack, plan)).stdout
    assert "transfer_checked" in text and "/ 1232 bytes" in text


async def test_invalid_plan_is_refused_with_its_code(stack):
    plan = stack.plan("rpc")
    plan["simulationSuccess"] = False
    done = await inspect(stack, plan)
    assert done.returncode == 2 and done.stderr.startswith("PLAN_NOT_SIMULATED")


async def test_flash_loan_reserve_read_from_chain_must_exist(stack):
    plan = stack.plan("rpc", wallet=2)
    plan["flashLoan"] = {"provider": "kamino", "amount": 1_000_000, "reserve": RESERVE["reserve"]}
    done = await inspect(stack, plan)
    assert done.returncode == 1
    assert done.stderr.startswith("BUILD_FAILED") and f"reserve {RESERVE['reserve']} does not exist" in done.stderr
