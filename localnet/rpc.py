"""Solana JSON-RPC over HTTP: the methods the executor and its tests use, shaped as agave answers them.

Shapes and error codes follow agave's rpc/src/rpc.rs and rpc-client-api/src/custom_error.rs;
the test of fidelity is that solana-py's AsyncClient, which parses every answer with
solders' strict response types, works against this unchanged.
"""
from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import base58
from solders.hash import Hash
from solders.message import MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import InstructionErrorCustom, TransactionErrorFieldless, TransactionErrorInstructionError

from venue import (
    COMPUTE_BUDGET_PROGRAM_ID,
    DEFAULT_INSTRUCTION_COMPUTE_UNITS,
    LAMPORTS_PER_SIGNATURE,
    MAX_COMPUTE_UNITS,
    PACKET_DATA_SIZE,
    ComputeBudgetInstruction,
    parse_compute_budget,
)

from .intake import IntakeRefused, decode_transaction
from .jsonrpc import INVALID_PARAMS, HttpStatus, JsonRpcApp, RpcError, config, param
from venue.programs import TOKEN_PROGRAMS

from .ledger import GENESIS_SLOT, TOKEN_ACCOUNT_LEN, Commitment, error_json, ui_amount_string
from .reads import RPC_READ_METHODS, read_fault_gate
from .view import ClusterView

# agave rpc-client-api/src/custom_error.rs
BLOCK_CLEANED_UP = -32001
SEND_TRANSACTION_PREFLIGHT_FAILURE = -32002
TRANSACTION_SIGNATURE_VERIFICATION_FAILURE = -32003
BLOCK_NOT_AVAILABLE = -32004
SLOT_SKIPPED = -32007
UNSUPPORTED_TRANSACTION_VERSION = -32015
MAX_GET_CONFIRMED_BLOCKS_RANGE = 500_000  # agave rpc-client-api MAX_GET_CONFIRMED_BLOCKS_RANGE
MAX_SIGNATURE_STATUSES = 256  # agave MAX_GET_SIGNATURE_STATUSES_QUERY_ITEMS
MAX_MULTIPLE_ACCOUNTS = 100  # agave MAX_MULTIPLE_ACCOUNTS
MAX_SLOT_LEADERS = 5000  # agave MAX_GET_SLOT_LEADERS
SLOTS_PER_EPOCH = 432_000
SOLANA_CORE_VERSION = "2.2.20"
FEATURE_SET = 3294202862
LEADER_SLOTS = 4  # NUM_CONSECUTIVE_LEADER_SLOTS
RATE_LIMITED_BODY = {"jsonrpc": "2.0", "error": {"code": 429, "message": "Too many requests for a specific RPC call"}, "id": None}


def rpc_commitment(cfg: dict) -> Commitment:
    value = cfg.get("commitment", "finalized")
    # Deprecated spellings agave still maps: recent/single -> processed, singleGossip -> confirmed, root/max -> finalized.
    aliases = {"recent": "processed", "single": "processed", "singleGossip": "confirmed", "root": "finalized", "max": "finalized"}
    try:
        return Commitment(aliases.get(value, value))
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"Invalid params: unknown variant `{value}`") from None


def parse_pubkey(value: Any) -> Pubkey:
    try:
        return Pubkey.from_string(value)
    except Exception:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None


def parse_signature(value: Any) -> Signature:
    try:
        return Signature.from_string(value)
    except Exception:
        raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None


def transaction_error_message(err: object) -> str:
    """The Display text agave puts after 'Transaction simulation failed: '."""
    if err == TransactionErrorFieldless.BlockhashNotFound:
        return "Blockhash not found"
    if err == TransactionErrorFieldless.AlreadyProcessed:
        return "This transaction has already been processed"
    if err == TransactionErrorFieldless.AccountNotFound:
        return "Attempt to debit an account but found no record of a prior credit."
    if err == TransactionErrorFieldless.InsufficientFundsForFee:
        return "Insufficient funds for fee"
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        text = f"custom program error: {inner.code:#x}" if isinstance(inner, InstructionErrorCustom) else str(inner).split(".")[-1]
        return f"Error processing Instruction {err.index}: {text}"
    return str(err).split(".")[-1]


def encode_account(account, encoding: str) -> dict:
    data = bytes(account.data)
    if encoding == "base58":
        encoded: Any = [base58.b58encode(data).decode(), "base58"]
    else:  # base64; jsonParsed falls back to base64 when no parser applies, as agave does
        encoded = [base64.b64encode(data).decode(), "base64"]
    return {
        "data": encoded,
        "executable": account.executable,
        "lamports": account.lamports,
        "owner": str(account.owner),
        "rentEpoch": 18446744073709551615,
        "space": len(data),
    }


def fee_for_message(message) -> int:
    """Base fee per signature plus the priority fee on the requested compute-unit limit."""
    keys = list(message.account_keys)
    price, limit, other = 0, None, 0
    for ix in message.instructions:
        if str(keys[ix.program_id_index]) == COMPUTE_BUDGET_PROGRAM_ID:
            parsed = parse_compute_budget(bytes(ix.data))  # trailing bytes ignored, as the runtime's borsh does
            if parsed is not None and parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT:
                limit = parsed.value
            elif parsed is not None and parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE:
                price = parsed.value
        else:
            other += 1
    if limit is None:
        limit = min(MAX_COMPUTE_UNITS, DEFAULT_INSTRUCTION_COMPUTE_UNITS * other)
    return message.header.num_required_signatures * LAMPORTS_PER_SIGNATURE + math.ceil(price * limit / 1_000_000)


def build_rpc(cluster: ClusterView) -> JsonRpcApp:
    app = JsonRpcApp("rpc", read_fault_gate("rpc", cluster.faults, cluster.intake.counters, RPC_READ_METHODS, RATE_LIMITED_BODY))
    ledger = cluster.ledger

    def context(commitment: Commitment = Commitment.processed) -> dict:
        return {"slot": ledger.slot_at(commitment), "apiVersion": SOLANA_CORE_VERSION}

    def with_context(value: Any, commitment: Commitment = Commitment.processed) -> dict:
        return {"context": context(commitment), "value": value}

    @app.method("getHealth")
    async def get_health(params, request):
        return "ok"

    @app.method("getVersion")
    async def get_version(params, request):
        return {"solana-core": SOLANA_CORE_VERSION, "feature-set": FEATURE_SET}

    @app.method("getGenesisHash")
    async def get_genesis_hash(params, request):
        return str(ledger.genesis_hash)

    @app.method("getIdentity")
    async def get_identity(params, request):
        return {"identity": str(cluster.validators[0].identity.pubkey())}

    @app.method("getSlot")
    async def get_slot(params, request):
        return ledger.slot_at(rpc_commitment(config(params, 0)))

    @app.method("getBlockHeight")
    async def get_block_height(params, request):
        return ledger.block_height_at(rpc_commitment(config(params, 0)))

    @app.method("getEpochInfo")
    async def get_epoch_info(params, request):
        commitment = rpc_commitment(config(params, 0))
        slot = ledger.slot_at(commitment)
        return {
            "absoluteSlot": slot,
            "blockHeight": ledger.block_height_at(commitment),
            "epoch": slot // SLOTS_PER_EPOCH,
            "slotIndex": slot % SLOTS_PER_EPOCH,
            "slotsInEpoch": SLOTS_PER_EPOCH,
            "transactionCount": len(ledger.records),
        }

    @app.method("getLatestBlockhash")
    async def get_latest_blockhash(params, request):
        commitment = rpc_commitment(config(params, 0))
        blockhash, last_valid = ledger.blockhash_at(commitment)
        return with_context({"blockhash": str(blockhash), "lastValidBlockHeight": last_valid}, commitment)

    @app.method("isBlockhashValid")
    async def is_blockhash_valid(params, request):
        commitment = rpc_commitment(config(params, 1))
        try:
            blockhash = Hash.from_string(param(params, 0, ""))
        except Exception:
            raise RpcError(INVALID_PARAMS, "Invalid param: Invalid") from None
        return with_context(ledger.blockhash_valid(blockhash), commitment)

    @app.method("getBalance")
    async def get_balance(params, request):
        commitment = rpc_commitment(config(params, 1))
        account = ledger.svm.get_account(parse_pubkey(param(params, 0)))
        return with_context(account.lamports if account else 0, commitment)

    @app.method("getAccountInfo")
    async def get_account_info(params, request):
        cfg = config(params, 1)
        account = ledger.svm.get_account(parse_pubkey(param(params, 0)))
        value = encode_account(account, cfg.get("encoding", "base58")) if account and account.lamports else None
        return with_context(value, rpc_commitment(cfg))

    @app.method("getMultipleAccounts")
    async def get_multiple_accounts(params, request):
        keys = param(params, 0, [])
        if len(keys) > MAX_MULTIPLE_ACCOUNTS:
            raise RpcError(INVALID_PARAMS, f"Too many inputs provided; max {MAX_MULTIPLE_ACCOUNTS}")
        cfg = config(params, 1)
        encoding = cfg.get("encoding", "base64")
        accounts = [ledger.svm.get_account(parse_pubkey(k)) for k in keys]
        value = [encode_account(a, encoding) if a and a.lamports else None for a in accounts]
        return with_context(value, rpc_commitment(cfg))

    @app.method("getMinimumBalanceForRentExemption")
    async def get_minimum_balance(params, request):
        return ledger.svm.minimum_balance_for_rent_exemption(int(param(params, 0, 0)))

    def token_amount(data: bytes) -> dict:
        mint = ledger.svm.get_account(Pubkey(data[0:32]))
        decimals = bytes(mint.data)[44] if mint is not None and len(mint.data) > 44 else 0
        amount = int.from_bytes(data[64:72], "little")
        return {
            "amount": str(amount),
            "decimals": decimals,
            "uiAmount": amount / 10**decimals,
            "uiAmountString": ui_amount_string(amount, decimals),
        }

    def token_account_data(pubkey: Pubkey) -> bytes:
        account = ledger.svm.get_account(pubkey)
        if account is None or account.owner not in TOKEN_PROGRAMS or len(account.data) < TOKEN_ACCOUNT_LEN:
            raise RpcError(INVALID_PARAMS, "Invalid param: not a Token account")
        return bytes(account.data)

    @app.method("getTokenAccountBalance")
    async def get_token_account_balance(params, request):
        data = token_account_data(parse_pubkey(param(params, 0)))
        return with_context(token_amount(data), rpc_commitment(config(params, 1)))

    @app.method("getTokenAccountsByOwner")
    async def get_token_accounts_by_owner(params, request):
        owner = parse_pubkey(param(params, 0))
        selector = param(params, 1, {})
        cfg = config(params, 2)
        mint = parse_pubkey(selector["mint"]) if "mint" in selector else None
        program = parse_pubkey(selector["programId"]) if "programId" in selector else None
        if mint is None and program is None:
            raise RpcError(INVALID_PARAMS, "Invalid params: expected mint or programId")
        programs = [program] if program is not None else list(TOKEN_PROGRAMS)
        found = []
        for token_program in programs:
            for pubkey, account in ledger.svm.get_program_accounts(token_program):
                data = bytes(account.data)
                if len(data) < TOKEN_ACCOUNT_LEN or Pubkey(data[32:64]) != owner:
                    continue
                if mint is not None and Pubkey(data[0:32]) != mint:
                    continue
                found.append({"pubkey": str(pubkey), "account": encode_account(account, cfg.get("encoding", "base64"))})
        return with_context(found, rpc_commitment(cfg))

    @app.method("requestAirdrop")
    async def request_airdrop(params, request):
        to = parse_pubkey(param(params, 0))
        lamports = int(param(params, 1, 0))
        return str(cluster.airdrop(to, lamports))

    async def intake_delay(channel: str) -> None:
        delay = cluster.faults.channel(channel).delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)

    def decode_wire(params) -> tuple[VersionedTransaction, dict]:
        cfg = config(params, 1)
        encoding = cfg.get("encoding", "base58")
        text = param(params, 0)
        if not isinstance(text, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected an encoded transaction")
        try:
            raw = base64.b64decode(text, validate=True) if encoding == "base64" else base58.b58decode(text)
        except Exception:
            raise RpcError(INVALID_PARAMS, f"invalid {encoding} encoding: {text[:16]}...") from None
        if len(raw) > PACKET_DATA_SIZE:
            raise RpcError(
                INVALID_PARAMS,
                f"{encoding} encoded solana_transaction::versioned::VersionedTransaction too large: "
                f"{len(text)} bytes (max: encoded/raw {math.ceil(PACKET_DATA_SIZE * 4 / 3) if encoding == 'base64' else 1683}/{PACKET_DATA_SIZE})",
            )
        try:
            return decode_transaction(raw), cfg
        except IntakeRefused as refused:
            raise RpcError(INVALID_PARAMS, f"failed to deserialize solana_transaction::versioned::VersionedTransaction: {refused}") from None

    def simulation_value(err, meta, accounts=None) -> dict:
        return {
            "err": error_json(err),
            "logs": list(meta.logs()) if meta else [],
            "accounts": accounts,
            "unitsConsumed": meta.compute_units_consumed() if meta else 0,
            "returnData": None,
            "innerInstructions": None,
            "replacementBlockhash": None,
            "loadedAccountsDataSize": None,
        }

    @app.method("sendTransaction")
    async def send_transaction(params, request):
        if cluster.intake.rate_limited("rpc"):
            raise HttpStatus(429, RATE_LIMITED_BODY)
        await intake_delay("rpc")
        verdict = cluster.intake.verdict("rpc")
        tx, cfg = decode_wire(params)
        if not cfg.get("skipPreflight", False):
            if not all(tx.verify_with_results()):
                raise RpcError(TRANSACTION_SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
            err, meta, _ = ledger.simulate(tx)
            if err is not None:
                raise RpcError(
                    SEND_TRANSACTION_PREFLIGHT_FAILURE,
                    f"Transaction simulation failed: {transaction_error_message(err)}",
                    simulation_value(err, meta),
                )
        try:
            return str(cluster.intake.receive(tx, "rpc", verdict))
        except IntakeRefused as refused:
            raise RpcError(INVALID_PARAMS, str(refused)) from None

    @app.method("simulateTransaction")
    async def simulate_transaction(params, request):
        tx, cfg = decode_wire(params)
        if cfg.get("sigVerify") and not all(tx.verify_with_results()):
            raise RpcError(TRANSACTION_SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
        replace = cfg.get("replaceRecentBlockhash", False)
        replacement = None
        if replace:
            blockhash, last_valid = ledger.latest_blockhash
            replacement = {"blockhash": str(blockhash), "lastValidBlockHeight": last_valid}
        with ledger.sigverify(bool(cfg.get("sigVerify"))):
            err, meta, post = ledger.simulate(tx, check_blockhash=not replace)
        accounts = None
        wanted = (cfg.get("accounts") or {}).get("addresses")
        if wanted:
            post_map = dict(post)
            accounts = []
            for address in wanted:
                key = parse_pubkey(address)
                account = post_map.get(key) or ledger.svm.get_account(key)
                accounts.append(encode_account(account, "base64") if account else None)
        value = simulation_value(err, meta, accounts)
        value["replacementBlockhash"] = replacement
        return with_context(value)

    @app.method("getSignatureStatuses")
    async def get_signature_statuses(params, request):
        signatures = param(params, 0, [])
        if not isinstance(signatures, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a list of signatures")
        if len(signatures) > MAX_SIGNATURE_STATUSES:
            raise RpcError(INVALID_PARAMS, f"Too many inputs provided; max {MAX_SIGNATURE_STATUSES}")
        search_history = bool(config(params, 1).get("searchTransactionHistory", False))
        return with_context([ledger.status(parse_signature(s), search_history=search_history) for s in signatures])

    @app.method("getTransaction")
    async def get_transaction(params, request):
        signature = parse_signature(param(params, 0))
        cfg = param(params, 1, {})
        if isinstance(cfg, str):  # the deprecated form passes the encoding alone
            cfg = {"encoding": cfg}
        commitment = rpc_commitment(cfg)
        if commitment is Commitment.processed:
            raise RpcError(INVALID_PARAMS, "Method does not support commitment below `confirmed`")
        record = ledger.records.get(signature)
        if record is None or not ledger.reaches(record.slot, commitment):
            return None
        max_version = cfg.get("maxSupportedTransactionVersion")
        is_v0 = isinstance(record.transaction.message, MessageV0)
        if is_v0 and (max_version is None or max_version < 0):
            raise RpcError(
                UNSUPPORTED_TRANSACTION_VERSION,
                "Transaction version (0) is not supported by the requesting client. "
                "Please try the request again with the following configuration parameter: \"maxSupportedTransactionVersion\": 0",
            )
        return encode_confirmed_transaction(record, cfg.get("encoding", "json"), include_version=max_version is not None)

    # --- blocks: agave rpc/src/rpc.rs get_block, get_blocks, get_blocks_with_limit ---------------

    def at_least_confirmed(cfg: dict) -> Commitment:
        commitment = rpc_commitment(cfg)
        if commitment is Commitment.processed:
            raise RpcError(INVALID_PARAMS, "Method does not support commitment below `confirmed`")
        return commitment

    def block_slots(start: int, end: int) -> list[int]:
        return [slot for slot in ledger.blocks if start <= slot <= end]

    @app.method("getBlock")
    async def get_block(params, request):
        slot = param(params, 0)
        if not isinstance(slot, int) or slot < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a slot")
        cfg = param(params, 1, {}) or {}
        if isinstance(cfg, str):  # the deprecated form passes the encoding alone
            cfg = {"encoding": cfg}
        commitment = at_least_confirmed(cfg)
        if slot <= ledger.slot_at(Commitment.finalized):  # rooted: the blockstore knows it was skipped
            if slot in ledger.blocks:
                return encode_block(slot, cfg)
            if ledger.was_skipped(slot):
                raise RpcError(SLOT_SKIPPED, f"Slot {slot} was skipped, or missing due to ledger jump to recent snapshot")
            first = next(iter(ledger.blocks), GENESIS_SLOT)
            raise RpcError(BLOCK_CLEANED_UP, f"Block {slot} cleaned up, does not exist on this node. First available block: {first}")
        if commitment is Commitment.confirmed and slot in ledger.blocks and ledger.reaches(slot, Commitment.confirmed):
            return encode_block(slot, cfg)
        raise RpcError(BLOCK_NOT_AVAILABLE, f"Block not available for slot {slot}")

    def encode_block(slot: int, cfg: dict) -> dict:
        details = cfg.get("transactionDetails") or "full"  # clients send null for a default
        if details not in ("full", "signatures", "none"):
            raise RpcError(INVALID_PARAMS, f"Invalid params: transactionDetails {details!r} is not supported here (full, signatures, none)")
        height, blockhash, parent = ledger.blocks[slot]
        records = ledger.block_transactions(slot)
        previous = ledger.parent_blockhash(slot)
        answer: dict[str, Any] = {"previousBlockhash": str(previous or Hash.default()), "blockhash": str(blockhash), "parentSlot": parent}
        if details == "full":
            max_version = cfg.get("maxSupportedTransactionVersion")
            if max_version is None and any(isinstance(r.transaction.message, MessageV0) for r in records):
                raise RpcError(
                    UNSUPPORTED_TRANSACTION_VERSION,
                    "Transaction version (0) is not supported by the requesting client. "
                    "Please try the request again with the following configuration parameter: \"maxSupportedTransactionVersion\": 0",
                )
            answer["transactions"] = []
            for record in records:
                item = encode_confirmed_transaction(record, cfg.get("encoding") or "json", include_version=max_version is not None)
                del item["slot"], item["blockTime"]
                answer["transactions"].append(item)
        elif details == "signatures":
            answer["signatures"] = [str(r.signature) for r in records]
        if cfg.get("rewards") is not False:
            answer["rewards"] = []
        answer["blockTime"] = ledger.slot_times[slot] // 1_000_000_000 if slot in ledger.slot_times else None
        answer["blockHeight"] = height
        return answer

    @app.method("getBlocks")
    async def get_blocks(params, request):
        start = param(params, 0)
        end = param(params, 1)
        cfg = end if isinstance(end, dict) else config(params, 2)
        end = end if isinstance(end, int) else None
        if not isinstance(start, int) or start < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a start slot")
        commitment = at_least_confirmed(cfg)
        end = min(start + MAX_GET_CONFIRMED_BLOCKS_RANGE if end is None else end, ledger.slot_at(commitment))
        if end < start:
            return []
        if end - start > MAX_GET_CONFIRMED_BLOCKS_RANGE:
            raise RpcError(INVALID_PARAMS, f"Slot range too large; max {MAX_GET_CONFIRMED_BLOCKS_RANGE}")
        return block_slots(start, end)

    @app.method("getBlocksWithLimit")
    async def get_blocks_with_limit(params, request):
        start, limit = param(params, 0), param(params, 1)
        if not isinstance(start, int) or not isinstance(limit, int) or start < 0 or limit < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: expected a start slot and a limit")
        if limit > MAX_GET_CONFIRMED_BLOCKS_RANGE:
            raise RpcError(INVALID_PARAMS, f"Limit too large; max {MAX_GET_CONFIRMED_BLOCKS_RANGE}")
        commitment = at_least_confirmed(config(params, 2))
        return block_slots(start, ledger.slot_at(commitment))[:limit]

    @app.method("getRecentPrioritizationFees")
    async def get_recent_prioritization_fees(params, request):
        keys = [parse_pubkey(k) for k in param(params, 0, [])]
        if len(keys) > 128:
            raise RpcError(INVALID_PARAMS, "Too many inputs provided; max 128")
        answer = []
        for slot, fees in ledger.prioritization.items():
            block_min = min(fees.values()) if fees else 0
            per_account = [fees[k] for k in keys if k in fees]
            answer.append({"slot": slot, "prioritizationFee": max([block_min, *per_account])})
        return answer

    @app.method("getFeeForMessage")
    async def get_fee_for_message(params, request):
        commitment = rpc_commitment(config(params, 1))
        try:
            message = from_bytes_versioned(base64.b64decode(param(params, 0, "")))
        except Exception:
            raise RpcError(INVALID_PARAMS, "invalid base64 message") from None
        if not ledger.blockhash_valid(message.recent_blockhash):
            return with_context(None, commitment)
        return with_context(fee_for_message(message), commitment)

    @app.method("getSlotLeader")
    async def get_slot_leader(params, request):
        return str(cluster.leader_for(ledger.slot_at(rpc_commitment(config(params, 0)))))

    @app.method("getSlotLeaders")
    async def get_slot_leaders(params, request):
        start = param(params, 0)
        limit = param(params, 1)
        if not isinstance(start, int) or not isinstance(limit, int):
            raise RpcError(INVALID_PARAMS, "Invalid params: expected start slot and limit")
        if not 1 <= limit <= MAX_SLOT_LEADERS:
            raise RpcError(INVALID_PARAMS, f"Invalid limit; max {MAX_SLOT_LEADERS}")
        return [str(cluster.leader_for(slot)) for slot in range(start, start + limit)]

    @app.method("getLeaderSchedule")
    async def get_leader_schedule(params, request):
        slot = param(params, 0) if isinstance(param(params, 0), int) else ledger.slot_at(Commitment.processed)
        cfg = param(params, 0) if isinstance(param(params, 0), dict) else config(params, 1)
        epoch_start = slot // SLOTS_PER_EPOCH * SLOTS_PER_EPOCH
        schedule: dict[str, list[int]] = {}
        for index, validator in enumerate(cluster.validators):
            identity = str(validator.identity.pubkey())
            if cfg.get("identity") and cfg["identity"] != identity:
                continue
            schedule[identity] = [
                i for i in range(SLOTS_PER_EPOCH) if ((epoch_start + i) // LEADER_SLOTS) % len(cluster.validators) == index
            ]
        return schedule

    @app.method("getClusterNodes")
    async def get_cluster_nodes(params, request):
        return [validator.contact_info(cluster) for validator in cluster.validators]

    @app.method("getEpochSchedule")
    async def get_epoch_schedule(params, request):
        return {"slotsPerEpoch": SLOTS_PER_EPOCH, "leaderScheduleSlotOffset": SLOTS_PER_EPOCH, "warmup": False, "firstNormalEpoch": 0, "firstNormalSlot": 0}

    return app


def encode_confirmed_transaction(record, encoding: str, include_version: bool) -> dict:
    """getTransaction's answer: the transaction, its status meta, slot, block time, version."""
    tx = record.transaction
    message = tx.message
    is_v0 = isinstance(message, MessageV0)
    if encoding in ("base64", "base58"):
        raw = bytes(tx)
        encoded: Any = [base64.b64encode(raw).decode() if encoding == "base64" else base58.b58encode(raw).decode(), encoding]
    else:
        header = message.header
        encoded = {
            "signatures": [str(s) for s in tx.signatures],
            "message": {
                "accountKeys": [str(k) for k in message.account_keys],
                "header": {
                    "numRequiredSignatures": header.num_required_signatures,
                    "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                    "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
                },
                "recentBlockhash": str(message.recent_blockhash),
                "instructions": [
                    {
                        "programIdIndex": ix.program_id_index,
                        "accounts": list(bytes(ix.accounts)),
                        "data": base58.b58encode(bytes(ix.data)).decode(),
                        "stackHeight": None,
                    }
                    for ix in message.instructions
                ],
            },
        }
        if is_v0:
            encoded["message"]["addressTableLookups"] = [
                {
                    "accountKey": str(lookup.account_key),
                    "writableIndexes": list(bytes(lookup.writable_indexes)),
                    "readonlyIndexes": list(bytes(lookup.readonly_indexes)),
                }
                for lookup in message.address_table_lookups
            ]
    err = error_json(record.err)
    meta = {
        "err": err,
        "status": {"Ok": None} if err is None else {"Err": err},
        "fee": record.fee,
        "preBalances": record.pre_balances,
        "postBalances": record.post_balances,
        "innerInstructions": [],
        "logMessages": record.logs,
        "preTokenBalances": [b.to_json() for b in record.pre_token_balances],
        "postTokenBalances": [b.to_json() for b in record.post_token_balances],
        "rewards": [],
        "loadedAddresses": {
            "writable": [str(k) for k in record.loaded_writable],
            "readonly": [str(k) for k in record.loaded_readonly],
        },
        "computeUnitsConsumed": record.compute_units,
    }
    answer = {"slot": record.slot, "transaction": encoded, "meta": meta, "blockTime": record.block_time}
    if include_version:
        answer["version"] = 0 if is_v0 else "legacy"
    return answer
