"""Chain state the hot path reads without waiting: the latest blockhash and address lookup tables.

Both are refreshed in the background, so build never makes an RPC round trip for them
in the common case (docs/architecture.md section 6: build is part of the plan-to-wire floor).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from solders.address_lookup_table_account import AddressLookupTable, AddressLookupTableAccount
from solders.hash import Hash
from solders.pubkey import Pubkey

from .rpc import SolanaRpc

log = logging.getLogger("hft.chain")


@dataclass(frozen=True)
class RecentBlockhash:
    blockhash: Hash
    last_valid_block_height: int
    fetched_at: float  # monotonic seconds


class BlockhashCache:
    """The latest confirmed blockhash, refreshed every `every_s` (a slot or so)."""

    def __init__(self, rpc: SolanaRpc, every_s: float = 0.2) -> None:
        self.rpc = rpc
        self.every_s = every_s
        self.current: RecentBlockhash | None = None
        self._task: asyncio.Task | None = None

    async def refresh(self) -> RecentBlockhash:
        blockhash, last_valid_block_height = await self.rpc.latest_blockhash("confirmed")
        self.current = RecentBlockhash(blockhash, last_valid_block_height, time.monotonic())
        return self.current

    async def get(self) -> RecentBlockhash:
        """The cached blockhash; fetched inline only when the cache is empty or stale (refresher stalled)."""
        current = self.current
        if current is None or time.monotonic() - current.fetched_at > max(2.0, 10 * self.every_s):
            return await self.refresh()
        return current

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="blockhash-refresh")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.refresh()
                failures = 0
            except Exception as error:  # keep refreshing: the next try may work
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("blockhash refresh failed (%d in a row): %s", failures, error)
            await asyncio.sleep(self.every_s)


class LookupTableCache:
    """Address lookup tables by address, fetched once (getMultipleAccounts) and re-read after `ttl_s`."""

    def __init__(self, rpc: SolanaRpc, ttl_s: float = 60.0) -> None:
        self.rpc = rpc
        self.ttl_s = ttl_s
        self.tables: dict[Pubkey, tuple[AddressLookupTableAccount, float]] = {}

    async def get(self, addresses: list[Pubkey], max_age_s: float | None = None) -> list[AddressLookupTableAccount]:
        """`max_age_s` forces a fresher read (a table may have grown since it was cached)."""
        now = time.monotonic()
        limit = self.ttl_s if max_age_s is None else max_age_s
        missing = [a for a in dict.fromkeys(addresses) if a not in self.tables or now - self.tables[a][1] > limit]
        for start in range(0, len(missing), 100):
            chunk = missing[start : start + 100]
            accounts = await self.rpc.multiple_accounts(chunk, "confirmed")
            for address, account in zip(chunk, accounts):
                if account is None:
                    raise LookupTableMissing(f"address lookup table {address} does not exist")
                try:
                    table = AddressLookupTable.deserialize(bytes(account.data))
                except ValueError:
                    raise LookupTableMissing(f"account {address} is not an address lookup table") from None
                self.tables[address] = (AddressLookupTableAccount(address, list(table.addresses)), now)
        return [self.tables[a][0] for a in dict.fromkeys(addresses)]


class LookupTableMissing(Exception):
    pass
