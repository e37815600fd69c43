"""Plan policy: what a built transaction may do with a hot wallet, checked before it is signed.

The worker signs whatever a plan's routes say, so anyone who can publish a plan could move
the wallet's funds. The policy stands between the builder and the signer, in the one place
every execution passes through (`Dispatch._prepare`: after build, before sign): a plan that
breaks it ends POLICY_VIOLATION, nothing signed, recorded or sent.

It reads the **compiled** v0 message, with its lookup tables resolved (an account or a
destination hidden in a table is seen), not the plan: what is checked is exactly what would
be signed. Rules (docs/operations.md "Plan policy"; why: docs/architecture.md section 10):

- every top-level program is allowed (System, Compute Budget, SPL Token, Token-2022, ATA, Memo
  v1/v2, klend, the ALT program, plus POLICY_ALLOWED_PROGRAMS);
- SOL leaves the wallet only as the Jito tip (to one of Jito's tip accounts, at most
  POLICY_MAX_TIP_LAMPORTS) or to an allowed destination; no Assign, Allocate, account creation
  or nonce instruction; no Approve, SetAuthority, CloseAccount or lamport withdrawal that hands
  the wallet's tokens, authority or lamports to an account that is not the wallet's; no Burn.
  Since the wallet is the only signer, every such instruction that would succeed acts with the
  wallet's authority, so the check looks at the destination, not at who signs;
- tokens leave the wallet, counted by mint (wSOL as SOL: one mint), only up to what the plan
  declares (its inputAmount of its inputToken) plus POLICY_MAX_OUTFLOW of that mint, summed
  over every transfer of the plan (rule token_outflow);
- the wallet pays for no associated token account or lookup table it does not control, and
  klend is used only for flash borrow/repay against the reserve as it is on chain;
- caps: compute-unit price, total priority fee, tip, SOL spent per plan (fee + tip + allowed
  outflow) and per wallet per minute (summed over every worker, see `SpendLedger`);
- optionally (POLICY_SIMULATE=1) a simulation of the unsigned transaction, refused when the
  wallet's SOL or any of its token balances falls by more than a cap (from configuration only).

The static check is synchronous and allocation-light (tens of microseconds per plan, measured
in tests/test_policy.py); lookup tables and klend reserves come from the caches the builder
just filled.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from solders.message import MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from venue import (
    COMPUTE_BUDGET_PROGRAM_ID,
    DEFAULT_INSTRUCTION_COMPUTE_UNITS,
    LAMPORTS_PER_SIGNATURE,
    LAMPORTS_PER_SOL,
    MAX_COMPUTE_UNITS,
    SET_COMPUTE_UNIT_LIMIT,
    SET_COMPUTE_UNIT_PRICE,
    parse_compute_budget,
)
from workflows.events import ErrorCode, ExecutionPlanEvent

from venue import klend
from ..build import BuiltTransaction
from ..errors import fail
from venue.jito import STATIC_TIP_ACCOUNTS
from venue.programs import (
    ATA_PROGRAM,
    LOOKUP_TABLE_PROGRAM,
    MEMO_PROGRAM,
    MEMO_V1_PROGRAM,
    NATIVE_MINT,
    SYSTEM_PROGRAM,
    TOKEN_2022_PROGRAM,
    TOKEN_PROGRAM,
    associated_token_address,
)

log = logging.getLogger("hft.policy")


COMPUTE_BUDGET_PROGRAM = Pubkey.from_string(COMPUTE_BUDGET_PROGRAM_ID)
TOKEN_PROGRAMS = frozenset({TOKEN_PROGRAM, TOKEN_2022_PROGRAM})

DEFAULT_PROGRAMS = frozenset(
    {
        SYSTEM_PROGRAM,
        COMPUTE_BUDGET_PROGRAM,
        TOKEN_PROGRAM,
        TOKEN_2022_PROGRAM,
        ATA_PROGRAM,
        MEMO_PROGRAM,
        MEMO_V1_PROGRAM,
        klend.KLEND_PROGRAM_ID,
        LOOKUP_TABLE_PROGRAM,
    }
)
PROGRAM_NAMES = {
    SYSTEM_PROGRAM: "System",
    COMPUTE_BUDGET_PROGRAM: "Compute Budget",
    TOKEN_PROGRAM: "SPL Token",
    TOKEN_2022_PROGRAM: "Token-2022",
    ATA_PROGRAM: "Associated Token Account",
    MEMO_PROGRAM: "Memo",
    MEMO_V1_PROGRAM: "Memo v1",
    klend.KLEND_PROGRAM_ID: "klend",
    LOOKUP_TABLE_PROGRAM: "Address Lookup Table",
}

# System program instructions (bincode: u32 LE tag), solana-program system_instruction.rs
SYSTEM_INSTRUCTIONS = {
    0: "CreateAccount", 1: "Assign", 2: "Transfer", 3: "CreateAccountWithSeed", 4: "AdvanceNonceAccount",
    5: "WithdrawNonceAccount", 6: "InitializeNonceAccount", 7: "AuthorizeNonceAccount", 8: "Allocate",
    9: "AllocateWithSeed", 10: "AssignWithSeed", 11: "TransferWithSeed", 12: "UpgradeNonceAccount",
}  # fmt: skip
SYSTEM_REFUSED_WHY = {
    0: "it funds a new account that is not the wallet's",
    1: "it hands the account to another program",
    3: "it funds a new account that is not the wallet's",
    4: "the executor uses no durable nonce",
    5: "it withdraws from a nonce account the wallet controls",
    6: "the executor uses no durable nonce",
    7: "it hands a nonce account's authority away",
    8: "it gives the account data, and a fee payer must have none",
    9: "it allocates an account derived from the wallet",
    10: "it hands an account derived from the wallet to another program",
    12: "the executor uses no durable nonce",
}
# SPL Token / Token-2022 instructions (1-byte tag): solana-program/token program/src/instruction.rs
# and solana-program/token-2022 program/src/instruction.rs (the same 0-24, then the extensions; Batch: p-token)
TOKEN_INSTRUCTIONS = {
    0: "InitializeMint", 1: "InitializeAccount", 2: "InitializeMultisig", 3: "Transfer", 4: "Approve", 5: "Revoke",
    6: "SetAuthority", 7: "MintTo", 8: "Burn", 9: "CloseAccount", 10: "FreezeAccount", 11: "ThawAccount",
    12: "TransferChecked", 13: "ApproveChecked", 14: "MintToChecked", 15: "BurnChecked", 16: "InitializeAccount2",
    17: "SyncNative", 18: "InitializeAccount3", 19: "InitializeMultisig2", 20: "InitializeMint2", 21: "GetAccountDataSize",
    22: "InitializeImmutableOwner", 23: "AmountToUiAmount", 24: "UiAmountToAmount", 25: "InitializeMintCloseAuthority",
    26: "TransferFeeExtension", 27: "ConfidentialTransferExtension", 28: "DefaultAccountStateExtension", 29: "Reallocate",
    30: "MemoTransferExtension", 31: "CreateNativeMint", 32: "InitializeNonTransferableMint", 33: "InterestBearingMintExtension",
    34: "CpiGuardExtension", 35: "InitializePermanentDelegate", 36: "TransferHookExtension",
    37: "ConfidentialTransferFeeExtension", 38: "WithdrawExcessLamports", 39: "MetadataPointerExtension",
    40: "GroupPointerExtension", 41: "GroupMemberPointerExtension", 42: "ConfidentialMintBurnExtension",
    43: "ScaledUiAmountExtension", 44: "PausableExtension", 45: "UnwrapLamports", 255: "Batch",
}  # fmt: skip
TOKEN_TAG = {name: tag for tag, name in TOKEN_INSTRUCTIONS.items()}
# The tags the rules decode, by name (so each reads as the instruction it is)
TRANSFER, APPROVE, SET_AUTHORITY, BURN, CLOSE_ACCOUNT = (TOKEN_TAG[n] for n in ("Transfer", "Approve", "SetAuthority", "Burn", "CloseAccount"))
TRANSFER_CHECKED, APPROVE_CHECKED, BURN_CHECKED = (TOKEN_TAG[n] for n in ("TransferChecked", "ApproveChecked", "BurnChecked"))
TRANSFER_FEE_EXTENSION, WITHDRAW_EXCESS_LAMPORTS, UNWRAP_LAMPORTS = (TOKEN_TAG[n] for n in ("TransferFeeExtension", "WithdrawExcessLamports", "UnwrapLamports"))
# What a swap route needs and that hands nothing of the wallet away: initialisations, revoke,
# mint, freeze/thaw, sync-native (wrapping: the lamports were already the account's), the
# read-only helpers. Transfers are not here: what they take out of the wallet is counted, by mint
# (`_MessageCheck.token_out`).
TOKEN_PLAIN = frozenset(
    TOKEN_TAG[name]
    for name in (
        "InitializeMint", "InitializeAccount", "InitializeMultisig", "Revoke", "MintTo", "FreezeAccount", "ThawAccount",
        "MintToChecked", "InitializeAccount2", "SyncNative", "InitializeAccount3", "InitializeMultisig2", "InitializeMint2",
        "GetAccountDataSize", "InitializeImmutableOwner", "AmountToUiAmount", "UiAmountToAmount",
    )
)  # fmt: skip
# Token-2022 only: mint close authority, reallocate (the owner signs: the wallet's own account),
# required memos and the CPI guard on the wallet's own accounts.
TOKEN_2022_PLAIN = frozenset({25, 29, 30, 34})
TRANSFER_CHECKED_WITH_FEE = 1  # TransferFeeExtension sub-instruction, transfer_fee/instruction.rs
# Address Lookup Table program (bincode u32 tag), solana address-lookup-table-interface instruction.rs
LOOKUP_TABLE_INSTRUCTIONS = {0: "CreateLookupTable", 1: "FreezeLookupTable", 2: "ExtendLookupTable", 3: "DeactivateLookupTable", 4: "CloseLookupTable"}

# Rules, as named in violation messages and docs/operations.md.
RULES = (
    "signer", "malformed", "program", "sol_transfer", "tip_account", "system_instruction", "token_delegate",
    "token_authority", "token_close", "token_burn", "token_withdraw", "token_instruction", "ata_owner",
    "ata_token_program", "ata_instruction", "lookup_table", "flash_loan", "compute_budget", "max_cu_price",
    "max_priority_fee", "max_tip", "max_sol_per_plan", "max_sol_per_wallet_minute", "simulation_failed",
    "simulated_sol_loss", "simulated_token_loss", "token_outflow",
)  # fmt: skip


class PolicyViolation(Exception):
    """A rule the transaction breaks, and where (`index`: the instruction, None: the whole transaction)."""

    def __init__(self, rule: str, index: int | None, detail: str) -> None:
        where = f"instruction {index}" if index is not None else "the whole transaction"
        super().__init__(f"policy rule {rule} ({where}): {detail}")
        self.rule, self.index, self.detail = rule, index, detail


# --- settings -----------------------------------------------------------------------------------


def _lamports_from_sol(value: object, name: str) -> int:
    try:
        sol = Decimal(str(value))
    except InvalidOperation:
        raise SystemExit(f"{name} must be an amount of SOL (e.g. 0.02), got {value!r}") from None
    if not sol.is_finite() or sol < 0:
        raise SystemExit(f"{name} must be a non-negative amount of SOL, got {value!r}")
    return int(sol * LAMPORTS_PER_SOL)


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}")
    try:
        number = int(str(value).replace("_", ""))
    except ValueError:
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}")
    return number


def _pubkeys(values: object, name: str) -> frozenset[Pubkey]:
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise SystemExit(f"{name} must be a list of base58 public keys, got {values!r}")
    keys = set()
    for item in items:
        if not item:
            continue
        try:
            keys.add(Pubkey.from_string(str(item)))
        except ValueError:
            raise SystemExit(f"{name}: not a base58 public key: {item!r}") from None
    return frozenset(keys)


def _mint_amounts(value: object, name: str) -> dict[Pubkey, int]:
    """Base units per mint: "MINT=AMOUNT,MINT=AMOUNT" (environment) or {"MINT": AMOUNT} (file)."""
    if isinstance(value, str):
        pairs = []
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            mint, sep, amount = item.partition("=")
            if not sep:
                raise SystemExit(f"{name} must be MINT=AMOUNT pairs separated by commas, got {item!r}")
            pairs.append((mint.strip(), amount.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise SystemExit(f"{name} must map mints to amounts in base units, got {value!r}")
    caps = {}
    for mint, amount in pairs:
        try:
            key = Pubkey.from_string(str(mint))
        except ValueError:
            raise SystemExit(f"{name}: not a base58 mint: {mint!r}") from None
        caps[key] = _whole(amount, f"{name}: {mint}")
    return caps


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SystemExit(f"{name} must be 1/true or 0/false, got {value!r}")


# setting name -> (environment variable, key in the policy file, parser)
_SCALARS = {
    "max_tip_lamports": ("POLICY_MAX_TIP_LAMPORTS", "maxTipLamports", _whole),
    "max_cu_price": ("POLICY_MAX_CU_PRICE", "maxCuPrice", _whole),
    "max_priority_fee_lamports": ("POLICY_MAX_PRIORITY_FEE_LAMPORTS", "maxPriorityFeeLamports", _whole),
    "max_plan_lamports": ("POLICY_MAX_SOL_PER_PLAN", "maxSolPerPlan", _lamports_from_sol),
    "max_wallet_minute_lamports": ("POLICY_MAX_SOL_PER_WALLET_MINUTE", "maxSolPerWalletMinute", _lamports_from_sol),
    "simulate": ("POLICY_SIMULATE", "simulate", _flag),
    "simulate_max_sol_loss_lamports": ("POLICY_SIMULATE_MAX_SOL_LOSS", "simulateMaxSolLoss", _lamports_from_sol),
    "simulate_max_token_loss": ("POLICY_SIMULATE_MAX_TOKEN_LOSS", "simulateMaxTokenLoss", _whole),
    "max_outflow": ("POLICY_MAX_OUTFLOW", "maxOutflow", _mint_amounts),
}
_LISTS = {  # extend the defaults (programs) or start empty (destinations)
    "allowed_programs": ("POLICY_ALLOWED_PROGRAMS", "allowedPrograms"),
    "allowed_destinations": ("POLICY_ALLOWED_DESTINATIONS", "allowedDestinations"),
}
_TIP_ACCOUNTS = ("POLICY_TIP_ACCOUNTS", "tipAccounts")  # replaces Jito's published mainnet list
FILE_KEYS = {key for _, key, _ in _SCALARS.values()} | {key for _, key in _LISTS.values()} | {_TIP_ACCOUNTS[1]}


@dataclass(frozen=True)
class PolicySettings:
    """The rules' parameters. Defaults let every valid demo, bench (with its sink allowed) and
    flash-loan plan through, and stop every plan of the hostile corpus (tests/test_policy.py)."""

    allowed_programs: frozenset[Pubkey] = DEFAULT_PROGRAMS
    allowed_destinations: frozenset[Pubkey] = frozenset()  # may receive SOL (counted), a lookup table's rent, an ATA the wallet pays for; never tokens, a delegation or an authority
    tip_accounts: frozenset[Pubkey] = frozenset(Pubkey.from_string(a) for a in STATIC_TIP_ACCOUNTS)
    max_tip_lamports: int = 10_000_000  # 0.01 SOL
    max_cu_price: int = 2_000_000  # micro-lamports per CU: PRIORITY_FEE_CEILING's default
    max_priority_fee_lamports: int = 3_000_000  # above 1.4M CU x 2M micro-lamports: the CU price cap binds first by default
    max_plan_lamports: int = 20_000_000  # 0.02 SOL: fee + tip + allowed outflow of one transaction
    max_wallet_minute_lamports: int = 500_000_000  # 0.5 SOL per wallet over any 60 s, all workers together
    simulate: bool = False
    simulate_max_sol_loss_lamports: int | None = None  # None: max_plan_lamports
    simulate_max_token_loss: int = 0  # base units, per mint, beyond max_outflow of that mint
    # Base units of each mint (lamports for SOL and wSOL, one mint: NATIVE_MINT) a plan may send out
    # of the wallet beyond its declared inputAmount of its inputToken; also what the simulation lets
    # the wallet lose of that mint (never the plan's word: a plan could declare what it drains).
    max_outflow: Mapping[Pubkey, int] = field(default_factory=dict)
    source: str = "defaults"  # where the settings came from, for the start-up log line

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> PolicySettings:
        """POLICY_FILE (JSON) first, then POLICY_* variables: a variable wins over the file, and the
        programs and destinations of both are added together. A bad value stops the process, naming it."""
        env = os.environ if env is None else env
        given: dict[str, object] = {}
        sources = []
        path = env.get("POLICY_FILE")
        if path:
            given.update(_read_policy_file(Path(path)))
            sources.append(f"file {path}")
        values: dict[str, object] = {}
        for name, (variable, key, parse) in _SCALARS.items():
            if variable in env and env[variable].strip() != "":
                values[name] = parse(env[variable], variable)
                sources.append(variable)
            elif key in given:
                values[name] = parse(given[key], f"{path}: {key}")
        for name, (variable, key) in _LISTS.items():
            keys = _pubkeys(given.get(key, []), f"{path}: {key}") | _pubkeys(env.get(variable, ""), variable)
            if env.get(variable):
                sources.append(variable)
            values[name] = (DEFAULT_PROGRAMS | keys) if name == "allowed_programs" else keys
        variable, key = _TIP_ACCOUNTS
        tips = _pubkeys(env[variable], variable) if env.get(variable) else _pubkeys(given[key], f"{path}: {key}") if key in given else None
        if tips is not None:
            if not tips:
                raise SystemExit(f"{variable}: the tip account list may not be empty")
            values["tip_accounts"] = tips
            sources.append(variable if env.get(variable) else f"{path}: {key}")
        return cls(**values, source=", ".join(sources) or "defaults")

    def allowing(self, destinations=(), programs=()) -> PolicySettings:
        """These settings with more allowed destinations or programs (bench's sink, a test's DEX)."""
        return replace(
            self,
            allowed_destinations=self.allowed_destinations | {Pubkey.from_string(str(d)) for d in destinations},
            allowed_programs=self.allowed_programs | {Pubkey.from_string(str(p)) for p in programs},
        )

    def outflow_cap(self, mint: Pubkey | str) -> int:
        """max_outflow of `mint` (0 when not configured)."""
        return self.max_outflow.get(mint if isinstance(mint, Pubkey) else Pubkey.from_string(mint), 0)

    @property
    def simulate_sol_loss_cap(self) -> int:
        return self.max_plan_lamports if self.simulate_max_sol_loss_lamports is None else self.simulate_max_sol_loss_lamports

    def describe(self) -> dict:
        """For the start-up log line: caps, and the added programs and destinations."""
        return {
            "source": self.source,
            "extraPrograms": sorted(str(p) for p in self.allowed_programs - DEFAULT_PROGRAMS),
            "allowedDestinations": sorted(str(d) for d in self.allowed_destinations),
            "tipAccounts": len(self.tip_accounts),
            "maxTipLamports": self.max_tip_lamports,
            "maxCuPrice": self.max_cu_price,
            "maxPriorityFeeLamports": self.max_priority_fee_lamports,
            "maxPlanLamports": self.max_plan_lamports,
            "maxWalletMinuteLamports": self.max_wallet_minute_lamports,
            "simulate": self.simulate,
            "maxOutflow": {str(mint): cap for mint, cap in sorted(self.max_outflow.items(), key=lambda item: str(item[0]))},
        }


def _read_policy_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise SystemExit(f"POLICY_FILE {path}: cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise SystemExit(f"POLICY_FILE {path}: not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"POLICY_FILE {path}: must hold one JSON object")
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise SystemExit(f"POLICY_FILE {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(FILE_KEYS))}")
    return data


# --- the compiled message -----------------------------------------------------------------------


def message_keys(message: MessageV0, tables: Mapping[Pubkey, tuple[Pubkey, ...]]) -> list[Pubkey]:
    """Every account the message names, in the runtime's order: static keys, then each table's
    writable entries, then each table's read-only entries (what instruction indexes point at)."""
    keys = list(message.account_keys)
    lookups = message.address_table_lookups
    if lookups:
        writable: list[Pubkey] = []
        readonly: list[Pubkey] = []
        for lookup in lookups:
            table = tables[lookup.account_key]
            try:
                writable += [table[i] for i in bytes(lookup.writable_indexes)]
                readonly += [table[i] for i in bytes(lookup.readonly_indexes)]
            except IndexError:
                raise PolicyViolation("malformed", None, f"the message reads past the end of lookup table {lookup.account_key}") from None
        keys += writable + readonly
    return keys


def writable_keys(message: MessageV0, keys: list[Pubkey]) -> list[Pubkey]:
    """The accounts the transaction may write: static by the header's counts, and every table entry
    loaded as writable."""
    header = message.header
    static = len(message.account_keys)
    signed = header.num_required_signatures
    out = [keys[i] for i in range(signed - header.num_readonly_signed_accounts)]
    out += [keys[i] for i in range(signed, static - header.num_readonly_unsigned_accounts)]
    out += keys[static : static + sum(len(bytes(lookup.writable_indexes)) for lookup in message.address_table_lookups)]
    return out


@dataclass
class Spend:
    """What the transaction costs the wallet, in lamports, as the policy counted it."""

    base_fee: int = 0
    priority_fee: int = 0
    tip: int = 0
    outflow: int = 0  # SOL to allowed destinations
    compute_unit_limit: int = 0
    compute_unit_price: int = 0

    @property
    def total(self) -> int:
        return self.base_fee + self.priority_fee + self.tip + self.outflow


@dataclass
class Examined:
    """The static check's verdict (it passed) and what simulation needs."""

    spend: Spend
    message: MessageV0
    keys: list[Pubkey]


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _u64(data: bytes, at: int) -> int:
    return struct.unpack_from("<Q", data, at)[0]


class _MessageCheck:
    """One pass over a compiled message's instructions, in order. Raises PolicyViolation at the
    first rule broken; returns what the transaction spends."""

    def __init__(
        self,
        settings: PolicySettings,
        wallet: Pubkey,
        own: frozenset[Pubkey],
        keys: list[Pubkey],
        *,
        builder_tip_account: Pubkey | None,
        reserves: Mapping[Pubkey, klend.ReserveInfo | str],
        token_account_of,
        market_authority,
        declared: Mapping[Pubkey, int] | None = None,
    ) -> None:
        self.settings = settings
        self.wallet = wallet
        self.own = own  # the wallet and its wrapped-SOL accounts: lamports sent there stay the wallet's
        self.keys = keys
        self.builder_tip_account = builder_tip_account
        self.reserves = reserves
        self.token_account_of = token_account_of  # (wallet, mint, token program) -> its ATA (cached)
        self.market_authority = market_authority  # market -> klend lending-market authority PDA (cached)
        self.spend = Spend()
        self.tip_indexes: list[int] = []
        self.price_index: int | None = None
        self.limit_index: int | None = None
        self.budget_seen: set[int] = set()
        self.instructions = 0
        self.declared = declared or {}  # mint -> what the plan says may leave (its inputAmount of its inputToken)
        self.outflows: dict[Pubkey, int] = {}  # mint -> base units the wallet's token accounts send out
        self.outflow_indexes: dict[Pubkey, list[int]] = {}

    def account(self, index: int, accounts: bytes, position: int, what: str) -> Pubkey:
        try:
            return self.keys[accounts[position]]
        except IndexError:
            raise PolicyViolation("malformed", index, f"{what}: account {position} is missing") from None

    def run(self, message: MessageV0) -> Spend:
        header = message.header
        if header.num_required_signatures != 1 or not self.keys or self.keys[0] != self.wallet:
            raise PolicyViolation("signer", None, f"the wallet {self.wallet} must be the fee payer and the only signer")
        settings, keys = self.settings, self.keys
        handlers = {
            SYSTEM_PROGRAM: self.system,
            COMPUTE_BUDGET_PROGRAM: self.compute_budget,
            TOKEN_PROGRAM: self.token,
            TOKEN_2022_PROGRAM: self.token,
            ATA_PROGRAM: self.associated_token_account,
            LOOKUP_TABLE_PROGRAM: self.lookup_table,
            klend.KLEND_PROGRAM_ID: self.flash_loan,
        }
        for index, ix in enumerate(message.instructions):
            try:
                program = keys[ix.program_id_index]
            except IndexError:
                raise PolicyViolation("malformed", index, f"program index {ix.program_id_index} is out of range") from None
            if program not in settings.allowed_programs:
                raise PolicyViolation("program", index, f"program {program} is not allowed (POLICY_ALLOWED_PROGRAMS adds programs)")
            if program != COMPUTE_BUDGET_PROGRAM:
                self.instructions += 1
            handler = handlers.get(program)
            if handler is not None:
                handler(index, program, bytes(ix.accounts), bytes(ix.data))
        return self.caps(header.num_required_signatures)

    # --- SOL leaving the wallet --------------------------------------------------------------

    def lamports_out(self, index: int, what: str, destination: Pubkey, lamports: int) -> None:
        if destination in self.own:
            return  # still the wallet's (itself, its wrapped-SOL account)
        if destination in self.settings.tip_accounts:
            self.spend.tip += lamports
            self.tip_indexes.append(index)
            return
        if destination == self.builder_tip_account:
            raise PolicyViolation("tip_account", index, f"the Jito tip of {lamports} lamports goes to {destination}, which is not one of Jito's tip accounts")
        if destination in self.settings.allowed_destinations:
            self.spend.outflow += lamports
            return
        raise PolicyViolation(
            "sol_transfer", index,
            f"{what} of {lamports} lamports to {destination}, which is not the wallet's, a Jito tip account or an allowed destination",
        )  # fmt: skip

    def hands_over(self, destination: Pubkey | None) -> bool:
        """Would giving `destination` a lookup table's rent take it out of the wallet's hands? (A
        delegation, a token account's authority or its lamports go only to the wallet: `token`.)"""
        return destination is None or not (destination in self.own or destination in self.settings.allowed_destinations)

    def system(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        tag = _u32(data, 0) if len(data) >= 4 else None
        name = SYSTEM_INSTRUCTIONS.get(tag, f"instruction {tag}")
        if tag == 2 and len(data) >= 12:  # Transfer [from, to]
            self.lamports_out(index, "System Transfer", self.account(index, accounts, 1, "Transfer"), _u64(data, 4))
        elif tag == 11 and len(data) >= 12:  # TransferWithSeed [from (derived from the wallet), base, to]
            self.lamports_out(index, "System TransferWithSeed", self.account(index, accounts, 2, "TransferWithSeed"), _u64(data, 4))
        else:
            why = SYSTEM_REFUSED_WHY.get(tag, "it is not an instruction the executor knows")
            if tag == 1 and len(data) >= 36:  # Assign [account]; data: owner
                why = f"it hands {self.account(index, accounts, 0, name)} to program {Pubkey.from_bytes(data[4:36])}"
            raise PolicyViolation("system_instruction", index, f"System {name} is not allowed: {why}")

    # --- tokens ----------------------------------------------------------------------------------

    def token(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        if not data:
            raise PolicyViolation("malformed", index, f"{PROGRAM_NAMES[program]} instruction without data")
        tag = data[0]
        name = f"{PROGRAM_NAMES[program]} {TOKEN_INSTRUCTIONS.get(tag, f'instruction {tag}')}"
        if tag in TOKEN_PLAIN or (program == TOKEN_2022_PROGRAM and tag in TOKEN_2022_PLAIN):
            return
        # Layouts: solana-program/token program/src/instruction.rs (TokenInstruction::unpack and the
        # account lists in its doc comments); Token-2022 keeps tags 0-24 and their layouts.
        if tag == TRANSFER:  # [source, destination, authority, ..multisig signers]; data: amount u64
            self.need(index, name, data, 9)
            source, destination = self.account(index, accounts, 0, name), self.account(index, accounts, 1, name)
            self.token_out(index, name, program, accounts, 2, source, None, destination, _u64(data, 1))
        elif tag == TRANSFER_CHECKED:  # [source, mint, destination, authority, ..]; data: amount u64, decimals u8
            self.need(index, name, data, 10)
            source, mint, destination = (self.account(index, accounts, i, name) for i in (0, 1, 2))
            self.token_out(index, name, program, accounts, 3, source, mint, destination, _u64(data, 1))
        elif program == TOKEN_2022_PROGRAM and tag == TRANSFER_FEE_EXTENSION and len(data) >= 2 and data[1] == TRANSFER_CHECKED_WITH_FEE:
            # TransferCheckedWithFee [source, mint, destination, authority, ..]; data: 26, 1, amount u64,
            # decimals u8, fee u64 (token-2022 program/src/extension/transfer_fee/instruction.rs). The fee
            # is withheld out of the amount, so the amount is what leaves the wallet.
            name = "Token-2022 TransferCheckedWithFee"
            self.need(index, name, data, 19)
            source, mint, destination = (self.account(index, accounts, i, name) for i in (0, 1, 2))
            self.token_out(index, name, program, accounts, 3, source, mint, destination, _u64(data, 2))
        elif tag in (APPROVE, APPROVE_CHECKED):  # Approve [source, delegate, owner] / ApproveChecked [source, mint, delegate, owner]
            # Refused outright rather than counted: a delegation outlives the transaction, so the
            # delegate can take the approved amount in any later one, where no per-plan count sees it.
            delegate = self.account(index, accounts, 1 if tag == APPROVE else 2, name)
            if delegate not in self.own:
                raise PolicyViolation("token_delegate", index, f"{name} makes {delegate} a delegate of the wallet's tokens")
        elif tag == SET_AUTHORITY:  # [account, current authority]; data: type u8, COption<Pubkey>
            if len(data) < 3 or (data[2] == 1 and len(data) < 35):
                raise PolicyViolation("malformed", index, f"{name}: data too short")
            new = Pubkey.from_bytes(data[3:35]) if data[2] == 1 else None
            if new is None or new not in self.own:  # an owner change takes the whole balance: no cap could count it
                target = self.account(index, accounts, 0, name)
                raise PolicyViolation("token_authority", index, f"{name} gives authority over {target} to {new if new else 'nobody'}")
        elif tag == CLOSE_ACCOUNT:  # [account, destination, owner]
            # The account's lamports go to the destination, and a wSOL account's lamports are its
            # whole balance: unknown to a static check, so only the wallet may receive them.
            destination = self.account(index, accounts, 1, name)
            if destination not in self.own:
                raise PolicyViolation("token_close", index, f"{name} sends the lamports of {self.account(index, accounts, 0, name)} to {destination}")
        elif tag in (BURN, BURN_CHECKED):  # [account, mint, owner]
            raise PolicyViolation("token_burn", index, f"{name} destroys tokens of {self.account(index, accounts, 0, name)}")
        elif tag in (WITHDRAW_EXCESS_LAMPORTS, UNWRAP_LAMPORTS):  # [source, destination, authority]
            # UnwrapLamports takes wSOL out as SOL, an amount of the plan's choosing: only to the wallet.
            destination = self.account(index, accounts, 1, name)
            if destination not in self.own:
                raise PolicyViolation("token_withdraw", index, f"{name} sends lamports of {self.account(index, accounts, 0, name)} to {destination}")
        else:
            raise PolicyViolation("token_instruction", index, f"{name} is not allowed")

    @staticmethod
    def need(index: int, name: str, data: bytes, length: int) -> None:
        if len(data) < length:
            raise PolicyViolation("malformed", index, f"{name}: {len(data)} bytes of data, {length} needed")

    def token_out(
        self, index: int, name: str, program: Pubkey, accounts: bytes, authority_at: int,
        source: Pubkey, mint: Pubkey | None, destination: Pubkey, amount: int,
    ) -> None:  # fmt: skip
        """Count a token transfer that takes `amount` of `mint` out of the wallet, and refuse the plan
        when the transfers of that mint, summed, pass what it may send (`allowance`).

        The wallet is the only signer, so a top-level transfer that can succeed moves tokens the
        wallet owns or is a delegate of; which of the two cannot be told without reading the source,
        so it is counted, unless it lands in the wallet's own account of that mint. (The demo pool's
        vault, delegated to the wallet, pays into the wallet's account: not counted.) A pool paying
        the wallet from inside a program is no top-level instruction and is not seen here."""
        if not any(position < len(self.keys) and self.keys[position] == self.wallet for position in accounts[authority_at:]):
            return  # neither the authority nor one of its multisig signers: fails without a signature it cannot have
        if mint is None:  # a plain Transfer names no mint: tell it by the wallet's accounts of the mints it knows
            mint = self.mint_of(program, source, destination)
            if mint is None:
                raise PolicyViolation(
                    "token_outflow", index,
                    f"{name} from {source} to {destination}: neither is the wallet's account of a mint the plan names, so what leaves "
                    "cannot be counted (a route pays with TransferChecked, which names its mint)",
                )  # fmt: skip
        if destination in self.own or destination == self.token_account_of(self.wallet, mint, program):
            return  # still the wallet's
        total = self.outflows[mint] = self.outflows.get(mint, 0) + amount
        self.outflow_indexes.setdefault(mint, []).append(index)
        allowed = self.allowance(mint)
        if total > allowed:
            indexes = self.outflow_indexes[mint]
            what = f"{name} sends {amount}" if len(indexes) == 1 else f"instructions {indexes} send {total}"
            raise PolicyViolation(
                "token_outflow", index,
                f"{what} base units of {mint} out of the wallet, over the {allowed} it may send "
                f"(the plan's declared input {self.declared.get(mint, 0)} + POLICY_MAX_OUTFLOW {self.settings.outflow_cap(mint)})",
            )  # fmt: skip

    def allowance(self, mint: Pubkey) -> int:
        return self.declared.get(mint, 0) + self.settings.outflow_cap(mint)

    def mint_of(self, program: Pubkey, source: Pubkey, destination: Pubkey) -> Pubkey | None:
        if source in self.own or destination in self.own:
            return NATIVE_MINT  # the wallet's wSOL accounts
        for mint in (*self.declared, *self.settings.max_outflow):
            account = self.token_account_of(self.wallet, mint, program)
            if account in (source, destination):
                return mint
        return None

    def associated_token_account(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        kind = data[0] if data else 0
        if kind in (0, 1):  # Create / CreateIdempotent [funder, ata, owner, mint, system, token program]
            name = "ATA " + ("CreateIdempotent" if kind else "Create")
            token_program = self.account(index, accounts, 5, name)
            if token_program not in TOKEN_PROGRAMS:
                raise PolicyViolation("ata_token_program", index, f"{name} names token program {token_program}, not SPL Token or Token-2022")
            owner = self.account(index, accounts, 2, name)
            if self.account(index, accounts, 0, name) == self.wallet and owner != self.wallet and owner not in self.settings.allowed_destinations:
                raise PolicyViolation("ata_owner", index, f"{name}: the wallet would pay the rent of a token account owned by {owner}")
        elif kind == 2:  # RecoverNested: back into the wallet's own ATA [.., wallet, token program]
            token_program = self.account(index, accounts, 6, "ATA RecoverNested")
            if token_program not in TOKEN_PROGRAMS:
                raise PolicyViolation("ata_token_program", index, f"ATA RecoverNested names token program {token_program}")
        else:
            raise PolicyViolation("ata_instruction", index, f"ATA instruction {kind} is not allowed")

    def lookup_table(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        tag = _u32(data, 0) if len(data) >= 4 else None
        name = LOOKUP_TABLE_INSTRUCTIONS.get(tag)
        if name is None:
            raise PolicyViolation("lookup_table", index, f"lookup table instruction {tag} is not allowed")
        if tag == 0:  # CreateLookupTable [table, authority, payer, system]
            authority = self.account(index, accounts, 1, name)
            if authority != self.wallet:
                raise PolicyViolation("lookup_table", index, f"{name}: the wallet would pay for a table controlled by {authority}")
        elif tag == 4:  # CloseLookupTable [table, authority, recipient]
            recipient = self.account(index, accounts, 2, name)
            if self.hands_over(recipient):
                raise PolicyViolation("lookup_table", index, f"{name} sends the table's rent to {recipient}")

    # --- klend ----------------------------------------------------------------------------------

    def flash_loan(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        """klend only for the flash borrow and repay the builder makes: the accounts must be the
        reserve's as read from chain (not as a plan says), and the wallet's own token account."""
        name = klend.INSTRUCTION_NAMES.get(data[:8])
        if name is None:
            raise PolicyViolation("flash_loan", index, "klend instructions other than flash_borrow/flash_repay_reserve_liquidity are not allowed")
        if len(accounts) != 12:
            raise PolicyViolation("flash_loan", index, f"{name} has {len(accounts)} accounts, klend's has 12")
        reserve_key = self.account(index, accounts, 3, name)
        reserve = self.reserves.get(reserve_key)
        if not isinstance(reserve, klend.ReserveInfo):
            raise PolicyViolation("flash_loan", index, f"{name}: {reserve or f'reserve {reserve_key} was not read'}")
        expected = (
            (0, self.wallet, "the transfer authority (the wallet)"),
            (1, self.market_authority(reserve.lending_market), "the lending market authority"),
            (2, reserve.lending_market, "the reserve's lending market"),
            (4, reserve.liquidity_mint, "the reserve's mint"),
            (5, reserve.supply_vault, "the reserve's supply vault"),
            (6, self.token_account_of(self.wallet, reserve.liquidity_mint, reserve.token_program), "the wallet's token account"),
            (7, reserve.fee_vault, "the reserve's fee receiver"),
            (8, klend.KLEND_PROGRAM_ID, "no referrer"),
            (9, klend.KLEND_PROGRAM_ID, "no referrer"),
            (10, klend.INSTRUCTIONS_SYSVAR, "the instructions sysvar"),
            (11, reserve.token_program, "the reserve's token program"),
        )
        for position, want, what in expected:
            got = self.keys[accounts[position]] if accounts[position] < len(self.keys) else None
            if got != want:
                raise PolicyViolation("flash_loan", index, f"{name} account {position} is {got}, but {what} on chain is {want}")

    # --- compute budget, fees, caps ----------------------------------------------------------------

    def compute_budget(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        parsed = parse_compute_budget(data)
        if parsed is None or not parsed.exact:
            tag = data[0] if data else None
            raise PolicyViolation("compute_budget", index, f"compute budget instruction {tag} with {len(data)} bytes is not valid")
        if parsed.tag in self.budget_seen:
            raise PolicyViolation("compute_budget", index, f"a second {parsed.name}")
        self.budget_seen.add(parsed.tag)
        if parsed.tag == SET_COMPUTE_UNIT_LIMIT:
            self.spend.compute_unit_limit, self.limit_index = parsed.value, index
        elif parsed.tag == SET_COMPUTE_UNIT_PRICE:
            self.spend.compute_unit_price, self.price_index = parsed.value, index

    def caps(self, signatures: int) -> Spend:
        settings, spend = self.settings, self.spend
        if self.limit_index is None:
            spend.compute_unit_limit = min(MAX_COMPUTE_UNITS, DEFAULT_INSTRUCTION_COMPUTE_UNITS * self.instructions)
        limit = min(spend.compute_unit_limit, MAX_COMPUTE_UNITS)
        spend.base_fee = LAMPORTS_PER_SIGNATURE * signatures
        spend.priority_fee = -(-limit * spend.compute_unit_price // 1_000_000)  # rounded up, as the runtime charges
        if spend.compute_unit_price > settings.max_cu_price:
            raise PolicyViolation("max_cu_price", self.price_index, f"compute-unit price {spend.compute_unit_price} micro-lamports is over the cap {settings.max_cu_price}")
        if spend.priority_fee > settings.max_priority_fee_lamports:
            raise PolicyViolation(
                "max_priority_fee", self.price_index,
                f"priority fee {spend.priority_fee} lamports ({limit} CU x {spend.compute_unit_price} micro-lamports) is over the cap {settings.max_priority_fee_lamports}",
            )  # fmt: skip
        if spend.tip > settings.max_tip_lamports:
            where = self.tip_indexes[-1] if len(self.tip_indexes) == 1 else None
            raise PolicyViolation("max_tip", where, f"tip of {spend.tip} lamports (instructions {self.tip_indexes}) is over the cap {settings.max_tip_lamports}")
        if spend.total > settings.max_plan_lamports:
            raise PolicyViolation(
                "max_sol_per_plan", None,
                f"spends {spend.total} lamports (fee {spend.base_fee} + priority {spend.priority_fee} + tip {spend.tip} + transfers {spend.outflow}), over the cap {settings.max_plan_lamports}",
            )  # fmt: skip
        return spend


# --- the per-wallet, per-minute total, shared by every worker -------------------------------------

SPEND_BUCKET = "wallet_spend"
SPEND_PREFIX = "spend."


def _worker_token(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


class SpendLedger:
    """Lamports each wallet spent over the last `window_s`, summed over every worker.

    Each worker counts its own spend exactly, in memory, per wallet and per second, at the moment
    it passes a transaction for signing (whether or not it lands: an upper bound), and publishes
    it in the KV bucket `wallet_spend` (one key per wallet and worker, written in the background,
    never waited on by a plan). It follows the bucket, so the cap applies to the sum over all
    workers; another worker's latest spend is seen a few milliseconds late, so concurrent plans
    on two workers can overshoot the cap by at most what is in flight between them. The bucket
    is in memory with a 2-minute TTL: a NATS restart forgets at most the last minute."""

    def __init__(self, worker: str = "local", window_s: float = 60.0, kv=None) -> None:
        self.worker = worker
        self.window_s = window_s
        self.kv = kv
        self._mine: dict[str, dict[int, int]] = {}
        self._theirs: dict[str, dict[str, dict[int, int]]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, js, worker_name: str, *, replicas: int = 1, window_s: float = 60.0) -> SpendLedger:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await js.key_value(SPEND_BUCKET)
        except BucketNotFoundError:  # two workers creating an identical bucket at once is accepted
            kv = await js.create_key_value(KeyValueConfig(bucket=SPEND_BUCKET, history=1, ttl=max(120.0, 2 * window_s), storage=StorageType.MEMORY, replicas=replicas))
        return cls(_worker_token(worker_name), window_s, kv)

    def _since(self, now_s: float) -> int:
        return int(now_s - self.window_s)  # seconds after this one are in the window

    def total(self, wallet: str, now_s: float | None = None) -> int:
        since = self._since(time.time() if now_s is None else now_s)
        total = sum(v for s, v in self._mine.get(wallet, {}).items() if s > since)
        for buckets in self._theirs.get(wallet, {}).values():
            total += sum(v for s, v in buckets.items() if s > since)
        return total

    def add(self, wallet: str, lamports: int, now_s: float | None = None) -> int:
        """Count `lamports` for `wallet` now; returns the second it was counted in (for `refund`)."""
        now_s = time.time() if now_s is None else now_s
        second, since = int(now_s), self._since(now_s)
        buckets = self._mine.setdefault(wallet, {})
        for old in [s for s in buckets if s <= since]:
            del buckets[old]
        buckets[second] = buckets.get(second, 0) + lamports
        self._changed(wallet)
        return second

    def refund(self, wallet: str, lamports: int, second: int) -> None:
        buckets = self._mine.get(wallet, {})
        if second in buckets:
            buckets[second] = max(0, buckets[second] - lamports)
            self._changed(wallet)

    def _changed(self, wallet: str) -> None:
        if self.kv is not None:
            self._dirty.add(wallet)
            self._wake.set()

    async def run(self) -> None:
        """Publish this worker's totals and follow the others' (forever, in the background)."""
        if self.kv is None:
            await asyncio.Event().wait()  # nothing to share; like every worker task, it ends only when cancelled
        await asyncio.gather(self._publish_forever(), self._follow_forever())

    async def _publish_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for wallet in dirty:
                since = self._since(time.time())
                body = {"wallet": wallet, "seconds": {str(s): v for s, v in self._mine.get(wallet, {}).items() if s > since}}
                try:
                    await self.kv.put(f"{SPEND_PREFIX}{wallet}.{self.worker}", json.dumps(body).encode())
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - NATS away: the local count still holds; try again
                    log.warning("stage=policy event=spend_publish_failed wallet=%s error=%s", wallet, error)
                    self._dirty.add(wallet)
                    await asyncio.sleep(0.5)
                    self._wake.set()

    async def _follow_forever(self) -> None:
        while True:
            try:
                watcher = await self.kv.watch(SPEND_PREFIX + ">")
                async for entry in watcher:
                    if entry is None or entry.value is None or entry.operation is not None:
                        continue
                    wallet, _, worker = entry.key[len(SPEND_PREFIX) :].rpartition(".")
                    if worker == self.worker:
                        continue
                    try:
                        seconds = {int(s): int(v) for s, v in json.loads(entry.value)["seconds"].items()}
                    except (ValueError, KeyError, TypeError):
                        log.warning("stage=policy event=bad_spend_entry key=%s", entry.key)
                        continue
                    self._theirs.setdefault(wallet, {})[worker] = seconds
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - NATS away: keep the last view, follow again
                log.warning("stage=policy event=spend_watch_failed error=%s; following again in 1 s", error)
                await asyncio.sleep(1.0)


# --- simulation -----------------------------------------------------------------------------------

TOKEN_ACCOUNT_SIZE = 165  # spl-token Account::LEN; Token-2022 accounts start with the same layout


def _token_holdings(account: dict | None, wallet: str) -> tuple[str, int] | None:
    """(mint, amount) of an initialized token account the wallet owns, from a base64 account."""
    if account is None or account.get("owner") not in (str(TOKEN_PROGRAM), str(TOKEN_2022_PROGRAM)):
        return None
    data = base64.b64decode(account["data"][0])
    if len(data) < TOKEN_ACCOUNT_SIZE or data[108] == 0 or Pubkey.from_bytes(data[32:64]) != Pubkey.from_string(wallet):
        return None  # too short, uninitialized, or someone else's
    return str(Pubkey.from_bytes(data[0:32])), _u64(data, 64)


def balance_losses(wallet: str, addresses: list[str], before: list[dict | None], after: list[dict | None]) -> tuple[int, dict[str, int]]:
    """The wallet's SOL loss and, per mint, its token loss between two reads of the same accounts
    (negative: a gain). A token account the wallet no longer owns, or that was closed, counts as lost."""
    sol_loss = 0
    tokens: dict[str, int] = {}
    for address, pre, post in zip(addresses, before, after):
        if address == wallet:
            sol_loss = (pre or {}).get("lamports", 0) - ((post or {}).get("lamports", 0) if post else 0)
        held_pre, held_post = _token_holdings(pre, wallet), _token_holdings(post, wallet)
        for held, sign in ((held_pre, 1), (held_post, -1)):
            if held is not None:
                tokens[held[0]] = tokens.get(held[0], 0) + sign * held[1]
    return sol_loss, tokens


# --- the policy ------------------------------------------------------------------------------------


def declared_outflows(plan: ExecutionPlanEvent) -> dict[Pubkey, int]:
    """What the plan says may leave the wallet, by mint: its inputAmount of its inputToken (a swap
    pays its input into a pool). Its outputToken is named with 0, so a plain Transfer into the
    wallet's account of it can be told. A flash loan adds nothing: the borrowed amount is paid back
    out of the same account, so spending it spends the wallet's own until the repay (klend's, its
    accounts checked against the reserve on chain, done inside klend: no top-level transfer)."""
    declared = {Pubkey.from_string(plan.output_token): 0}
    mint = Pubkey.from_string(plan.input_token)
    declared[mint] = declared.get(mint, 0) + plan.input_amount
    return declared


class PlanPolicy:
    """The checks `Dispatch` runs between build and sign (and `inspect-plan` reports)."""

    def __init__(self, settings: PolicySettings, *, lookup_tables=None, reserves=None, spend: SpendLedger | None = None, rpc=None) -> None:
        self.settings = settings
        self.lookup_tables = lookup_tables  # the builder's LookupTableCache (or None: a table is a violation)
        self.reserves = reserves  # the builder's klend ReserveCache
        self.spend = spend if spend is not None else SpendLedger()
        self.rpc = rpc  # SolanaRpc, for POLICY_SIMULATE
        self._tables: dict[Pubkey, tuple[Pubkey, ...]] = {}  # table entries never change once written, so a copy stays true
        self._own: dict[Pubkey, frozenset[Pubkey]] = {}
        self._token_accounts: dict[tuple[Pubkey, Pubkey, Pubkey], Pubkey] = {}
        self._market_authorities: dict[Pubkey, Pubkey] = {}

    # cached derivations (each costs a curve check: tens of microseconds)

    def own_accounts(self, wallet: Pubkey) -> frozenset[Pubkey]:
        own = self._own.get(wallet)
        if own is None:
            own = self._own[wallet] = frozenset({wallet} | {self.token_account_of(wallet, NATIVE_MINT, p) for p in TOKEN_PROGRAMS})
        return own

    def token_account_of(self, wallet: Pubkey, mint: Pubkey, program: Pubkey) -> Pubkey:
        key = (wallet, mint, program)
        account = self._token_accounts.get(key)
        if account is None:
            account = self._token_accounts[key] = associated_token_address(wallet, mint, program)
        return account

    def market_authority(self, market: Pubkey) -> Pubkey:
        authority = self._market_authorities.get(market)
        if authority is None:
            authority = self._market_authorities[market] = klend.lending_market_authority(market)
        return authority

    async def _table_entries(self, message: MessageV0) -> dict[Pubkey, tuple[Pubkey, ...]]:
        tables = {}
        for lookup in message.address_table_lookups:
            needed = max(bytes(lookup.writable_indexes) + bytes(lookup.readonly_indexes), default=-1) + 1
            entries = self._tables.get(lookup.account_key)
            if entries is None or len(entries) < needed:  # unknown, or grown since it was copied
                if self.lookup_tables is None:
                    raise PolicyViolation("malformed", None, f"lookup table {lookup.account_key} cannot be read")
                (table,) = await self.lookup_tables.get([lookup.account_key])
                entries = self._tables[lookup.account_key] = tuple(table.addresses)
            tables[lookup.account_key] = entries
        return tables

    async def _klend_reserves(self, message: MessageV0, keys: list[Pubkey]) -> dict[Pubkey, klend.ReserveInfo | str]:
        """The reserve of every klend instruction, as read from chain (cached by the builder's
        ReserveCache): a plan may carry reserve data, and it is the plan that is not trusted."""
        found: dict[Pubkey, klend.ReserveInfo | str] = {}
        for ix in message.instructions:
            if ix.program_id_index < len(keys) and keys[ix.program_id_index] == klend.KLEND_PROGRAM_ID and len(bytes(ix.accounts)) > 3:
                position = bytes(ix.accounts)[3]
                if position >= len(keys) or keys[position] in found:
                    continue
                reserve = keys[position]
                if self.reserves is None:
                    found[reserve] = f"reserve {reserve} cannot be read from chain here"
                    continue
                try:
                    found[reserve] = await self.reserves.get(reserve)
                except klend.ReserveInvalid as invalid:  # an RPC failure is transient: raised, retried
                    found[reserve] = f"reserve {reserve} is not a klend reserve on chain: {invalid}"
        return found

    async def examine(self, wallet: str, message: MessageV0, tip_account: str | None = None, declared: Mapping[Pubkey, int] | None = None) -> Examined:
        """The static rules on a compiled message; raises PolicyViolation. No state is changed.
        `declared`: what the plan says may leave the wallet, by mint (`declared_outflows`); None: nothing."""
        wallet_key = Pubkey.from_string(wallet)
        tables = await self._table_entries(message) if message.address_table_lookups else {}
        keys = message_keys(message, tables)
        reserves = await self._klend_reserves(message, keys) if klend.KLEND_PROGRAM_ID in keys else {}
        check = _MessageCheck(
            self.settings, wallet_key, self.own_accounts(wallet_key), keys,
            builder_tip_account=Pubkey.from_string(tip_account) if tip_account else None,
            reserves=reserves, token_account_of=self.token_account_of, market_authority=self.market_authority, declared=declared,
        )  # fmt: skip
        return Examined(check.run(message), message, keys)

    async def check(self, plan: ExecutionPlanEvent, wallet: str, built: BuiltTransaction) -> Spend:
        """Between build and sign: pass (the spend is counted for the wallet) or fail the plan
        POLICY_VIOLATION, non-retryable. Logged with the plan id and stage=policy either way."""
        started = time.perf_counter()
        counted: tuple[int, int] | None = None
        try:
            message = from_bytes_versioned(base64.b64decode(built.message))
            examined = await self.examine(wallet, message, built.tip_account, declared_outflows(plan))
            spend = examined.spend
            # Checked and counted with no await in between: two plans of this process cannot both slip under the cap.
            spent = self.spend.total(wallet)
            if spent + spend.total > self.settings.max_wallet_minute_lamports:
                raise PolicyViolation(
                    "max_sol_per_wallet_minute", None,
                    f"wallet {wallet} spent {spent} lamports over the last {self.spend.window_s:g} s; this plan's {spend.total} would pass the cap {self.settings.max_wallet_minute_lamports}",
                )  # fmt: skip
            counted = (spend.total, self.spend.add(wallet, spend.total))
            if self.settings.simulate:
                await self.simulate(plan, wallet, examined)
        except PolicyViolation as violation:
            if counted is not None:
                self.spend.refund(wallet, *counted)
            log.warning(
                "plan=%s stage=policy verdict=refused rule=%s instruction=%s wallet=%s error=%s",
                plan.plan_id, violation.rule, violation.index, wallet, violation.detail,
            )  # fmt: skip
            fail(ErrorCode.POLICY_VIOLATION, str(violation))
        except BaseException:
            if counted is not None:
                self.spend.refund(wallet, *counted)
            raise
        log.info(
            "plan=%s stage=policy verdict=pass wallet=%s spend=%d fee=%d priority=%d tip=%d transfers=%d us=%d",
            plan.plan_id, wallet, spend.total, spend.base_fee, spend.priority_fee, spend.tip, spend.outflow,
            (time.perf_counter() - started) * 1e6,
        )  # fmt: skip
        return spend

    async def simulate(self, plan: ExecutionPlanEvent, wallet: str, examined: Examined) -> None:
        """simulateTransaction on the built, unsigned transaction (sigVerify false; its own blockhash,
        not replaced), beside a read of the same accounts before, in one batch request (one node, one
        view). Unsigned, because a refused plan must leave no signed bytes anywhere."""
        if self.rpc is None:
            raise PolicyViolation("simulation_failed", None, "POLICY_SIMULATE is on but this worker has no RPC to simulate with")
        tx = VersionedTransaction.populate(examined.message, [Signature.default()])
        addresses = list(dict.fromkeys(str(k) for k in writable_keys(examined.message, examined.keys)))
        before, simulated = await self.rpc.batch(
            [
                ("getMultipleAccounts", [addresses, {"encoding": "base64", "commitment": "processed"}]),
                (
                    "simulateTransaction",
                    [
                        base64.b64encode(bytes(tx)).decode(),
                        {
                            "encoding": "base64", "sigVerify": False, "replaceRecentBlockhash": False, "commitment": "processed",
                            "accounts": {"encoding": "base64", "addresses": addresses},
                        },
                    ],
                ),
            ]
        )  # fmt: skip
        value = simulated["value"]
        if value.get("err") is not None:
            logs = value.get("logs") or []
            raise PolicyViolation("simulation_failed", None, f"the transaction fails in simulation: {value['err']} {' | '.join(logs[-3:])}"[:600])
        sol_loss, tokens = balance_losses(wallet, addresses, before["value"], value.get("accounts") or [None] * len(addresses))
        # The caps are the configuration's only: a plan's declared input is its own word, and a plan that
        # declared a large input would get an equally large cap (issue 20).
        sol_cap = self.settings.simulate_sol_loss_cap + self.settings.outflow_cap(NATIVE_MINT)
        if sol_loss > sol_cap:
            raise PolicyViolation("simulated_sol_loss", None, f"the wallet's SOL falls by {sol_loss} lamports in simulation, over the cap {sol_cap}")
        for mint, loss in tokens.items():
            cap = self.settings.simulate_max_token_loss + self.settings.outflow_cap(mint)
            if loss > cap:
                raise PolicyViolation("simulated_token_loss", None, f"the wallet's {mint} falls by {loss} base units in simulation, over the cap {cap}")


async def open_policy(settings: PolicySettings, js, builder, rpc, *, worker_name: str, replicas: int = 1) -> PlanPolicy:
    """The worker's policy: on the builder's lookup-table and reserve caches, with the shared spend ledger."""
    spend = await SpendLedger.open(js, worker_name, replicas=replicas)
    policy = PlanPolicy(settings, lookup_tables=builder.lookup_tables, reserves=builder.reserves, spend=spend, rpc=rpc)
    log.info("stage=policy event=loaded settings=%s", json.dumps(settings.describe()))
    return policy
