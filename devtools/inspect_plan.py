"""`hft-executor inspect-plan FILE|-`: the transaction a plan would become, without signing or sending.

It validates the plan exactly as the bridge does, composes the instructions the build
activity would (compute budget, flash loan, routes, tip), compiles the v0 message with the
lookup tables and reports every instruction decoded by name where known, the accounts
with their flags, the tables used, the size against 1232 bytes, the compute budget, the
fee, and the plan policy's verdict on the compiled message. It reads the chain only for what the plan does not carry (blockhash, lookup
tables, reserve data, recent fees); with no RPC reachable it still reports what it can.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys

from solders.hash import Hash
from solders.instruction import Instruction
from solders.pubkey import Pubkey

from venue import klend
from executor.build import compile_message, transaction_size
from executor.errors import PlanFailure
from venue.chain import BlockhashCache
from venue.jito import STATIC_TIP_ACCOUNTS, JitoClient, JitoError
from executor.keystore import KeyStore
from executor.policy import PlanPolicy, PolicySettings, PolicyViolation, declared_outflows
from venue.rpc import SolanaRpc

from venue import (
    COMPUTE_BUDGET_PROGRAM_ID,
    LAMPORTS_PER_SIGNATURE,
    PACKET_DATA_SIZE,
    ComputeBudgetInstruction,
    parse_compute_budget,
)
from venue.instructions import AssociatedTokenAccountInstruction, SystemInstruction, TokenInstruction
from workflows.events import TIPPED_METHODS, InvalidPlan, parse_plan
from worker.config import ExecutorConfig
from worker.control import environment
from worker.main import transaction_builder
from settings import CommandError

PROGRAMS = {
    COMPUTE_BUDGET_PROGRAM_ID: "compute budget",
    "11111111111111111111111111111111": "system",
    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA": "spl token",
    "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb": "spl token-2022",
    "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL": "associated token account",
    "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr": "memo",
    "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo": "memo v1",
    str(klend.KLEND_PROGRAM_ID): "kamino lending",
}
TOKEN_INSTRUCTIONS = {
    TokenInstruction.TRANSFER: "transfer",
    TokenInstruction.MINT_TO: "mint_to",
    TokenInstruction.BURN: "burn",
    TokenInstruction.CLOSE_ACCOUNT: "close_account",
    TokenInstruction.TRANSFER_CHECKED: "transfer_checked",
    TokenInstruction.SYNC_NATIVE: "sync_native",
}
# The token instructions whose data is the tag and an amount (u64 LE)
TOKEN_AMOUNT_INSTRUCTIONS = (TokenInstruction.TRANSFER, TokenInstruction.MINT_TO, TokenInstruction.BURN, TokenInstruction.TRANSFER_CHECKED)
ATA_INSTRUCTIONS = {
    b"": "create",  # empty data: the original Create
    bytes([AssociatedTokenAccountInstruction.CREATE]): "create",
    bytes([AssociatedTokenAccountInstruction.CREATE_IDEMPOTENT]): "create_idempotent",
}


def decode(ix: Instruction) -> dict:
    """A name and the arguments an operator checks, for the programs a plan usually uses."""
    program, data = str(ix.program_id), bytes(ix.data)
    if program == COMPUTE_BUDGET_PROGRAM_ID:
        budget = parse_compute_budget(data)
        if budget is not None and budget.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT:
            return {"name": "set_compute_unit_limit", "units": budget.value}
        if budget is not None and budget.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE:
            return {"name": "set_compute_unit_price", "microLamports": budget.value}
    if program == "11111111111111111111111111111111" and len(data) >= 12 and int.from_bytes(data[:4], "little") == SystemInstruction.TRANSFER:
        lamports = int.from_bytes(data[4:12], "little")
        to = str(ix.accounts[1].pubkey) if len(ix.accounts) > 1 else None
        return {"name": "jito tip" if to in STATIC_TIP_ACCOUNTS else "transfer", "lamports": lamports, "to": to}
    if program in ("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA", "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb") and data:
        decoded = {"name": TOKEN_INSTRUCTIONS.get(data[0], f"instruction {data[0]}")}
        if data[0] in TOKEN_AMOUNT_INSTRUCTIONS and len(data) >= 9:
            decoded["amount"] = int.from_bytes(data[1:9], "little")
        return decoded
    if program == "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL":
        return {"name": ATA_INSTRUCTIONS.get(data[:1], "instruction")}
    if program.startswith("Memo"):
        return {"name": "memo", "text": data.decode("utf-8", errors="replace")}
    known = klend.decode_instruction(ix)
    if known is not None:
        return known
    return {"name": None}


def describe(plan, wallet: str, composed, message, blockhash_known: bool) -> dict:
    size = transaction_size(message)
    price, limit = composed.compute_unit_price, composed.compute_unit_limit
    signatures = message.header.num_required_signatures
    priority_lamports = -(-limit * price // 1_000_000)  # ceil, as the runtime charges
    return {
        "planId": plan.plan_id,
        "wallet": wallet,
        "executionMethod": plan.execution_method.value,
        "size": size,
        "sizeLimit": PACKET_DATA_SIZE,
        "fits": size <= PACKET_DATA_SIZE,
        "computeUnitLimit": limit,
        "computeUnitPrice": price,
        "fee": {"baseLamports": LAMPORTS_PER_SIGNATURE * signatures, "priorityLamports": priority_lamports, "tipLamports": composed.tip_lamports},
        "tipAccount": composed.tip_account,
        "tipSource": composed.tip_source,
        "tipCappedBy": composed.tip_capped_by,
        "flashLoanBorrowIndex": composed.flash_loan_borrow_index,
        "lookupTables": [
            {"address": str(lookup.account_key), "writableIndexes": list(lookup.writable_indexes), "readonlyIndexes": list(lookup.readonly_indexes)}
            for lookup in message.address_table_lookups
        ],
        "blockhash": str(message.recent_blockhash) if blockhash_known else None,
        "instructions": [
            {
                "index": index,
                "programId": str(ix.program_id),
                "program": PROGRAMS.get(str(ix.program_id)),
                **{k: v for k, v in decode(ix).items()},
                "accounts": [{"pubkey": str(m.pubkey), "isSigner": m.is_signer, "isWritable": m.is_writable} for m in ix.accounts],
                "data": base64.b64encode(bytes(ix.data)).decode(),
            }
            for index, ix in enumerate(composed.instructions)
        ],
    }


async def policy_verdict(policy: PlanPolicy, wallet: str, message, tip_account: str | None, declared=None) -> dict:
    """The plan policy's static rules on the compiled message, as the worker would check them before
    signing (the per-minute total and the simulation depend on the moment, so they are left out)."""
    try:
        examined = await policy.examine(wallet, message, tip_account, declared)
    except PolicyViolation as violation:
        return {"verdict": "refused", "rule": violation.rule, "instruction": violation.index, "error": str(violation)}
    except Exception as error:  # noqa: BLE001 - no RPC for a table or a reserve: say so, report the rest
        return {"verdict": "unknown", "error": f"{type(error).__name__}: {error}"}
    return {"verdict": "pass", "spendLamports": examined.spend.total}


async def inspect(data: bytes, wallet: str | None, config: ExecutorConfig, keys: KeyStore | None, policy_settings: PolicySettings | None = None) -> dict:
    plan = parse_plan(data)
    wallet = wallet or plan.wallet or (keys.public_keys()[0] if keys is not None and len(keys) else None)
    if wallet is None:
        raise CommandError("inspect-plan: no wallet: give --wallet PUBKEY (or configure WALLET_1 / WALLET_KEYS_DIR)")
    Pubkey.from_string(wallet)
    rpc = SolanaRpc(config.rpc_endpoint, timeout_s=5.0, transport_retries=1)
    hot = SolanaRpc(config.rpc_endpoint)
    jito = JitoClient(config.jito_block_engine_url, uuid=config.jito_uuid, tip_retry_s=0, tip_floor_url=config.jito_tip_floor_url)
    try:
        blockhashes = BlockhashCache(rpc)
        floor = None
        if plan.execution_method in TIPPED_METHODS and config.jito_tip_percentile != "off":
            try:  # one read, as the worker's tip stream would hold it; none: today's rule, as the worker would
                floor = await jito.tip_floor()
            except JitoError:
                pass
        builder = transaction_builder(config, rpc, hot, blockhashes, jito.tip_accounts, tip_floor=lambda: floor, policy=policy_settings)
        composed = await builder.compose(plan, wallet)
        try:
            blockhash, known = (await blockhashes.get()).blockhash, True
        except Exception:  # no RPC: the size and layout do not depend on which blockhash
            blockhash, known = Hash.default(), False
        message = compile_message(Pubkey.from_string(wallet), composed, blockhash)
        report = describe(plan, wallet, composed, message, known)
        policy = PlanPolicy(policy_settings or PolicySettings(), lookup_tables=builder.lookup_tables, reserves=builder.reserves)
        report["policy"] = await policy_verdict(policy, wallet, message, composed.tip_account, declared_outflows(plan))
        return report
    finally:
        await jito.close()
        await hot.close()
        await rpc.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="one plan as JSON (- for stdin)")
    parser.add_argument("--wallet", help="build for this wallet (default: the plan's pinned wallet, else the first configured key)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
    env = environment()
    config = ExecutorConfig.from_environment(env)
    try:
        keys = KeyStore.from_environment(env)
    except Exception:
        keys = None
    try:
        report = asyncio.run(inspect(data, args.wallet, config, keys, PolicySettings.from_environment(env)))
    except InvalidPlan as invalid:
        print(f"{invalid.code.value}: {invalid}", file=sys.stderr)
        return 2
    except PlanFailure as failure:
        print(f"{failure.code.value}: {failure.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _print(report)
    return 0


def _print(report: dict) -> None:
    fits = "fits" if report["fits"] else "TOO LARGE"
    print(f"plan {report['planId']} for wallet {report['wallet']} ({report['executionMethod']})")
    print(f"  size {report['size']} / {report['sizeLimit']} bytes ({fits}); compute units {report['computeUnitLimit']} at {report['computeUnitPrice']} micro-lamports")
    fee = report["fee"]
    print(f"  fee: base {fee['baseLamports']} + priority {fee['priorityLamports']} lamports; tip {fee['tipLamports']} lamports")
    verdict = report["policy"]
    if verdict["verdict"] == "pass":
        print(f"  policy: pass (spends {verdict['spendLamports']} lamports)")
    else:
        print(f"  policy: {verdict['verdict'].upper()}: {verdict['error']}")
    for table in report["lookupTables"]:
        print(f"  lookup table {table['address']}: {len(table['writableIndexes'])} writable, {len(table['readonlyIndexes'])} read-only")
    for ix in report["instructions"]:
        extra = {k: v for k, v in ix.items() if k not in ("index", "programId", "program", "name", "accounts", "data")}
        print(f"  [{ix['index']}] {ix['program'] or ix['programId']}: {ix['name'] or '?'} {extra if extra else ''}")
        for account in ix["accounts"]:
            flags = ("s" if account["isSigner"] else "-") + ("w" if account["isWritable"] else "-")
            print(f"        {flags} {account['pubkey']}")
