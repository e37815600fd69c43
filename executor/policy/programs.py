"""The programs the rules decode, and their names as violation messages print them. Which programs a
plan may call at top level (rule `program`) is DEFAULT_PROGRAMS, declared with the policy's settings
(settings/policy.py), plus POLICY_ALLOWED_PROGRAMS."""
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

