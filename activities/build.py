"""Build: turn a plan into one unsigned v0 message for the chosen wallet.

Order inside the transaction: compute budget first (the priority fee is charged on the
requested limit, so the limit is the planner's estimate), then the routes' instructions
with wallet placeholders resolved, then the Jito tip for bundles (in the same transaction
as the trade, so it can never land alone).
"""
from __future__ import annotations

import base64
import random
from dataclasses import dataclass

from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.instruction import AccountMeta, Instruction
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.token.associated import get_associated_token_address

from workflows.events import PLACEHOLDER_WALLET, PLACEHOLDER_WALLET_ATA, ErrorCode, ExecutionMethod, ExecutionPlanEvent
from workflows.stages import BuiltTransaction

from .chain import BlockhashCache, LookupTableCache, LookupTableMissing
from .errors import fail

PACKET_DATA_SIZE = 1232
LAMPORTS_PER_SOL = 1_000_000_000
TOKEN_PROGRAM = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
MIN_JITO_TIP = 1000  # lamports (Jito's minimum)


@dataclass(frozen=True)
class BuildSettings:
    compute_unit_limit: int = 200_000  # COMPUTE_UNIT_LIMIT, when the plan has no gasEstimate
    compute_unit_price: int = 1_000  # COMPUTE_UNIT_PRICE (micro-lamports/CU), when the plan has no priorityFee
    jito_tip_base: int = 10_000  # JITO_TIP_BASE lamports
    jito_tip_profit_share: float = 0.05  # share of expected profit paid as tip
    sol_price_usd: float = 150.0  # SOL_PRICE_USD, when the plan gives none


def resolve_account(key: str, wallet: Pubkey) -> Pubkey:
    if key == PLACEHOLDER_WALLET:
        return wallet
    if key.startswith(PLACEHOLDER_WALLET_ATA):
        mint, _, program = key[len(PLACEHOLDER_WALLET_ATA) :].partition(":")
        token_program = Pubkey.from_string(program) if program else TOKEN_PROGRAM
        return _associated_token_address(wallet, Pubkey.from_string(mint), token_program)
    return Pubkey.from_string(key)


def _associated_token_address(wallet: Pubkey, mint: Pubkey, token_program: Pubkey) -> Pubkey:
    if token_program == TOKEN_PROGRAM:
        return get_associated_token_address(wallet, mint)
    ata_program = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
    return Pubkey.find_program_address([bytes(wallet), bytes(token_program), bytes(mint)], ata_program)[0]


def tip_lamports(plan: ExecutionPlanEvent, settings: BuildSettings) -> int:
    """The plan's tip, or max(JITO_TIP_BASE, share of expected profit converted USD -> lamports)."""
    if plan.tip_lamports is not None:
        return max(MIN_JITO_TIP, plan.tip_lamports)
    sol_price = plan.sol_price_usd or settings.sol_price_usd
    share = int(max(plan.expected_profit, 0.0) * settings.jito_tip_profit_share / sol_price * LAMPORTS_PER_SOL)
    return max(settings.jito_tip_base, share, MIN_JITO_TIP)


def route_instructions(plan: ExecutionPlanEvent, wallet: Pubkey) -> list[Instruction]:
    instructions = []
    for route in plan.routes:
        for spec in route.instructions:
            accounts = []
            for meta in spec.accounts:
                pubkey = resolve_account(meta.pubkey, wallet)
                if meta.is_signer and pubkey != wallet:
                    fail(ErrorCode.BUILD_FAILED, f"route {route.dex} needs signer {pubkey}, but only the wallet signs")
                accounts.append(AccountMeta(pubkey, is_signer=meta.is_signer, is_writable=meta.is_writable))
            instructions.append(Instruction(Pubkey.from_string(spec.program_id), base64.b64decode(spec.data), accounts))
    return instructions


class TransactionBuilder:
    def __init__(self, blockhashes: BlockhashCache, lookup_tables: LookupTableCache, settings: BuildSettings, tip_accounts) -> None:
        self.blockhashes = blockhashes
        self.lookup_tables = lookup_tables
        self.settings = settings
        self.tip_accounts = tip_accounts  # async () -> list[str]

    async def build(self, plan: ExecutionPlanEvent, wallet_key: str) -> BuiltTransaction:
        if plan.flash_loan is not None:
            fail(ErrorCode.BUILD_FAILED, "flash-loan plans are not supported yet (Kamino flash loans arrive with their own issue)")
        wallet = Pubkey.from_string(wallet_key)
        limit = plan.gas_estimate or self.settings.compute_unit_limit
        price = plan.priority_fee if plan.priority_fee is not None else self.settings.compute_unit_price
        instructions = [set_compute_unit_limit(limit), set_compute_unit_price(price), *route_instructions(plan, wallet)]
        tip, tip_account = 0, None
        if plan.execution_method is ExecutionMethod.jito_bundle:
            tip = tip_lamports(plan, self.settings)
            tip_account = random.choice(await self.tip_accounts())
            instructions.append(transfer(TransferParams(from_pubkey=wallet, to_pubkey=Pubkey.from_string(tip_account), lamports=tip)))
        table_addresses = [Pubkey.from_string(a) for a in plan.address_lookup_tables]
        table_addresses += [Pubkey.from_string(a) for route in plan.routes for a in route.address_lookup_table_addresses]
        try:
            tables = await self.lookup_tables.get(table_addresses) if table_addresses else []
        except LookupTableMissing as missing:
            fail(ErrorCode.BUILD_FAILED, str(missing))
        recent = await self.blockhashes.get()
        try:
            message = MessageV0.try_compile(wallet, instructions, tables, recent.blockhash)
        except Exception as error:
            fail(ErrorCode.BUILD_FAILED, f"could not compile the transaction: {error}")
        raw = to_bytes_versioned(message)
        size = 1 + 64 * message.header.num_required_signatures + len(raw)
        if size > PACKET_DATA_SIZE:
            fail(ErrorCode.TX_TOO_LARGE, f"transaction is {size} bytes, over the {PACKET_DATA_SIZE}-byte packet limit")
        return BuiltTransaction(
            message=base64.b64encode(raw).decode(),
            blockhash=str(recent.blockhash),
            last_valid_block_height=recent.last_valid_block_height,
            size=size,
            compute_unit_limit=limit,
            compute_unit_price=price,
            tip_lamports=tip,
            tip_account=tip_account,
        )
