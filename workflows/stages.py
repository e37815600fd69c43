"""The plain data passed to and from the ExecutePlan workflow's activities (their names and
signatures: workflows/plan_activities.py). No secrets: only public keys and signed transactions
appear here; private keys stay in the worker's key store.

Plain dataclasses and nothing of Temporal: `executor/` builds and reads these, and imports nothing
of temporalio (tests/test_wire_state.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

from workflows.events import ExecutionPlanEvent, ExecutionResultEvent


@dataclass(frozen=True)
class WalletLeaseInfo:
    lease_id: str
    wallet: str
    expires_at_ms: int
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class ExecuteRequest:
    """Lease a wallet, build, sign, record, send: the hot path to the wire, in one local activity."""

    plan: ExecutionPlanEvent
    halt_reason: str | None  # a halt signal the workflow has seen: refuse to send unless already sent


@dataclass(frozen=True)
class SignedTransaction:
    """The plan's one signed transaction, as recorded (create-only) before anything is sent."""

    plan_id: str
    wallet: str
    signature: str
    transaction: str  # base64 of the signed transaction
    last_valid_block_height: int
    tip_lamports: int
    reused: bool = False  # this run did not record it, so it may be on the wire: resend it (claimed), or (halted, late) only watch it
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class Submission:
    signature: str
    bundle_id: str | None
    sent_at_ms: int
    elapsed_ms: float = 0.0
    # Set when this run sent nothing (a halt, the deadline, a refusal) but the plan's recorded
    # transaction may be on the wire: it is followed, never resent; if the chain says it never
    # landed the plan ends with this code.
    withheld_code: str | None = None
    withheld: str | None = None
    # The processed slot when the bytes first left (the TPU client's slot view; None without one),
    # the routes they left on (`rpc`, `tpu`, `jito_transaction:<region>`, `bundle:<region>`) and each
    # bundle's id by region, so confirm can follow and resend them (issue 23).
    sent_slot: int | None = None
    routes: tuple[str, ...] = ()
    bundles: tuple[tuple[str, str], ...] = ()  # (region, bundle id)


@dataclass(frozen=True)
class Executed:
    lease: WalletLeaseInfo
    build_ms: float
    signed: SignedTransaction
    submission: Submission


@dataclass(frozen=True)
class ResolveRequest:
    """execute failed: the plan's record decides whether anything can be on the wire."""

    plan_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class ConfirmRequest:
    plan_id: str
    method: str
    signed: SignedTransaction
    submission: Submission
    rebroadcast_until_ms: int  # the plan's deadline: no copy of the bytes is sent after it
    halt_reason: str | None = None  # halted by signal: only watch


@dataclass(frozen=True)
class Confirmation:
    """What the chain says of the plan's transaction: landed (maybe with an on-chain error), or
    never landed (its blockhash expired, asked with history search). Nothing less definitive."""

    landed: bool
    slot: int | None = None
    err: str | None = None  # on-chain error, JSON
    error_code: str | None = None  # TX_FAILED | BLOCKHASH_EXPIRED
    confirmed_at_ms: int | None = None
    rebroadcasts: int = 0
    elapsed_ms: float = 0.0
    landed_via: str | None = None  # `bundle:<region>` when a bundle status says so (issue 23)
    bundle_resends: int = 0  # bundles sent again to another region after one said Failed or Invalid


@dataclass(frozen=True)
class Following:
    """A plan whose confirm continues as new (a long wait on a silent chain): what the next run
    needs to follow the same transaction and tell the same story."""

    started_ms: int
    signed: SignedTransaction
    submission: Submission
    lease: WalletLeaseInfo | None
    executed: Executed | None
    stopped_code: str | None  # why execute stopped, when it did (the record then decided to follow)
    stopped_message: str | None
    halt_reason: str | None


@dataclass(frozen=True)
class SettleRequest:
    plan: ExecutionPlanEvent
    wallet: str
    signature: str
    tip_lamports: int


@dataclass(frozen=True)
class Settlement:
    fee_lamports: int
    tip_lamports: int
    actual_profit_usd: float | None
    cost_usd: float
    sol_price_usd: float


@dataclass(frozen=True)
class ReleaseRequest:
    plan_id: str  # the lease id: whatever wallet holds it is released
    wallet: str | None  # where the lease is, when the workflow knows
    outcome: str  # success | failure | none


@dataclass(frozen=True)
class PublishRequest:
    result: ExecutionResultEvent
    message_id: str  # Nats-Msg-Id: JetStream drops a repeat within its dedupe window
    keep: bool = True  # store it as the plan's one result (a rejected input has no plan to keep it for)
