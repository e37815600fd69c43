"""The instruction vocabularies of the programs a plan's transaction may call, by name.

Each program picks an instruction by a leading variant index (its discriminant); these enums
name those numbers, as solana-py's `InstructionType` does (solana/_layouts/system_instructions.py,
spl/token/_layouts.py), so a rule reads `TokenInstruction.CLOSE_ACCOUNT`, not `9`. The values are
the on-chain discriminants, each enum beside the source it is copied from; tests/test_venue.py
holds them against solders' and spl's encoders. Plain `IntEnum`s (no solders): a member is the
number, so it compares, hashes and packs as one, and the local cluster can use them too.

`label` is the Rust variant's name (`TransferChecked`), as the policy's refusals and logs print it.
"""
from __future__ import annotations

from enum import IntEnum


class _Vocabulary(IntEnum):
    @property
    def label(self) -> str:
        """The Rust variant's name: INITIALIZE_ACCOUNT2 -> InitializeAccount2."""
        return _LABELS[type(self), self._value_]

    @classmethod
    def label_of(cls, value: object) -> str:
        """The label of `value`, or "instruction <value>" when the program has no such variant.
        One dict lookup: the policy names every instruction it reads, on the hot path."""
        return _LABELS.get((cls, value)) or f"instruction {value}"


class SystemInstruction(_Vocabulary):
    """System program: bincode, a u32 little-endian variant index first.

    solana-system-interface src/instruction.rs `SystemInstruction` (formerly solana-program
    system_instruction.rs). Newer variants (13, CreateAccountAllowPrefund) are left out on purpose:
    the policy names an instruction it does not know by its number.
    """

    CREATE_ACCOUNT = 0
    ASSIGN = 1
    TRANSFER = 2
    CREATE_ACCOUNT_WITH_SEED = 3
    ADVANCE_NONCE_ACCOUNT = 4
    WITHDRAW_NONCE_ACCOUNT = 5
    INITIALIZE_NONCE_ACCOUNT = 6
    AUTHORIZE_NONCE_ACCOUNT = 7
    ALLOCATE = 8
    ALLOCATE_WITH_SEED = 9
    ASSIGN_WITH_SEED = 10
    TRANSFER_WITH_SEED = 11
    UPGRADE_NONCE_ACCOUNT = 12


class TokenInstruction(_Vocabulary):
    """SPL Token and Token-2022: a u8 tag first.

    0-24 are SPL Token's: solana-program/token program/src/instruction.rs `TokenInstruction`.
    Token-2022 keeps those, with the same layouts, and adds 25-45: solana-program/token-2022
    program/src/instruction.rs `TokenInstruction`. 255 is p-token's Batch (solana-program/token
    p-token). One enum for both, as the programs share the numbering; which program accepts a tag
    is the caller's rule (the policy's TOKEN_2022_PLAIN).
    """

    INITIALIZE_MINT = 0
    INITIALIZE_ACCOUNT = 1
    INITIALIZE_MULTISIG = 2
    TRANSFER = 3
    APPROVE = 4
    REVOKE = 5
    SET_AUTHORITY = 6
    MINT_TO = 7
    BURN = 8
    CLOSE_ACCOUNT = 9
    FREEZE_ACCOUNT = 10
    THAW_ACCOUNT = 11
    TRANSFER_CHECKED = 12
    APPROVE_CHECKED = 13
    MINT_TO_CHECKED = 14
    BURN_CHECKED = 15
    INITIALIZE_ACCOUNT2 = 16
    SYNC_NATIVE = 17
    INITIALIZE_ACCOUNT3 = 18
    INITIALIZE_MULTISIG2 = 19
    INITIALIZE_MINT2 = 20
    GET_ACCOUNT_DATA_SIZE = 21
    INITIALIZE_IMMUTABLE_OWNER = 22
    AMOUNT_TO_UI_AMOUNT = 23
    UI_AMOUNT_TO_AMOUNT = 24
    # Token-2022 only
    INITIALIZE_MINT_CLOSE_AUTHORITY = 25
    TRANSFER_FEE_EXTENSION = 26
    CONFIDENTIAL_TRANSFER_EXTENSION = 27
    DEFAULT_ACCOUNT_STATE_EXTENSION = 28
    REALLOCATE = 29
    MEMO_TRANSFER_EXTENSION = 30
    CREATE_NATIVE_MINT = 31
    INITIALIZE_NON_TRANSFERABLE_MINT = 32
    INTEREST_BEARING_MINT_EXTENSION = 33
    CPI_GUARD_EXTENSION = 34
    INITIALIZE_PERMANENT_DELEGATE = 35
    TRANSFER_HOOK_EXTENSION = 36
    CONFIDENTIAL_TRANSFER_FEE_EXTENSION = 37
    WITHDRAW_EXCESS_LAMPORTS = 38
    METADATA_POINTER_EXTENSION = 39
    GROUP_POINTER_EXTENSION = 40
    GROUP_MEMBER_POINTER_EXTENSION = 41
    CONFIDENTIAL_MINT_BURN_EXTENSION = 42
    SCALED_UI_AMOUNT_EXTENSION = 43
    PAUSABLE_EXTENSION = 44
    UNWRAP_LAMPORTS = 45
    # p-token
    BATCH = 255


class TransferFeeInstruction(_Vocabulary):
    """Token-2022's TransferFeeExtension sub-instructions: a second u8 after tag 26.

    solana-program/token-2022 program/src/extension/transfer_fee/instruction.rs `TransferFeeInstruction`.
    """

    INITIALIZE_TRANSFER_FEE_CONFIG = 0
    TRANSFER_CHECKED_WITH_FEE = 1
    WITHDRAW_WITHHELD_TOKENS_FROM_MINT = 2
    WITHDRAW_WITHHELD_TOKENS_FROM_ACCOUNTS = 3
    HARVEST_WITHHELD_TOKENS_TO_MINT = 4
    SET_TRANSFER_FEE = 5


class AssociatedTokenAccountInstruction(_Vocabulary):
    """Associated Token Account program: a borsh u8 tag; empty data is Create (the program's
    original form, still accepted).

    solana-program/associated-token-account interface/src/instruction.rs
    `AssociatedTokenAccountInstruction`; program/src/processor.rs reads empty input as Create.
    """

    CREATE = 0
    CREATE_IDEMPOTENT = 1
    RECOVER_NESTED = 2


class LookupTableInstruction(_Vocabulary):
    """Address Lookup Table program: bincode, a u32 little-endian variant index first.

    solana-address-lookup-table-interface src/instruction.rs `ProgramInstruction`.
    """

    CREATE_LOOKUP_TABLE = 0
    FREEZE_LOOKUP_TABLE = 1
    EXTEND_LOOKUP_TABLE = 2
    DEACTIVATE_LOOKUP_TABLE = 3
    CLOSE_LOOKUP_TABLE = 4


class ComputeBudgetInstruction(_Vocabulary):
    """Compute Budget program: borsh, a u8 variant tag, then the variant's field little-endian
    (u32, or u64 for the price).

    solana-compute-budget-interface src/lib.rs `ComputeBudgetInstruction`. Tag 0 is the deprecated
    RequestUnitsDeprecated (now `Unused`), which the runtime no longer accepts, nor does
    `venue.protocol.parse_compute_budget`.
    """

    REQUEST_UNITS_DEPRECATED = 0
    REQUEST_HEAP_FRAME = 1
    SET_COMPUTE_UNIT_LIMIT = 2
    SET_COMPUTE_UNIT_PRICE = 3
    SET_LOADED_ACCOUNTS_DATA_SIZE_LIMIT = 4


# (vocabulary, value) -> label, computed once
_LABELS: dict[tuple[type, object], str] = {
    (vocabulary, member.value): member.name.title().replace("_", "")
    for vocabulary in _Vocabulary.__subclasses__()
    for member in vocabulary
}
