"""The plan policy's settings (`executor/policy/` checks a transaction against them).

A pydantic model declared like the other groups (`setting`: environment name, file key, unit,
doc), but read by its own `from_environment`, not by pydantic-settings' sources: the policy also
comes from a JSON file (POLICY_FILE) under which the variables lie, its program and destination
lists are added together (programs also to the defaults), and the environment speaks SOL where
the code and the rules speak lamports.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from solders.pubkey import Pubkey

from venue import COMPUTE_BUDGET_PROGRAM_ID, LAMPORTS_PER_SOL
from venue.jito import STATIC_TIP_ACCOUNTS
from venue.klend import KLEND_PROGRAM_ID
from venue.programs import ATA_PROGRAM, LOOKUP_TABLE_PROGRAM, MEMO_PROGRAM, MEMO_V1_PROGRAM, SYSTEM_PROGRAM, TOKEN_2022_PROGRAM, TOKEN_PROGRAM

from .base import SettingsError, flag, meta, setting

#: The programs a plan may call without POLICY_ALLOWED_PROGRAMS (executor/policy/ decodes each of them).
DEFAULT_PROGRAMS = frozenset(
    {
        SYSTEM_PROGRAM, Pubkey.from_string(COMPUTE_BUDGET_PROGRAM_ID), TOKEN_PROGRAM, TOKEN_2022_PROGRAM, ATA_PROGRAM, MEMO_PROGRAM, MEMO_V1_PROGRAM,
        KLEND_PROGRAM_ID, LOOKUP_TABLE_PROGRAM,
    }
)  # fmt: skip


# --- the grammars of the environment and the file: each raises ValueError(what the value must be) ----------


def _lamports_from_sol(value: object) -> int:
    try:
        sol = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("an amount of SOL (e.g. 0.02)") from None
    if not sol.is_finite() or sol < 0:
        raise ValueError("a non-negative amount of SOL")
    return int(sol * LAMPORTS_PER_SOL)


def _whole(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a non-negative integer")
    try:
        number = int(str(value).replace("_", ""))
    except ValueError:
        raise ValueError("a non-negative integer") from None
    if number < 0:
        raise ValueError("a non-negative integer")
    return number


def _pubkeys(values: object) -> frozenset[Pubkey]:
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise ValueError("a list of base58 public keys")
    keys = set()
    for item in items:
        if not item:
            continue
        try:
            keys.add(Pubkey.from_string(str(item)))
        except ValueError:
            raise ValueError(f"a list of base58 public keys; not one: {item!r}") from None
    return frozenset(keys)


def _mint_amounts(value: object) -> dict[Pubkey, int]:
    """Base units per mint: "MINT=AMOUNT,MINT=AMOUNT" (environment) or {"MINT": AMOUNT} (file)."""
    if isinstance(value, str):
        pairs = []
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            mint, sep, amount = item.partition("=")
            if not sep:
                raise ValueError(f"MINT=AMOUNT pairs separated by commas; not one: {item!r}")
            pairs.append((mint.strip(), amount.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ValueError("a map of mints to amounts in base units")
    caps = {}
    for mint, amount in pairs:
        try:
            key = Pubkey.from_string(str(mint))
        except ValueError:
            raise ValueError(f"a map of base58 mints to amounts; not a mint: {mint!r}") from None
        try:
            caps[key] = _whole(amount)
        except ValueError:
            raise ValueError(f"a map of mints to non-negative integers; {mint}: {amount!r}") from None
    return caps


class PolicySettings(BaseModel):
    """The rules' parameters. Defaults let every valid demo, bench (with its sink allowed) and
    flash-loan plan through, and stop every plan of the hostile corpus (tests/test_policy.py).
    Built in code, the amounts are lamports; read by `from_environment`, the SOL ones are SOL."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, populate_by_name=True)

    allowed_programs: frozenset[Pubkey] = setting(
        DEFAULT_PROGRAMS, "POLICY_ALLOWED_PROGRAMS", "more top-level programs, comma-separated (DEX programs)", file_key="allowedPrograms", shown_default="the 9 above"
    )
    allowed_destinations: frozenset[Pubkey] = setting(
        frozenset(), "POLICY_ALLOWED_DESTINATIONS",
        "accounts that may receive SOL (counted in `max_sol_per_plan`) or a closed lookup table's rent from the wallet (a treasury, bench's sink); "
        "never a delegation, a token account's authority or its lamports",
        file_key="allowedDestinations",
    )  # fmt: skip
    tip_accounts: frozenset[Pubkey] = setting(
        frozenset(Pubkey.from_string(a) for a in STATIC_TIP_ACCOUNTS), "POLICY_TIP_ACCOUNTS", "replaces the list (another cluster's block engine); may not be empty",
        file_key="tipAccounts", shown_default="Jito's 8 mainnet tip accounts",
    )  # fmt: skip
    max_tip_lamports: int = setting(10_000_000, "POLICY_MAX_TIP_LAMPORTS", "the sum of a plan's tips at most (0.01 SOL)", unit="lamports", file_key="maxTipLamports")
    max_cu_price: int = setting(2_000_000, "POLICY_MAX_CU_PRICE", "`PRIORITY_FEE_CEILING`'s default: raise both together", unit="micro-lamports/CU", file_key="maxCuPrice")
    max_priority_fee_lamports: int = setting(
        3_000_000, "POLICY_MAX_PRIORITY_FEE_LAMPORTS", "above 1.4M CU x 2M micro-lamports, so by default the price cap binds first", unit="lamports", file_key="maxPriorityFeeLamports"
    )
    max_plan_lamports: int = setting(
        20_000_000, "POLICY_MAX_SOL_PER_PLAN", "fee + tip + allowed outflow of one transaction", unit="SOL (lamports in code)", file_key="maxSolPerPlan", shown_default="`0.02`"
    )
    max_wallet_minute_lamports: int = setting(
        500_000_000, "POLICY_MAX_SOL_PER_WALLET_MINUTE", "spent per wallet over any 60 s, all workers together", unit="SOL (lamports in code)", file_key="maxSolPerWalletMinute",
        shown_default="`0.5`",
    )  # fmt: skip
    simulate: bool = setting(False, "POLICY_SIMULATE", "`1`: also simulate ([architecture.md section 10](architecture.md#10-plan-policy))", file_key="simulate")
    simulate_max_sol_loss_lamports: int | None = setting(
        None, "POLICY_SIMULATE_MAX_SOL_LOSS", "on top of `POLICY_MAX_OUTFLOW` of the native mint", unit="SOL (lamports in code)", file_key="simulateMaxSolLoss",
        shown_default="`POLICY_MAX_SOL_PER_PLAN`",
    )  # fmt: skip
    # Base units of each mint (lamports for SOL and wSOL, one mint: NATIVE_MINT) a plan may send out
    # of the wallet beyond its declared inputAmount of its inputToken; also what the simulation lets
    # the wallet lose of that mint (never the plan's word: a plan could declare what it drains).
    max_outflow: Mapping[Pubkey, int] = setting(
        {}, "POLICY_MAX_OUTFLOW",
        "base units of each mint (lamports for SOL/wSOL) a plan may send out of the wallet beyond its declared `inputAmount` of its `inputToken` "
        "(rule `token_outflow`), and the simulation's allowed loss of that mint; `MINT=AMOUNT,MINT=AMOUNT` in the environment, `{\"MINT\": AMOUNT}` "
        "in the file (the variable replaces the file's map)",
        unit="base units", file_key="maxOutflow", shown_default="none (0 for every mint)",
    )  # fmt: skip
    simulate_max_token_loss: int = setting(
        0, "POLICY_SIMULATE_MAX_TOKEN_LOSS", "per mint, on top of `POLICY_MAX_OUTFLOW` of that mint (never the plan's `inputAmount`: a plan could declare what it drains)",
        unit="base units", file_key="simulateMaxTokenLoss",
    )  # fmt: skip
    source: str = "defaults"  # where the settings came from, for the start-up log line

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> PolicySettings:
        """POLICY_FILE (JSON) first, then POLICY_* variables: a variable wins over the file, and the
        programs and destinations of both are added together. A bad value raises SettingsError, naming it."""
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
                values[name] = _parsed(parse, env[variable], variable)
                sources.append(variable)
            elif key in given:
                values[name] = _parsed(parse, given[key], f"{path}: {key}")
        for name, (variable, key) in _LISTS.items():
            keys = _parsed(_pubkeys, given.get(key, []), f"{path}: {key}") | _parsed(_pubkeys, env.get(variable, ""), variable)
            if env.get(variable):
                sources.append(variable)
            values[name] = (DEFAULT_PROGRAMS | keys) if name == "allowed_programs" else keys
        variable, key = _TIP_ACCOUNTS
        tips = _parsed(_pubkeys, env[variable], variable) if env.get(variable) else _parsed(_pubkeys, given[key], f"{path}: {key}") if key in given else None
        if tips is not None:
            if not tips:
                raise SettingsError(f"{variable}: the tip account list may not be empty")
            values["tip_accounts"] = tips
            sources.append(variable if env.get(variable) else f"{path}: {key}")
        return cls(**values, source=", ".join(sources) or "defaults")

    def allowing(self, destinations=(), programs=()) -> PolicySettings:
        """These settings with more allowed destinations or programs (bench's sink, a test's DEX)."""
        return self.model_copy(
            update={
                "allowed_destinations": self.allowed_destinations | {Pubkey.from_string(str(d)) for d in destinations},
                "allowed_programs": self.allowed_programs | {Pubkey.from_string(str(p)) for p in programs},
            }
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


def _declared(name: str) -> tuple[str, str]:
    info = meta(PolicySettings.model_fields[name])
    return info["env"], info["file_key"]


# setting name -> (environment variable, key in the policy file, parser), from the declarations
_PARSERS: dict[str, Callable[[object], object]] = {
    "max_tip_lamports": _whole, "max_cu_price": _whole, "max_priority_fee_lamports": _whole, "max_plan_lamports": _lamports_from_sol,
    "max_wallet_minute_lamports": _lamports_from_sol, "simulate": flag, "simulate_max_sol_loss_lamports": _lamports_from_sol,
    "simulate_max_token_loss": _whole, "max_outflow": _mint_amounts,
}  # fmt: skip
_SCALARS = {name: (*_declared(name), parse) for name, parse in _PARSERS.items()}
_LISTS = {name: _declared(name) for name in ("allowed_programs", "allowed_destinations")}  # extend the defaults (programs) or start empty (destinations)
_TIP_ACCOUNTS = _declared("tip_accounts")  # replaces Jito's published mainnet list
FILE_KEYS = {key for _, key, _ in _SCALARS.values()} | {key for _, key in _LISTS.values()} | {_TIP_ACCOUNTS[1]}


def _parsed(parse: Callable[[object], object], value: object, name: str):
    try:
        return parse(value)
    except ValueError as error:
        raise SettingsError(f"{name} must be {error}, got {value!r}") from None


def _read_policy_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise SettingsError(f"POLICY_FILE {path}: cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise SettingsError(f"POLICY_FILE {path}: not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"POLICY_FILE {path}: must hold one JSON object")
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise SettingsError(f"POLICY_FILE {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(FILE_KEYS))}")
    return data


#: Read before the variables (`from_environment`); declared here for the docs and the typo check.
POLICY_FILE = ("POLICY_FILE", "path of a JSON object with the keys below")
