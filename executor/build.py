"""Build: turn a plan into one unsigned v0 message for the chosen wallet.

Order inside the transaction: compute budget first (limit from the planner's estimate plus
a margin; price from the plan or from recent fees), then for a flash-loan plan the
wallet's token account (created idempotently if the plan allows) and the klend borrow,
the routes' instructions with wallet placeholders resolved, the klend repay (carrying the
borrow's absolute index, which the compute-budget and account-creation instructions
shift), and last the Jito tip for bundles (in the same transaction, so it never lands
alone). Compiled as v0 with the plan's, the routes' and the executor's own lookup tables.
"""
from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.instruction import AccountMeta, Instruction
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.address_lookup_table_account import AddressLookupTableAccount

from workflows.events import PLACEHOLDER_WALLET, PLACEHOLDER_WALLET_ATA, TIPPED_METHODS, ErrorCode, ExecutionPlanEvent, FlashLoan
from venue import LAMPORTS_PER_SOL, MAX_COMPUTE_UNITS, PACKET_DATA_SIZE

from venue.chain import BlockhashCache, LookupTableCache, LookupTableMissing
from venue import klend
from .errors import fail
from venue.fees import PriorityFeeEstimator
from venue.programs import TOKEN_PROGRAM, associated_token_address, create_token_account_idempotent
from venue.klend import ReserveCache

if TYPE_CHECKING:  # executor/tips.py imports this module: the pricer is handed in, not imported
    from .tips import TipPricer

MIN_JITO_TIP = 1000  # lamports (Jito's minimum)


FLASH_LOAN_COMPUTE_UNITS = 600_000  # the seed's budget for flash-loan plans without a gasEstimate


@dataclass(frozen=True)
class BuiltTransaction:
    """An unsigned v0 message and what the policy and the record need to know about it."""

    message: str  # base64 of the serialized v0 message
    blockhash: str
    last_valid_block_height: int
    size: int  # serialized size of the signed transaction, bytes
    compute_unit_limit: int
    compute_unit_price: int  # micro-lamports per CU
    tip_lamports: int
    tip_account: str | None
    elapsed_ms: float = 0.0
    tip_source: str | None = None  # "plan", "floor:p75", "rule"; None without a tip (executor/tips.py tip_label)
    tip_capped_by: str | None = None  # "profit", "policy" or None
    tip_escalation: int = 0  # lamports the land-rate escalation added before the caps


@dataclass(frozen=True)
class BuildSettings:
    compute_unit_limit: int = 200_000  # COMPUTE_UNIT_LIMIT, when the plan has no gasEstimate
    compute_unit_margin: float = 0.10  # COMPUTE_UNIT_MARGIN: added to the plan's gasEstimate
    compute_unit_price: int = 1_000  # COMPUTE_UNIT_PRICE (micro-lamports/CU): no priorityFee and no estimator
    executor_lookup_tables: tuple[str, ...] = ()  # EXECUTOR_LOOKUP_TABLES: the executor's own ALTs
    jito_tip_base: int = 10_000  # JITO_TIP_BASE lamports
    jito_tip_profit_share: float = 0.05  # share of expected profit paid as tip
    sol_price_usd: float = 150.0  # SOL_PRICE_USD, when the plan gives none


def resolve_account(key: str, wallet: Pubkey) -> Pubkey:
    if key == PLACEHOLDER_WALLET:
        return wallet
    if key.startswith(PLACEHOLDER_WALLET_ATA):
        mint, _, program = key[len(PLACEHOLDER_WALLET_ATA) :].partition(":")
        token_program = Pubkey.from_string(program) if program else TOKEN_PROGRAM
        return associated_token_address(wallet, Pubkey.from_string(mint), token_program)
    return Pubkey.from_string(key)


def compute_unit_limit(plan: ExecutionPlanEvent, settings: BuildSettings) -> int:
    if plan.gas_estimate is not None:
        return min(MAX_COMPUTE_UNITS, int(plan.gas_estimate * (1 + settings.compute_unit_margin)))
    return FLASH_LOAN_COMPUTE_UNITS if plan.flash_loan is not None else settings.compute_unit_limit


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


@dataclass
class Composition:
    """The transaction's instructions before compilation, and what went into them."""

    instructions: list[Instruction]
    tables: list[AddressLookupTableAccount]
    compute_unit_limit: int
    compute_unit_price: int
    tip_lamports: int = 0
    tip_account: str | None = None
    flash_loan_borrow_index: int | None = None
    tip_source: str | None = None
    tip_capped_by: str | None = None
    tip_escalation: int = 0


class TransactionBuilder:
    def __init__(
        self,
        blockhashes: BlockhashCache,
        lookup_tables: LookupTableCache,
        settings: BuildSettings,
        tip_accounts,
        *,
        fees: PriorityFeeEstimator | None = None,
        reserves: ReserveCache | None = None,
        tips: TipPricer | None = None,
    ) -> None:
        self.blockhashes = blockhashes
        self.lookup_tables = lookup_tables
        self.settings = settings
        self.tip_accounts = tip_accounts  # async () -> list[str]
        self.fees = fees
        self.reserves = reserves
        self.tips = tips  # executor/tips.py TipPricer: floor, settings, escalation; None: today's rule (tip_lamports)

    async def compose(self, plan: ExecutionPlanEvent, wallet_key: str) -> Composition:
        wallet = Pubkey.from_string(wallet_key)
        routes = route_instructions(plan, wallet)
        limit = compute_unit_limit(plan, self.settings)
        price = await self._priority_fee(plan, routes)
        instructions = [set_compute_unit_limit(limit), set_compute_unit_price(price)]
        borrow_index = None
        if plan.flash_loan is not None:
            reserve = await self._reserve(plan.flash_loan)
            user_account = associated_token_address(wallet, reserve.liquidity_mint, reserve.token_program)
            if plan.flash_loan.create_token_account:
                instructions.append(create_token_account_idempotent(wallet, wallet, reserve.liquidity_mint, reserve.token_program))
            borrow_index = len(instructions)  # absolute: compute budget and account creation come first
            amount = plan.flash_loan.amount
            instructions.append(klend.flash_borrow_instruction(reserve, wallet, user_account, amount))
            instructions += routes
            instructions.append(klend.flash_repay_instruction(reserve, wallet, user_account, amount, borrow_index))
        else:
            instructions += routes
        tip, tip_account, tip_source, capped_by, escalation = 0, None, None, None, 0
        if plan.execution_method in TIPPED_METHODS:
            # Priced once, here, before signing: a synchronous read of the latest floor (never waits).
            if self.tips is None:
                tip, tip_source = tip_lamports(plan, self.settings), "plan" if plan.tip_lamports is not None else "rule"
            else:
                priced = self.tips.price(plan)
                tip, tip_source, capped_by, escalation = priced.lamports, self.tips.label(priced), priced.capped_by, priced.escalation
            tip_account = random.choice(await self.tip_accounts())
            instructions.append(transfer(TransferParams(from_pubkey=wallet, to_pubkey=Pubkey.from_string(tip_account), lamports=tip)))
        addresses = list(plan.address_lookup_tables) + [a for route in plan.routes for a in route.address_lookup_table_addresses]
        addresses += list(self.settings.executor_lookup_tables)
        try:
            tables = await self.lookup_tables.get([Pubkey.from_string(a) for a in dict.fromkeys(addresses)]) if addresses else []
        except LookupTableMissing as missing:
            fail(ErrorCode.BUILD_FAILED, str(missing))
        return Composition(instructions, tables, limit, price, tip, tip_account, borrow_index, tip_source, capped_by, escalation)

    async def build(self, plan: ExecutionPlanEvent, wallet_key: str) -> BuiltTransaction:
        composed = await self.compose(plan, wallet_key)
        recent = await self.blockhashes.get()
        message = compile_message(Pubkey.from_string(wallet_key), composed, recent.blockhash)
        size = transaction_size(message)
        if size > PACKET_DATA_SIZE and composed.tables:
            # A cached table may have grown on chain since it was read: look once more before giving up.
            composed.tables = await self.lookup_tables.get([t.key for t in composed.tables], max_age_s=0)
            message = compile_message(Pubkey.from_string(wallet_key), composed, recent.blockhash)
            size = transaction_size(message)
        raw = to_bytes_versioned(message)
        if size > PACKET_DATA_SIZE:
            fail(ErrorCode.TX_TOO_LARGE, f"transaction is {size} bytes, over the {PACKET_DATA_SIZE}-byte packet limit")
        return BuiltTransaction(
            message=base64.b64encode(raw).decode(),
            blockhash=str(recent.blockhash),
            last_valid_block_height=recent.last_valid_block_height,
            size=size,
            compute_unit_limit=composed.compute_unit_limit,
            compute_unit_price=composed.compute_unit_price,
            tip_lamports=composed.tip_lamports,
            tip_account=composed.tip_account,
            tip_source=composed.tip_source,
            tip_capped_by=composed.tip_capped_by,
            tip_escalation=composed.tip_escalation,
        )

    async def _priority_fee(self, plan: ExecutionPlanEvent, routes: list[Instruction]) -> int:
        if plan.priority_fee is not None:
            return plan.priority_fee
        if self.fees is None:
            return self.settings.compute_unit_price
        writable = [str(meta.pubkey) for ix in routes for meta in ix.accounts if meta.is_writable]
        try:
            return await self.fees.fee_for(writable)
        except Exception:  # an estimate is not worth a failed plan: fall back to the configured price
            return self.settings.compute_unit_price

    async def _reserve(self, loan: FlashLoan) -> klend.ReserveInfo:
        """The reserve from the plan when it carries all of it, else from chain (cached)."""
        carried = (loan.lending_market, loan.liquidity_mint, loan.supply_vault, loan.fee_receiver, loan.token_program)
        if all(carried):
            market, mint, supply, fee_receiver, program = (Pubkey.from_string(v) for v in carried)
            return klend.ReserveInfo(Pubkey.from_string(loan.reserve), market, mint, supply, fee_receiver, program, None, None, None)
        if self.reserves is None:
            fail(ErrorCode.BUILD_FAILED, "flash loan: the plan does not carry the reserve's data and this builder cannot read it")
        try:
            reserve = await self.reserves.get(Pubkey.from_string(loan.reserve))
        except klend.ReserveInvalid as invalid:
            fail(ErrorCode.BUILD_FAILED, f"flash loan: {invalid}")
        if loan.lending_market and str(reserve.lending_market) != loan.lending_market:
            fail(ErrorCode.BUILD_FAILED, f"flash loan: reserve {loan.reserve} belongs to market {reserve.lending_market}, not {loan.lending_market}")
        if loan.liquidity_mint and str(reserve.liquidity_mint) != loan.liquidity_mint:
            fail(ErrorCode.BUILD_FAILED, f"flash loan: reserve {loan.reserve} lends {reserve.liquidity_mint}, not {loan.liquidity_mint}")
        if not klend.flash_loans_enabled(reserve):
            fail(ErrorCode.BUILD_FAILED, f"flash loan: reserve {loan.reserve} has flash loans disabled")
        return reserve


def compile_message(wallet: Pubkey, composed: Composition, blockhash) -> MessageV0:
    try:
        return MessageV0.try_compile(wallet, composed.instructions, composed.tables, blockhash)
    except Exception as error:
        fail(ErrorCode.BUILD_FAILED, f"could not compile the transaction: {error}")


def transaction_size(message: MessageV0) -> int:
    """Serialized size of the signed transaction: signature count (1 byte here), signatures, message."""
    return 1 + 64 * message.header.num_required_signatures + len(to_bytes_versioned(message))
