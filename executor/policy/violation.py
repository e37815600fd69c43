"""A broken rule: the policy's one error, and the rules' names as violation messages, logs and
docs/operations.md give them."""
from __future__ import annotations

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
