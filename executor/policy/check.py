"""The check `Dispatch` runs between build and sign: `PlanPolicy` decodes the built message, resolves
its lookup tables and klend reserves from the builder's caches, runs the static rules (`rules`),
counts the spend against the wallet's per-minute cap (`ledger`) and, when configured, simulates
(`simulation`). A violation fails the plan POLICY_VIOLATION: nothing signed, recorded or sent."""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping

from solders.message import MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey

from settings.policy import PolicySettings
from venue import klend
from venue.programs import NATIVE_MINT, associated_token_address
from workflows.events import ErrorCode, ExecutionPlanEvent

from ..build import BuiltTransaction
from ..errors import fail
from .ledger import SpendLedger
from .programs import TOKEN_PROGRAMS
from .rules import Examined, Spend, _MessageCheck, message_keys
from .simulation import simulate
from .violation import PolicyViolation

log = logging.getLogger("hft.policy")


def declared_outflows(plan: ExecutionPlanEvent) -> dict[Pubkey, int]:
    """What the plan says may leave the wallet, by mint: its inputAmount of its inputToken (a swap
    pays its input into a pool). Its outputToken is named with 0, so a plain Transfer into the
    wallet's account of it can be told. A flash loan adds nothing: the borrowed amount is paid back
    out of the same account, so spending it spends the wallet's own until the repay (klend's, its
    accounts checked against the reserve on chain, done inside klend: no top-level transfer)."""
    declared = {Pubkey.from_string(plan.output_token): 0}
    mint = Pubkey.from_string(plan.input_token)
    declared[mint] = declared.get(mint, 0) + plan.input_amount
    return declared


class PlanPolicy:
    """The checks `Dispatch` runs between build and sign (and `inspect-plan` reports)."""

    def __init__(self, settings: PolicySettings, *, lookup_tables=None, reserves=None, spend: SpendLedger | None = None, rpc=None) -> None:
        self.settings = settings
        self.lookup_tables = lookup_tables  # the builder's LookupTableCache (or None: a table is a violation)
        self.reserves = reserves  # the builder's klend ReserveCache
        self.spend = spend if spend is not None else SpendLedger()
        self.rpc = rpc  # SolanaRpc, for POLICY_SIMULATE
        self._tables: dict[Pubkey, tuple[Pubkey, ...]] = {}  # table entries never change once written, so a copy stays true
        self._own: dict[Pubkey, frozenset[Pubkey]] = {}
        self._token_accounts: dict[tuple[Pubkey, Pubkey, Pubkey], Pubkey] = {}
        self._market_authorities: dict[Pubkey, Pubkey] = {}

    # cached derivations (each costs a curve check: tens of microseconds)

    def own_accounts(self, wallet: Pubkey) -> frozenset[Pubkey]:
        own = self._own.get(wallet)
        if own is None:
            own = self._own[wallet] = frozenset({wallet} | {self.token_account_of(wallet, NATIVE_MINT, p) for p in TOKEN_PROGRAMS})
        return own

    def token_account_of(self, wallet: Pubkey, mint: Pubkey, program: Pubkey) -> Pubkey:
        key = (wallet, mint, program)
        account = self._token_accounts.get(key)
        if account is None:
            account = self._token_accounts[key] = associated_token_address(wallet, mint, program)
        return account

    def market_authority(self, market: Pubkey) -> Pubkey:
        authority = self._market_authorities.get(market)
        if authority is None:
            authority = self._market_authorities[market] = klend.lending_market_authority(market)
        return authority

    async def _table_entries(self, message: MessageV0) -> dict[Pubkey, tuple[Pubkey, ...]]:
        tables = {}
        for lookup in message.address_table_lookups:
            needed = max(bytes(lookup.writable_indexes) + bytes(lookup.readonly_indexes), default=-1) + 1
            entries = self._tables.get(lookup.account_key)
            if entries is None or len(entries) < needed:  # unknown, or grown since it was copied
                if self.lookup_tables is None:
                    raise PolicyViolation("malformed", None, f"lookup table {lookup.account_key} cannot be read")
                (table,) = await self.lookup_tables.get([lookup.account_key])
                entries = self._tables[lookup.account_key] = tuple(table.addresses)
            tables[lookup.account_key] = entries
        return tables

    async def _klend_reserves(self, message: MessageV0, keys: list[Pubkey]) -> dict[Pubkey, klend.ReserveInfo | str]:
        """The reserve of every klend instruction, as read from chain (cached by the builder's
        ReserveCache): a plan may carry reserve data, and it is the plan that is not trusted."""
        found: dict[Pubkey, klend.ReserveInfo | str] = {}
        for ix in message.instructions:
            if ix.program_id_index < len(keys) and keys[ix.program_id_index] == klend.KLEND_PROGRAM_ID and len(bytes(ix.accounts)) > 3:
                position = bytes(ix.accounts)[3]
                if position >= len(keys) or keys[position] in found:
                    continue
                reserve = keys[position]
                if self.reserves is None:
                    found[reserve] = f"reserve {reserve} cannot be read from chain here"
                    continue
                try:
                    found[reserve] = await self.reserves.get(reserve)
                except klend.ReserveInvalid as invalid:  # an RPC failure is transient: raised, retried
                    found[reserve] = f"reserve {reserve} is not a klend reserve on chain: {invalid}"
        return found

    async def examine(self, wallet: str, message: MessageV0, tip_account: str | None = None, declared: Mapping[Pubkey, int] | None = None) -> Examined:
        """The static rules on a compiled message; raises PolicyViolation. No state is changed.
        `declared`: what the plan says may leave the wallet, by mint (`declared_outflows`); None: nothing."""
        wallet_key = Pubkey.from_string(wallet)
        tables = await self._table_entries(message) if message.address_table_lookups else {}
        keys = message_keys(message, tables)
        reserves = await self._klend_reserves(message, keys) if klend.KLEND_PROGRAM_ID in keys else {}
        check = _MessageCheck(
            self.settings, wallet_key, self.own_accounts(wallet_key), keys,
            builder_tip_account=Pubkey.from_string(tip_account) if tip_account else None,
            reserves=reserves, token_account_of=self.token_account_of, market_authority=self.market_authority, declared=declared,
        )  # fmt: skip
        return Examined(check.run(message), message, keys)

    async def check(self, plan: ExecutionPlanEvent, wallet: str, built: BuiltTransaction) -> Spend:
        """Between build and sign: pass (the spend is counted for the wallet) or fail the plan
        POLICY_VIOLATION, non-retryable. Logged with the plan id and stage=policy either way."""
        started = time.perf_counter()
        counted: tuple[int, int] | None = None
        try:
            message = from_bytes_versioned(base64.b64decode(built.message))
            examined = await self.examine(wallet, message, built.tip_account, declared_outflows(plan))
            spend = examined.spend
            # Checked and counted with no await in between: two plans of this process cannot both slip under the cap.
            spent = self.spend.total(wallet)
            if spent + spend.total > self.settings.max_wallet_minute_lamports:
                raise PolicyViolation(
                    "max_sol_per_wallet_minute", None,
                    f"wallet {wallet} spent {spent} lamports over the last {self.spend.window_s:g} s; this plan's {spend.total} would pass the cap {self.settings.max_wallet_minute_lamports}",
                )  # fmt: skip
            counted = (spend.total, self.spend.add(wallet, spend.total))
            if self.settings.simulate:
                await self.simulate(plan, wallet, examined)
        except PolicyViolation as violation:
            if counted is not None:
                self.spend.refund(wallet, *counted)
            log.warning(
                "plan=%s stage=policy verdict=refused rule=%s instruction=%s wallet=%s error=%s",
                plan.plan_id, violation.rule, violation.index, wallet, violation.detail,
            )  # fmt: skip
            fail(ErrorCode.POLICY_VIOLATION, str(violation))
        except BaseException:
            if counted is not None:
                self.spend.refund(wallet, *counted)
            raise
        log.info(
            "plan=%s stage=policy verdict=pass wallet=%s spend=%d fee=%d priority=%d tip=%d transfers=%d us=%d",
            plan.plan_id, wallet, spend.total, spend.base_fee, spend.priority_fee, spend.tip, spend.outflow,
            (time.perf_counter() - started) * 1e6,
        )  # fmt: skip
        return spend

    async def simulate(self, plan: ExecutionPlanEvent, wallet: str, examined: Examined) -> None:
        """POLICY_SIMULATE: the transaction, unsigned, against the chain (`simulation.simulate`)."""
        await simulate(self.rpc, self.settings, wallet, examined)



async def open_policy(settings: PolicySettings, js, builder, rpc, *, worker_name: str, replicas: int = 1) -> PlanPolicy:
    """The worker's policy: on the builder's lookup-table and reserve caches, with the shared spend ledger."""
    spend = await SpendLedger.open(js, worker_name, replicas=replicas)
    policy = PlanPolicy(settings, lookup_tables=builder.lookup_tables, reserves=builder.reserves, spend=spend, rpc=rpc)
    log.info("stage=policy event=loaded settings=%s", json.dumps(settings.describe()))
    return policy
