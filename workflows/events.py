"""The messages on the wire: execution plans in (PLANNED), execution results out (EXECUTED).

camelCase JSON, validated strictly at the edge (docs/architecture.md section 3). Everything past the
bridge handles these as plain, already-valid data.
"""
from __future__ import annotations

import base64
import binascii
import json
from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import from_json
from solders.pubkey import Pubkey

from venue import MAX_COMPUTE_UNITS, programs

from .limits import (
    MAX_DEADLINE_AHEAD_MS,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_LATENCY_MS,
    MAX_PLAN_BYTES,
    PLAN_ID_CHARS,
    SUBJECT_TOKENS,
    digest_token,
    finite_number,
    is_plan_id,
    is_subject_tokens,
)

MAX_BUNDLE_TRANSACTIONS = 5
U64_MAX = 2**64 - 1
PLACEHOLDER_WALLET = "$WALLET"
PLACEHOLDER_WALLET_ATA = "$WALLET_ATA:"
NATIVE_MINT = str(programs.NATIVE_MINT)  # wSOL: one asset with native SOL


class ErrorCode(str, Enum):
    """Stable error codes on failed and timed-out results (documented in docs/operations.md, Error codes)."""

    INVALID_PLAN = "INVALID_PLAN"
    PLAN_NOT_SIMULATED = "PLAN_NOT_SIMULATED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    HALTED = "HALTED"
    NO_WALLET = "NO_WALLET"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    TX_TOO_LARGE = "TX_TOO_LARGE"
    BUILD_FAILED = "BUILD_FAILED"
    SUBMIT_REJECTED = "SUBMIT_REJECTED"
    RATE_LIMITED = "RATE_LIMITED"
    BUNDLE_FAILED = "BUNDLE_FAILED"
    TX_FAILED = "TX_FAILED"
    BLOCKHASH_EXPIRED = "BLOCKHASH_EXPIRED"
    CONFIRMATION_TIMEOUT = "CONFIRMATION_TIMEOUT"
    POLICY_VIOLATION = "POLICY_VIOLATION"  # the built transaction breaks the plan policy (executor/policy/); nothing signed


class ExecutionMethod(str, Enum):
    jito_bundle = "jito_bundle"
    tpu_direct = "tpu_direct"
    rpc = "rpc"
    # One signed transaction over every useful path at once (issue 23, executor/race.py): a bundle to
    # the best block-engine regions, Jito's sendTransaction, the leaders' TPU, RPC and its backups. It
    # carries a Jito tip (it may land as a bundle) and pays it whichever path lands it.
    race = "race"


# Methods whose transaction carries a Jito tip transfer: a bundle pays its tip inside the transaction.
TIPPED_METHODS = frozenset({ExecutionMethod.jito_bundle, ExecutionMethod.race})

class ExecutionStatus(str, Enum):
    success = "success"
    failed = "failed"
    timeout = "timeout"


class Strategy(str, Enum):
    arbitrage = "arbitrage"
    triangular = "triangular"
    market_making = "market_making"


def _pubkey(value: str) -> str:
    try:
        Pubkey.from_string(value)
    except (ValueError, TypeError):
        raise ValueError(f"not a base58 public key: {value!r}") from None
    return value


def _account_key(value: str) -> str:
    """A public key, or a wallet placeholder resolved at build time."""
    if value == PLACEHOLDER_WALLET:
        return value
    if value.startswith(PLACEHOLDER_WALLET_ATA):
        parts = value[len(PLACEHOLDER_WALLET_ATA) :].split(":")
        if not 1 <= len(parts) <= 2:
            raise ValueError(f"expected $WALLET_ATA:<mint>[:<tokenProgramId>], got {value!r}")
        for part in parts:
            _pubkey(part)
        return value
    return _pubkey(value)


PubkeyStr = Annotated[str, AfterValidator(_pubkey)]
AccountKey = Annotated[str, AfterValidator(_account_key)]
# Both ids become subjects, headers, workflow ids and KV keys: their bounds and why are in workflows/limits.py.
# (pydantic's Rust regex: `$` is the end of the text, not "before a final newline" as in Python's `re`.)
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=f"^{PLAN_ID_CHARS}$")]
SubjectTokens = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=f"^{SUBJECT_TOKENS}$")]
# Epoch milliseconds, up to the year 2286: a deadline in micro- or nanoseconds is refused, not
# turned into a wait of centuries.
EpochMs = Annotated[int, Field(gt=0, lt=10**13)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)

    def to_wire(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class PlanModel(WireModel):
    """Input from the planner: numbers must be finite (JSON's 1e400 parses as infinity, NaN as NaN)."""

    model_config = ConfigDict(WireModel.model_config, allow_inf_nan=False)


class AccountMetaSpec(PlanModel):
    pubkey: AccountKey
    is_signer: bool
    is_writable: bool


class InstructionSpec(PlanModel):
    program_id: PubkeyStr
    accounts: list[AccountMetaSpec] = Field(max_length=64)
    data: str  # base64

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("instruction data is not valid base64") from None
        return value


class SwapRoute(PlanModel):
    dex: Annotated[str, Field(min_length=1, max_length=64)]
    pool: PubkeyStr | None = None
    input_mint: PubkeyStr
    output_mint: PubkeyStr
    in_amount: U64
    out_amount: U64
    instructions: list[InstructionSpec] = Field(min_length=1, max_length=32)
    address_lookup_table_addresses: list[PubkeyStr] = Field(default_factory=list, max_length=16)


class FlashLoan(PlanModel):
    provider: Literal["kamino"]
    amount: Annotated[int, Field(gt=0, le=U64_MAX)]
    reserve: PubkeyStr
    lending_market: PubkeyStr | None = None
    liquidity_mint: PubkeyStr | None = None
    # Extensions: the rest of the reserve's data, so a planner that has it spares a chain read
    supply_vault: PubkeyStr | None = None
    fee_receiver: PubkeyStr | None = None
    token_program: PubkeyStr | None = None
    create_token_account: bool = False  # may the transaction create the wallet's token account (idempotent)?


class ExecutionPlanEvent(PlanModel):
    plan_id: Identifier
    opportunity_id: SubjectTokens
    strategy: Strategy
    execution_method: ExecutionMethod
    routes: list[SwapRoute] = Field(min_length=1, max_length=8)
    input_token: PubkeyStr
    output_token: PubkeyStr
    input_amount: U64
    expected_profit: float
    simulation_success: bool
    gas_estimate: Annotated[int, Field(gt=0, le=MAX_COMPUTE_UNITS)] | None = None
    priority_fee: U64 | None = None  # micro-lamports per compute unit
    slippage: Annotated[int, Field(ge=0, le=10_000)]  # bps
    max_latency: Annotated[int, Field(gt=0, le=MAX_LATENCY_MS)]  # ms from start to confirmation
    deadline: EpochMs  # epoch ms after which nothing may be sent
    timestamp: EpochMs
    flash_loan: FlashLoan | None = None
    # This project's extensions
    wallet: PubkeyStr | None = None
    tip_lamports: U64 | None = None
    address_lookup_tables: list[PubkeyStr] = Field(default_factory=list, max_length=16)
    sol_price_usd: Annotated[float, Field(gt=0)] | None = None
    # USD per whole token, for actualProfit: the executor has no oracle for SPL tokens (executor/settle.py)
    input_token_price_usd: Annotated[float, Field(gt=0)] | None = None
    output_token_price_usd: Annotated[float, Field(gt=0)] | None = None

    @field_validator("expected_profit", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # strict mode would refuse 5 for a float field
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExecutionPlanEvent":
        # (expectedProfit, like every number of a plan, is finite: PlanModel refuses NaN and the infinities.)
        # SOL has one price, solPriceUsd (or SOL_PRICE_USD): a second one for it would be a contradiction to resolve silently.
        for token, price, name in ((self.input_token, self.input_token_price_usd, "inputTokenPriceUsd"), (self.output_token, self.output_token_price_usd, "outputTokenPriceUsd")):
            if price is not None and token == NATIVE_MINT:
                raise ValueError(f"{name}: the token is SOL, valued at solPriceUsd")
        same = self.input_token == self.output_token
        if same and None not in (self.input_token_price_usd, self.output_token_price_usd) and self.input_token_price_usd != self.output_token_price_usd:
            raise ValueError("inputTokenPriceUsd and outputTokenPriceUsd differ for the same token")
        return self


class StageTimings(WireModel):
    """Milliseconds spent in each stage (extension): the steps of execute (lease, build, sign,
    submit), then confirm."""

    # Named selectWallet before 2026-11-30: still read, so stored results and histories of plans
    # in flight across the upgrade parse.
    lease: float | None = Field(default=None, validation_alias=AliasChoices("lease", "selectWallet"))
    build: float | None = None
    sign: float | None = None
    submit: float | None = None
    confirm: float | None = None


class ExecutionResultEvent(WireModel):
    execution_id: str
    plan_id: str
    opportunity_id: str
    status: ExecutionStatus
    signature: str | None = None
    block_slot: int | None = None
    confirmation_time: int | None = None  # epoch ms
    expected_profit: float
    actual_profit: float | None = None  # USD
    execution_cost: "ExecutionCost"
    net_profit: float | None = None  # USD
    latency: float  # ms from workflow start to the result
    execution_method: str
    error: str | None = None
    error_code: ErrorCode | None = None
    timestamp: int  # epoch ms
    # Extensions
    wallet: str | None = None
    bundle_id: str | None = None
    tip_lamports: int | None = None
    stage_timings: StageTimings | None = None
    # Landing analytics (issue 23; docs/plans.md): the processed slot when the transaction first
    # left, the slots from there to `blockSlot`, the route that landed it where that can be known
    # (a bundle's region from bundle statuses: `bundle:<region>`), and every route it was sent on.
    send_slot: int | None = None
    slots_to_land: int | None = None
    landed_via: str | None = None
    routes: list[str] | None = None


class ExecutionCost(WireModel):
    """Fees and tip actually paid: lamports, and USD at the plan's or configured SOL price."""

    fee_lamports: int = 0
    tip_lamports: int = 0
    total_lamports: int = 0
    usd: float = 0.0


ExecutionResultEvent.model_rebuild()

class InvalidPlan(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def is_valid_plan(data: bytes) -> bool:
    """Whether ``data`` parses as a plan (no time bound): never raises."""
    try:
        parse_plan(data)
    except Exception:
        return False
    return True


def parse_plan(data: bytes, *, now_ms: int | None = None) -> ExecutionPlanEvent:
    """Validate at the edge: the bridge, and the workflow itself (a workflow can be started without
    the bridge). Pure and deterministic: the time is the caller's (the bridge's clock, the workflow's
    own time), and with it the deadline is held to the horizon of workflows/limits.py. The error
    text names the fields, so a planner can fix its output."""
    if len(data) > MAX_PLAN_BYTES:
        raise InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: {len(data)} bytes, over the {MAX_PLAN_BYTES}-byte limit (not read)")
    try:
        plan = ExecutionPlanEvent.model_validate_json(data)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in error.errors()[:5]]
        more = f" (+{error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise InvalidPlan(ErrorCode.INVALID_PLAN, "invalid plan: " + "; ".join(problems) + more) from None
    duplicate = _duplicate_key(data)
    if duplicate is not None:
        raise InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: the key {duplicate[:64]!r} appears twice in one object (which one counts depends on the parser)")
    if now_ms is not None and plan.deadline > now_ms + MAX_DEADLINE_AHEAD_MS:
        raise InvalidPlan(
            ErrorCode.INVALID_PLAN,
            f"invalid plan: deadline: {(plan.deadline - now_ms) / 1000:.0f} s ahead, more than the {MAX_DEADLINE_AHEAD_MS // 1000} s a plan may live",
        )
    if not plan.simulation_success:
        raise InvalidPlan(ErrorCode.PLAN_NOT_SIMULATED, "simulationSuccess is false: the planner did not validate this plan")
    return plan


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _duplicate_key(data: bytes) -> str | None:
    """The first key repeated within one JSON object, if any. pydantic's parser keeps the last of
    them and another planner-side parser may keep the first: an ambiguous plan is not signed.
    Run on plans that already validated, so the nesting is the model's (json.loads would raise
    RecursionError on the deep nesting pydantic refuses)."""
    try:
        json.loads(data, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        return str(duplicate.args[0])
    return None


def rejection(data: bytes, invalid: InvalidPlan, *, fallback_plan_id: str, fallback_opportunity: str, execution_id: str | None, now_ms: int) -> ExecutionResultEvent:
    """The failed result of a plan that never ran, named by its own ids where they are usable.

    Whatever ``data`` holds, the result is small and every id in it is publishable (workflows/limits.py):
    a value that is not a valid id gives way to the fallback, and an unusable fallback to a digest or
    ``unknown``. Never raises for any input (the bridge's fuzz test holds it to that)."""
    raw: object = None
    if len(data) <= MAX_PLAN_BYTES:
        try:
            raw = from_json(data)  # pydantic's parser: bounded recursion, where json.loads raises RecursionError
        except ValueError:
            raw = None
    raw = raw if isinstance(raw, dict) else {}
    plan_id = raw.get("planId")
    if not is_plan_id(plan_id):
        plan_id = fallback_plan_id if is_plan_id(fallback_plan_id) else digest_token(fallback_plan_id, "invalid-")
    opportunity = raw.get("opportunityId")
    if not is_subject_tokens(opportunity):
        opportunity = fallback_opportunity if is_subject_tokens(fallback_opportunity) else "unknown"
    method = raw.get("executionMethod")
    profit = finite_number(raw.get("expectedProfit"))
    return ExecutionResultEvent(
        execution_id=execution_id or f"plan-{plan_id}",
        plan_id=plan_id,
        opportunity_id=opportunity,
        status=ExecutionStatus.failed,
        expected_profit=profit if profit is not None else 0.0,
        execution_cost=ExecutionCost(),
        latency=0.0,
        # A metric label downstream: a planner's free text would make a new series per value.
        execution_method=method if isinstance(method, str) and method in ExecutionMethod.__members__ else "unknown",
        error=str(invalid)[:MAX_ERROR_CHARS],
        error_code=invalid.code,
        timestamp=now_ms,
    )
