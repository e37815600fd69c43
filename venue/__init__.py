"""The venue: the Solana chain the executor trades on, and what it fixes.

Named as a desk names it: the execution venue is where orders land, for this executor one chain,
Solana. Whatever is the venue's rule rather than the executor's choice belongs in this package:
today the protocol's facts (`venue.protocol`: sizes, fees, compute-budget encoding); later the code
that speaks the venue's wire (RPC, TPU, Jito, the lending program's layouts) can move in beside
them without another rename. Not `chain`: activities/chain.py (blockhash and lookup-table caches)
already has that name. It imports nothing of the project, so the product (activities, worker,
bench) and the local cluster (localnet) both import it without importing each other.
"""
from .protocol import (
    COMPUTE_BUDGET_DATA_LENGTH,
    COMPUTE_BUDGET_INSTRUCTIONS,
    COMPUTE_BUDGET_PROGRAM_ID,
    DEFAULT_INSTRUCTION_COMPUTE_UNITS,
    LAMPORTS_PER_SIGNATURE,
    LAMPORTS_PER_SOL,
    MAX_COMPUTE_UNITS,
    PACKET_DATA_SIZE,
    SET_COMPUTE_UNIT_LIMIT,
    SET_COMPUTE_UNIT_PRICE,
    ComputeBudgetInstruction,
    parse_compute_budget,
)

__all__ = [
    "COMPUTE_BUDGET_DATA_LENGTH",
    "COMPUTE_BUDGET_INSTRUCTIONS",
    "COMPUTE_BUDGET_PROGRAM_ID",
    "DEFAULT_INSTRUCTION_COMPUTE_UNITS",
    "LAMPORTS_PER_SIGNATURE",
    "LAMPORTS_PER_SOL",
    "MAX_COMPUTE_UNITS",
    "PACKET_DATA_SIZE",
    "SET_COMPUTE_UNIT_LIMIT",
    "SET_COMPUTE_UNIT_PRICE",
    "ComputeBudgetInstruction",
    "parse_compute_budget",
]
