"""The policy's settings: PolicySettings, read from POLICY_FILE (JSON) and POLICY_* variables
(docs/operations.md "Plan policy")."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from solders.pubkey import Pubkey

from venue import LAMPORTS_PER_SOL
from venue.jito import STATIC_TIP_ACCOUNTS

from .programs import DEFAULT_PROGRAMS


def _lamports_from_sol(value: object, name: str) -> int:
    try:
        sol = Decimal(str(value))
    except InvalidOperation:
        raise SystemExit(f"{name} must be an amount of SOL (e.g. 0.02), got {value!r}") from None
    if not sol.is_finite() or sol < 0:
        raise SystemExit(f"{name} must be a non-negative amount of SOL, got {value!r}")
    return int(sol * LAMPORTS_PER_SOL)


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}")
    try:
        number = int(str(value).replace("_", ""))
    except ValueError:
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}")
    return number


def _pubkeys(values: object, name: str) -> frozenset[Pubkey]:
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise SystemExit(f"{name} must be a list of base58 public keys, got {values!r}")
    keys = set()
    for item in items:
        if not item:
            continue
        try:
            keys.add(Pubkey.from_string(str(item)))
        except ValueError:
            raise SystemExit(f"{name}: not a base58 public key: {item!r}") from None
    return frozenset(keys)


def _mint_amounts(value: object, name: str) -> dict[Pubkey, int]:
    """Base units per mint: "MINT=AMOUNT,MINT=AMOUNT" (environment) or {"MINT": AMOUNT} (file)."""
    if isinstance(value, str):
        pairs = []
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            mint, sep, amount = item.partition("=")
            if not sep:
                raise SystemExit(f"{name} must be MINT=AMOUNT pairs separated by commas, got {item!r}")
            pairs.append((mint.strip(), amount.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise SystemExit(f"{name} must map mints to amounts in base units, got {value!r}")
    caps = {}
    for mint, amount in pairs:
        try:
            key = Pubkey.from_string(str(mint))
        except ValueError:
            raise SystemExit(f"{name}: not a base58 mint: {mint!r}") from None
        caps[key] = _whole(amount, f"{name}: {mint}")
    return caps


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SystemExit(f"{name} must be 1/true or 0/false, got {value!r}")


# setting name -> (environment variable, key in the policy file, parser)
_SCALARS = {
    "max_tip_lamports": ("POLICY_MAX_TIP_LAMPORTS", "maxTipLamports", _whole),
    "max_cu_price": ("POLICY_MAX_CU_PRICE", "maxCuPrice", _whole),
    "max_priority_fee_lamports": ("POLICY_MAX_PRIORITY_FEE_LAMPORTS", "maxPriorityFeeLamports", _whole),
    "max_plan_lamports": ("POLICY_MAX_SOL_PER_PLAN", "maxSolPerPlan", _lamports_from_sol),
    "max_wallet_minute_lamports": ("POLICY_MAX_SOL_PER_WALLET_MINUTE", "maxSolPerWalletMinute", _lamports_from_sol),
    "simulate": ("POLICY_SIMULATE", "simulate", _flag),
    "simulate_max_sol_loss_lamports": ("POLICY_SIMULATE_MAX_SOL_LOSS", "simulateMaxSolLoss", _lamports_from_sol),
    "simulate_max_token_loss": ("POLICY_SIMULATE_MAX_TOKEN_LOSS", "simulateMaxTokenLoss", _whole),
    "max_outflow": ("POLICY_MAX_OUTFLOW", "maxOutflow", _mint_amounts),
}
_LISTS = {  # extend the defaults (programs) or start empty (destinations)
    "allowed_programs": ("POLICY_ALLOWED_PROGRAMS", "allowedPrograms"),
    "allowed_destinations": ("POLICY_ALLOWED_DESTINATIONS", "allowedDestinations"),
}
_TIP_ACCOUNTS = ("POLICY_TIP_ACCOUNTS", "tipAccounts")  # replaces Jito's published mainnet list
FILE_KEYS = {key for _, key, _ in _SCALARS.values()} | {key for _, key in _LISTS.values()} | {_TIP_ACCOUNTS[1]}


@dataclass(frozen=True)
class PolicySettings:
    """The rules' parameters. Defaults let every valid demo, bench (with its sink allowed) and
    flash-loan plan through, and stop every plan of the hostile corpus (tests/test_policy.py)."""

    allowed_programs: frozenset[Pubkey] = DEFAULT_PROGRAMS
    allowed_destinations: frozenset[Pubkey] = frozenset()  # may receive SOL (counted), a lookup table's rent, an ATA the wallet pays for; never tokens, a delegation or an authority
    tip_accounts: frozenset[Pubkey] = frozenset(Pubkey.from_string(a) for a in STATIC_TIP_ACCOUNTS)
    max_tip_lamports: int = 10_000_000  # 0.01 SOL
    max_cu_price: int = 2_000_000  # micro-lamports per CU: PRIORITY_FEE_CEILING's default
    max_priority_fee_lamports: int = 3_000_000  # above 1.4M CU x 2M micro-lamports: the CU price cap binds first by default
    max_plan_lamports: int = 20_000_000  # 0.02 SOL: fee + tip + allowed outflow of one transaction
    max_wallet_minute_lamports: int = 500_000_000  # 0.5 SOL per wallet over any 60 s, all workers together
    simulate: bool = False
    simulate_max_sol_loss_lamports: int | None = None  # None: max_plan_lamports
    simulate_max_token_loss: int = 0  # base units, per mint, beyond max_outflow of that mint
    # Base units of each mint (lamports for SOL and wSOL, one mint: NATIVE_MINT) a plan may send out
    # of the wallet beyond its declared inputAmount of its inputToken; also what the simulation lets
    # the wallet lose of that mint (never the plan's word: a plan could declare what it drains).
    max_outflow: Mapping[Pubkey, int] = field(default_factory=dict)
    source: str = "defaults"  # where the settings came from, for the start-up log line

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> PolicySettings:
        """POLICY_FILE (JSON) first, then POLICY_* variables: a variable wins over the file, and the
        programs and destinations of both are added together. A bad value stops the process, naming it."""
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
                values[name] = parse(env[variable], variable)
                sources.append(variable)
            elif key in given:
                values[name] = parse(given[key], f"{path}: {key}")
        for name, (variable, key) in _LISTS.items():
            keys = _pubkeys(given.get(key, []), f"{path}: {key}") | _pubkeys(env.get(variable, ""), variable)
            if env.get(variable):
                sources.append(variable)
            values[name] = (DEFAULT_PROGRAMS | keys) if name == "allowed_programs" else keys
        variable, key = _TIP_ACCOUNTS
        tips = _pubkeys(env[variable], variable) if env.get(variable) else _pubkeys(given[key], f"{path}: {key}") if key in given else None
        if tips is not None:
            if not tips:
                raise SystemExit(f"{variable}: the tip account list may not be empty")
            values["tip_accounts"] = tips
            sources.append(variable if env.get(variable) else f"{path}: {key}")
        return cls(**values, source=", ".join(sources) or "defaults")

    def allowing(self, destinations=(), programs=()) -> PolicySettings:
        """These settings with more allowed destinations or programs (bench's sink, a test's DEX)."""
        return replace(
            self,
            allowed_destinations=self.allowed_destinations | {Pubkey.from_string(str(d)) for d in destinations},
            allowed_programs=self.allowed_programs | {Pubkey.from_string(str(p)) for p in programs},
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


def _read_policy_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise SystemExit(f"POLICY_FILE {path}: cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise SystemExit(f"POLICY_FILE {path}: not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"POLICY_FILE {path}: must hold one JSON object")
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise SystemExit(f"POLICY_FILE {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(FILE_KEYS))}")
    return data
