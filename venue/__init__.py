"""The venue: the Solana chain the executor trades on, its rules and the clients that speak its wire.

Named as a desk names it: the execution venue is where orders land, for this executor one chain,
Solana. This package holds what is the venue's rather than the executor's: the protocol's facts
(`protocol`: sizes, fees, the compute-budget encoding), the programs' instruction vocabularies
(`instructions`: named enums of their discriminants), the product's one JSON-RPC client (`rpc`), the Jito
block-engine client (`jito`), TPU over QUIC (`tpu`: leaders, connections, sender), the blockhash
and lookup-table caches (`chain`), priority fees (`fees`) and the Kamino lending program's
layouts (`klend`). It imports nothing else of the project, so the product (executor, worker,
bench) and the local cluster (localnet) both use it without importing each other. The
programs a transaction may touch and the token-account derivation are `programs`. The
transaction builder is executor/build.py: it turns a plan (the wire model) into
instructions, and venue knows no plan.
"""
from .instructions import ComputeBudgetInstruction
from .protocol import (
    COMPUTE_BUDGET_DATA_LENGTH,
    COMPUTE_BUDGET_PROGRAM_ID,
    DEFAULT_INSTRUCTION_COMPUTE_UNITS,
    LAMPORTS_PER_SIGNATURE,
    LAMPORTS_PER_SOL,
    MAX_COMPUTE_UNITS,
    PACKET_DATA_SIZE,
    ComputeBudgetRequest,
    parse_compute_budget,
)

__all__ = [
    "COMPUTE_BUDGET_DATA_LENGTH",
    "COMPUTE_BUDGET_PROGRAM_ID",
    "DEFAULT_INSTRUCTION_COMPUTE_UNITS",
    "LAMPORTS_PER_SIGNATURE",
    "LAMPORTS_PER_SOL",
    "MAX_COMPUTE_UNITS",
    "PACKET_DATA_SIZE",
    "ComputeBudgetInstruction",
    "ComputeBudgetRequest",
    "parse_compute_budget",
]
