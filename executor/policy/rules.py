"""The static rules: what a built transaction may do with a hot wallet, read off its compiled message.

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
  outflow); the per wallet per minute cap is `PlanPolicy.check`'s, on the `SpendLedger`.

The static check is synchronous and allocation-light (tens of microseconds per plan, measured
in tests/test_policy.py); lookup tables and klend reserves come from the caches the builder
just filled (`PlanPolicy`). Instructions are named by the venue's vocabularies
(venue/instructions.py), so each rule reads as the instruction it is.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from solders.message import MessageV0
from solders.pubkey import Pubkey

from settings.policy import PolicySettings
from venue import (
    DEFAULT_INSTRUCTION_COMPUTE_UNITS,
    LAMPORTS_PER_SIGNATURE,
    MAX_COMPUTE_UNITS,
    parse_compute_budget,
)
from venue import klend
from venue.instructions import (
    AssociatedTokenAccountInstruction,
    ComputeBudgetInstruction,
    LookupTableInstruction,
    SystemInstruction,
    TokenInstruction,
    TransferFeeInstruction,
)
from venue.programs import (
    ATA_PROGRAM,
    LOOKUP_TABLE_PROGRAM,
    NATIVE_MINT,
    SYSTEM_PROGRAM,
    TOKEN_2022_PROGRAM,
    TOKEN_PROGRAM,
)

from .programs import COMPUTE_BUDGET_PROGRAM, PROGRAM_NAMES, TOKEN_PROGRAMS
from .violation import PolicyViolation

# Why each System instruction other than the two transfers is refused.
SYSTEM_REFUSED_WHY = {
    SystemInstruction.CREATE_ACCOUNT: "it funds a new account that is not the wallet's",
    SystemInstruction.ASSIGN: "it hands the account to another program",
    SystemInstruction.CREATE_ACCOUNT_WITH_SEED: "it funds a new account that is not the wallet's",
    SystemInstruction.ADVANCE_NONCE_ACCOUNT: "the executor uses no durable nonce",
    SystemInstruction.WITHDRAW_NONCE_ACCOUNT: "it withdraws from a nonce account the wallet controls",
    SystemInstruction.INITIALIZE_NONCE_ACCOUNT: "the executor uses no durable nonce",
    SystemInstruction.AUTHORIZE_NONCE_ACCOUNT: "it hands a nonce account's authority away",
    SystemInstruction.ALLOCATE: "it gives the account data, and a fee payer must have none",
    SystemInstruction.ALLOCATE_WITH_SEED: "it allocates an account derived from the wallet",
    SystemInstruction.ASSIGN_WITH_SEED: "it hands an account derived from the wallet to another program",
    SystemInstruction.UPGRADE_NONCE_ACCOUNT: "the executor uses no durable nonce",
}
# What a swap route needs and that hands nothing of the wallet away: initialisations, revoke,
# mint, freeze/thaw, sync-native (wrapping: the lamports were already the account's), the
# read-only helpers. Transfers are not here: what they take out of the wallet is counted, by mint
# (`_MessageCheck.token_out`).
TOKEN_PLAIN = frozenset(
    {
        TokenInstruction.INITIALIZE_MINT, TokenInstruction.INITIALIZE_ACCOUNT, TokenInstruction.INITIALIZE_MULTISIG,
        TokenInstruction.REVOKE, TokenInstruction.MINT_TO, TokenInstruction.FREEZE_ACCOUNT, TokenInstruction.THAW_ACCOUNT,
        TokenInstruction.MINT_TO_CHECKED, TokenInstruction.INITIALIZE_ACCOUNT2, TokenInstruction.SYNC_NATIVE,
        TokenInstruction.INITIALIZE_ACCOUNT3, TokenInstruction.INITIALIZE_MULTISIG2, TokenInstruction.INITIALIZE_MINT2,
        TokenInstruction.GET_ACCOUNT_DATA_SIZE, TokenInstruction.INITIALIZE_IMMUTABLE_OWNER,
        TokenInstruction.AMOUNT_TO_UI_AMOUNT, TokenInstruction.UI_AMOUNT_TO_AMOUNT,
    }
)  # fmt: skip
# Token-2022 only: mint close authority, reallocate (the owner signs: the wallet's own account),
# required memos and the CPI guard on the wallet's own accounts.
TOKEN_2022_PLAIN = frozenset(
    {
        TokenInstruction.INITIALIZE_MINT_CLOSE_AUTHORITY, TokenInstruction.REALLOCATE,
        TokenInstruction.MEMO_TRANSFER_EXTENSION, TokenInstruction.CPI_GUARD_EXTENSION,
    }
)  # fmt: skip


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
        name = SystemInstruction.label_of(tag)
        if tag == SystemInstruction.TRANSFER and len(data) >= 12:  # [from, to]
            self.lamports_out(index, "System Transfer", self.account(index, accounts, 1, "Transfer"), _u64(data, 4))
        elif tag == SystemInstruction.TRANSFER_WITH_SEED and len(data) >= 12:  # [from (derived from the wallet), base, to]
            self.lamports_out(index, "System TransferWithSeed", self.account(index, accounts, 2, "TransferWithSeed"), _u64(data, 4))
        else:
            why = SYSTEM_REFUSED_WHY.get(tag, "it is not an instruction the executor knows")
            if tag == SystemInstruction.ASSIGN and len(data) >= 36:  # [account]; data: owner
                why = f"it hands {self.account(index, accounts, 0, name)} to program {Pubkey.from_bytes(data[4:36])}"
            raise PolicyViolation("system_instruction", index, f"System {name} is not allowed: {why}")

    # --- tokens ----------------------------------------------------------------------------------

    def token(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        if not data:
            raise PolicyViolation("malformed", index, f"{PROGRAM_NAMES[program]} instruction without data")
        tag = data[0]
        name = f"{PROGRAM_NAMES[program]} {TokenInstruction.label_of(tag)}"
        if tag in TOKEN_PLAIN or (program == TOKEN_2022_PROGRAM and tag in TOKEN_2022_PLAIN):
            return
        # Layouts: solana-program/token program/src/instruction.rs (TokenInstruction::unpack and the
        # account lists in its doc comments); Token-2022 keeps tags 0-24 and their layouts.
        if tag == TokenInstruction.TRANSFER:  # [source, destination, authority, ..multisig signers]; data: amount u64
            self.need(index, name, data, 9)
            source, destination = self.account(index, accounts, 0, name), self.account(index, accounts, 1, name)
            self.token_out(index, name, program, accounts, 2, source, None, destination, _u64(data, 1))
        elif tag == TokenInstruction.TRANSFER_CHECKED:  # [source, mint, destination, authority, ..]; data: amount u64, decimals u8
            self.need(index, name, data, 10)
            source, mint, destination = (self.account(index, accounts, i, name) for i in (0, 1, 2))
            self.token_out(index, name, program, accounts, 3, source, mint, destination, _u64(data, 1))
        elif program == TOKEN_2022_PROGRAM and tag == TokenInstruction.TRANSFER_FEE_EXTENSION and len(data) >= 2 and data[1] == TransferFeeInstruction.TRANSFER_CHECKED_WITH_FEE:
            # TransferCheckedWithFee [source, mint, destination, authority, ..]; data: 26, 1, amount u64,
            # decimals u8, fee u64 (token-2022 program/src/extension/transfer_fee/instruction.rs). The fee
            # is withheld out of the amount, so the amount is what leaves the wallet.
            name = "Token-2022 TransferCheckedWithFee"
            self.need(index, name, data, 19)
            source, mint, destination = (self.account(index, accounts, i, name) for i in (0, 1, 2))
            self.token_out(index, name, program, accounts, 3, source, mint, destination, _u64(data, 2))
        elif tag in (TokenInstruction.APPROVE, TokenInstruction.APPROVE_CHECKED):  # Approve [source, delegate, owner] / ApproveChecked [source, mint, delegate, owner]
            # Refused outright rather than counted: a delegation outlives the transaction, so the
            # delegate can take the approved amount in any later one, where no per-plan count sees it.
            delegate = self.account(index, accounts, 1 if tag == TokenInstruction.APPROVE else 2, name)
            if delegate not in self.own:
                raise PolicyViolation("token_delegate", index, f"{name} makes {delegate} a delegate of the wallet's tokens")
        elif tag == TokenInstruction.SET_AUTHORITY:  # [account, current authority]; data: type u8, COption<Pubkey>
            if len(data) < 3 or (data[2] == 1 and len(data) < 35):
                raise PolicyViolation("malformed", index, f"{name}: data too short")
            new = Pubkey.from_bytes(data[3:35]) if data[2] == 1 else None
            if new is None or new not in self.own:  # an owner change takes the whole balance: no cap could count it
                target = self.account(index, accounts, 0, name)
                raise PolicyViolation("token_authority", index, f"{name} gives authority over {target} to {new if new else 'nobody'}")
        elif tag == TokenInstruction.CLOSE_ACCOUNT:  # [account, destination, owner]
            # The account's lamports go to the destination, and a wSOL account's lamports are its
            # whole balance: unknown to a static check, so only the wallet may receive them.
            destination = self.account(index, accounts, 1, name)
            if destination not in self.own:
                raise PolicyViolation("token_close", index, f"{name} sends the lamports of {self.account(index, accounts, 0, name)} to {destination}")
        elif tag in (TokenInstruction.BURN, TokenInstruction.BURN_CHECKED):  # [account, mint, owner]
            raise PolicyViolation("token_burn", index, f"{name} destroys tokens of {self.account(index, accounts, 0, name)}")
        elif tag in (TokenInstruction.WITHDRAW_EXCESS_LAMPORTS, TokenInstruction.UNWRAP_LAMPORTS):  # [source, destination, authority]
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
        kind = data[0] if data else AssociatedTokenAccountInstruction.CREATE  # empty data: the original Create
        if kind in (AssociatedTokenAccountInstruction.CREATE, AssociatedTokenAccountInstruction.CREATE_IDEMPOTENT):
            # [funder, ata, owner, mint, system, token program]
            name = "ATA " + AssociatedTokenAccountInstruction(kind).label
            token_program = self.account(index, accounts, 5, name)
            if token_program not in TOKEN_PROGRAMS:
                raise PolicyViolation("ata_token_program", index, f"{name} names token program {token_program}, not SPL Token or Token-2022")
            owner = self.account(index, accounts, 2, name)
            if self.account(index, accounts, 0, name) == self.wallet and owner != self.wallet and owner not in self.settings.allowed_destinations:
                raise PolicyViolation("ata_owner", index, f"{name}: the wallet would pay the rent of a token account owned by {owner}")
        elif kind == AssociatedTokenAccountInstruction.RECOVER_NESTED:  # back into the wallet's own ATA [.., wallet, token program]
            token_program = self.account(index, accounts, 6, "ATA RecoverNested")
            if token_program not in TOKEN_PROGRAMS:
                raise PolicyViolation("ata_token_program", index, f"ATA RecoverNested names token program {token_program}")
        else:
            raise PolicyViolation("ata_instruction", index, f"ATA instruction {kind} is not allowed")

    def lookup_table(self, index: int, program: Pubkey, accounts: bytes, data: bytes) -> None:
        tag = _u32(data, 0) if len(data) >= 4 else None
        try:
            name = LookupTableInstruction(tag).label
        except ValueError:
            raise PolicyViolation("lookup_table", index, f"lookup table instruction {tag} is not allowed") from None
        if tag == LookupTableInstruction.CREATE_LOOKUP_TABLE:  # [table, authority, payer, system]
            authority = self.account(index, accounts, 1, name)
            if authority != self.wallet:
                raise PolicyViolation("lookup_table", index, f"{name}: the wallet would pay for a table controlled by {authority}")
        elif tag == LookupTableInstruction.CLOSE_LOOKUP_TABLE:  # [table, authority, recipient]
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
        if parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT:
            self.spend.compute_unit_limit, self.limit_index = parsed.value, index
        elif parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE:
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
