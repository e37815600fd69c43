"""The programs a plan's transaction may call at top level by default (rule `program`), and their
names as violation messages print them. POLICY_ALLOWED_PROGRAMS adds to DEFAULT_PROGRAMS."""
from __future__ import annotations

from solders.pubkey import Pubkey

from venue import COMPUTE_BUDGET_PROGRAM_ID, klend
from venue.programs import (
    ATA_PROGRAM,
    LOOKUP_TABLE_PROGRAM,
    MEMO_PROGRAM,
    MEMO_V1_PROGRAM,
    SYSTEM_PROGRAM,
    TOKEN_2022_PROGRAM,
    TOKEN_PROGRAM,
)

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

