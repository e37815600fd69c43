"""Solana protocol facts, each once, with the agave / solana-sdk name it comes from.

Plain values and one parser, no project imports (but the venue's instruction vocabularies) and no solders: the executor's activities, its
operator tools, the benchmarks and the local cluster all import from here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .instructions import ComputeBudgetInstruction

# solana-native-token LAMPORTS_PER_SOL (solana_sdk::native_token).
LAMPORTS_PER_SOL = 1_000_000_000

# solana-packet PACKET_DATA_SIZE = 1280 - 40 - 8 (IPv6 minimum MTU less the IPv6 and UDP headers):
# the largest serialized transaction. RPC sendTransaction, the TPU's QUIC streams (a stream's
# receive window; handle_chunks in streamer/src/nonblocking/quic.rs) and Jito bundles all refuse
# a bigger one.
PACKET_DATA_SIZE = 1232

# solana-fee-structure FeeStructure::default().lamports_per_signature: the base fee per signature.
LAMPORTS_PER_SIGNATURE = 5_000

# agave compute-budget MAX_COMPUTE_UNIT_LIMIT: the most a transaction may request.
MAX_COMPUTE_UNITS = 1_400_000
# agave compute-budget DEFAULT_INSTRUCTION_COMPUTE_UNIT_LIMIT: the limit per (non-builtin)
# instruction when the transaction has no SetComputeUnitLimit.
DEFAULT_INSTRUCTION_COMPUTE_UNITS = 200_000

# solana-sdk-ids compute_budget::ID.
COMPUTE_BUDGET_PROGRAM_ID = "ComputeBudget111111111111111111111111111111"

# The compute-budget encoding (solana-compute-budget-interface, borsh): the u8 variant tag
# (`ComputeBudgetInstruction`, venue/instructions.py), then the variant's field little-endian
# (u32, or u64 for the price). The encoded length of each variant the runtime still accepts:
# the tag byte and its field. RequestUnitsDeprecated (0) is not here: the runtime refuses it.
COMPUTE_BUDGET_DATA_LENGTH = {
    ComputeBudgetInstruction.REQUEST_HEAP_FRAME: 5,
    ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT: 5,
    ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE: 9,
    ComputeBudgetInstruction.SET_LOADED_ACCOUNTS_DATA_SIZE_LIMIT: 5,
}


@dataclass(frozen=True)
class ComputeBudgetRequest:
    """One decoded compute-budget instruction: `value` is its field (bytes, units or micro-lamports).

    `exact` is False when the data carries bytes past the encoding: the runtime's borsh decoding
    ignores them, the executor's policy refuses them.
    """

    tag: ComputeBudgetInstruction
    name: str
    value: int
    exact: bool


# tag -> (variant, its name, encoded length): one lookup per instruction (the policy parses every one)
_VARIANTS = {int(variant): (variant, variant.label, length) for variant, length in COMPUTE_BUDGET_DATA_LENGTH.items()}


def parse_compute_budget(data: bytes) -> ComputeBudgetRequest | None:
    """The compute-budget instruction in `data`, or None for an unknown tag or data too short for it."""
    data = bytes(data)
    variant = _VARIANTS.get(data[0]) if data else None
    if variant is None:
        return None
    tag, name, length = variant
    if len(data) < length:
        return None
    return ComputeBudgetRequest(tag, name, int.from_bytes(data[1:length], "little"), len(data) == length)
