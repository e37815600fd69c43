"""Plan policy: what a built transaction may do with a hot wallet, checked before it is signed.

The worker signs whatever a plan's routes say, so anyone who can publish a plan could move
the wallet's funds. The policy stands between the builder and the signer, in the one place
every execution passes through (`Dispatch._prepare`: after build, before sign): a plan that
breaks it ends POLICY_VIOLATION, nothing signed, recorded or sent.

One job per module:

- `check`: `PlanPolicy`, the check `Dispatch` runs (and `inspect-plan` reports), and `open_policy`;
- `rules`: the static rules on the compiled message (the rule list is its docstring);
- `ledger`: `SpendLedger`, the per-wallet, per-minute spend shared by every worker on NATS KV;
- `simulation`: POLICY_SIMULATE, the unsigned transaction simulated and the wallet's losses capped;
- `programs`: the programs the rules decode, by name; `violation`: `PolicyViolation` and the rules' names.

The rules' parameters, `PolicySettings`, are declared with every other setting (settings/policy.py);
the instruction vocabularies the rules read are the venue's (venue/instructions.py).
"""
from settings.policy import DEFAULT_PROGRAMS, FILE_KEYS, PolicySettings

from .check import PlanPolicy, declared_outflows, open_policy
from .ledger import SPEND_BUCKET, SPEND_PREFIX, SpendLedger
from .programs import COMPUTE_BUDGET_PROGRAM, PROGRAM_NAMES, TOKEN_PROGRAMS
from .rules import SYSTEM_REFUSED_WHY, TOKEN_2022_PLAIN, TOKEN_PLAIN, Examined, Spend, message_keys, writable_keys
from .simulation import TOKEN_ACCOUNT_SIZE, balance_losses, simulate
from .violation import RULES, PolicyViolation

__all__ = [
    "COMPUTE_BUDGET_PROGRAM",
    "DEFAULT_PROGRAMS",
    "FILE_KEYS",
    "PROGRAM_NAMES",
    "RULES",
    "SPEND_BUCKET",
    "SPEND_PREFIX",
    "SYSTEM_REFUSED_WHY",
    "TOKEN_2022_PLAIN",
    "TOKEN_ACCOUNT_SIZE",
    "TOKEN_PLAIN",
    "TOKEN_PROGRAMS",
    "Examined",
    "PlanPolicy",
    "PolicySettings",
    "PolicyViolation",
    "Spend",
    "SpendLedger",
    "balance_losses",
    "declared_outflows",
    "message_keys",
    "open_policy",
    "simulate",
    "writable_keys",
]
