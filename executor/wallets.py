"""The wallet pool every worker process shares (docs/architecture.md section 4).

Why a NATS JetStream key-value bucket: in-flight counts and error counts kept per process would let two
workers overload one wallet, so the state lives in one place and every change is a compare-and-set on
the wallet's revision. Why leases carry an expiry instead of a plain counter: a workflow terminated
between acquire and release would otherwise hold its slot forever; an expired lease simply stops
counting and is dropped the next time anyone writes that wallet's entry.

Bucket ``wallet_leases``, one key per wallet ``wallet.<pubkey>``, value (JSON)::

    {"balance": int | null, "balanceAtMs": int, "errors": int, "leases": {lease_id: expires_at_ms}}

``balance`` null means not yet refreshed; it counts as healthy until a refresh says otherwise, so a
worker can trade as soon as it starts. Healthy = errors < 5, in-flight < 3, balance >= 0.1 SOL.

Speed: ``acquire`` works from an in-process cache of entries and revisions and needs one CAS write in
the common case. The cache follows the bucket (a KV watch: every write by any worker arrives here within
a round trip), so a lease id is found wherever it was taken, even by a worker that died: a plan re-run
after a crash gets its own lease back instead of a second one, and its release finds it. A cache that is
still stale shows up as a CAS conflict, answered by a fresh get of that wallet; wallets that look
unavailable are re-read before the pool says no.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from solders.pubkey import Pubkey

from venue import LAMPORTS_PER_SOL
from venue.rpc import SolanaRpc

log = logging.getLogger("hft.wallets")

KEY_PREFIX = "wallet."
MAX_CAS_ATTEMPTS = 64  # each conflict means another writer made progress; past this something is wrong
ACCOUNTS_PER_REQUEST = 100  # getMultipleAccounts limit


class NoWalletAvailable(Exception):
    """No wallet may take this lease now; the message says why, wallet by wallet."""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    wallet: str
    expires_at_ms: int
    # False when this id already held the lease (the plan's running dispatch, elsewhere): whoever
    # gets it that way did not take it, and must not give it back (a duplicate delivery would
    # release a running plan's wallet).
    taken: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class WalletState:
    """One wallet's stored entry. Leases past their expiry may still be in it until ``pruned``."""

    balance: int | None = None
    balance_at_ms: int = 0
    errors: int = 0
    leases: dict[str, int] = field(default_factory=dict)

    @classmethod
    def decode(cls, data: bytes) -> WalletState:
        raw = json.loads(data)
        leases = {lease: int(expiry) for lease, expiry in (raw.get("leases") or {}).items()}
        return cls(raw.get("balance"), int(raw.get("balanceAtMs", 0)), int(raw.get("errors", 0)), leases)

    def encode(self) -> bytes:
        body = {"balance": self.balance, "balanceAtMs": self.balance_at_ms, "errors": self.errors, "leases": self.leases}
        return json.dumps(body, separators=(",", ":")).encode()

    def pruned(self, now_ms: int) -> WalletState:
        live = {lease: expiry for lease, expiry in self.leases.items() if expiry > now_ms}
        return self if len(live) == len(self.leases) else replace(self, leases=live)

    @property
    def in_flight(self) -> int:
        return len(self.leases)


@dataclass
class _Cached:
    state: WalletState  # as stored (expired leases may still be in it; prune before judging)
    revision: int


def now_ms() -> int:
    # wall clock, not monotonic: expiries are compared across processes (and machines)
    return time.time_ns() // 1_000_000


def _sol(lamports: int) -> str:
    return f"{lamports / LAMPORTS_PER_SOL:.9g}"


class WalletPool:
    """Round robin over healthy wallets, leases and error counts shared through a JetStream KV bucket."""

    def __init__(
        self,
        kv: KeyValue,
        wallets: list[str],
        *,
        min_balance_lamports: int = 100_000_000,
        max_in_flight: int = 3,
        max_errors: int = 5,
    ) -> None:
        self.kv = kv
        self.wallets = list(dict.fromkeys(wallets))
        self.min_balance_lamports = min_balance_lamports
        self.max_in_flight = max_in_flight
        self.max_errors = max_errors
        self._cache: dict[str, _Cached] = {}
        self._next = 0  # round-robin cursor, per process: the shared state is the leases, not the order

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        wallets: list[str],
        bucket: str = "wallet_leases",
        min_balance_lamports: int = 100_000_000,
        max_in_flight: int = 3,
        max_errors: int = 5,
        replicas: int = 1,
    ) -> WalletPool:
        """Bind (or create) the bucket and make sure every wallet has an entry."""
        for wallet in wallets:
            Pubkey.from_string(wallet)  # a typo here would otherwise surface as a KV key error later
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            # two workers starting together both get here; creating an identical bucket twice is accepted
            kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas))
        pool = cls(kv, wallets, min_balance_lamports=min_balance_lamports, max_in_flight=max_in_flight, max_errors=max_errors)
        await asyncio.gather(*(pool._read(wallet) for wallet in pool.wallets))
        log.info("event=pool_open bucket=%s wallets=%d %s", bucket, len(pool.wallets), " ".join(pool.wallets))
        return pool

    # --- health ---------------------------------------------------------------------------------------

    def unhealthy_reason(self, state: WalletState) -> str | None:
        """Why this wallet may not take another lease, or None when it may."""
        if state.errors >= self.max_errors:
            return f"errors {state.errors}/{self.max_errors}"
        if state.in_flight >= self.max_in_flight:
            return f"in-flight {state.in_flight}/{self.max_in_flight}"
        if state.balance is not None and state.balance < self.min_balance_lamports:
            return f"balance {_sol(state.balance)} SOL < {_sol(self.min_balance_lamports)}"
        return None

    # --- leases ---------------------------------------------------------------------------------------

    async def acquire(self, lease_id: str, pinned: str | None, ttl_ms: int) -> Lease:
        """A lease on a healthy wallet for ``lease_id``; the same lease again if this id already holds one."""
        held = self._held(lease_id)
        if held is not None:
            return held
        if pinned is not None and pinned not in self.wallets:
            raise NoWalletAvailable(f"wallet {pinned} is not in this worker's key store")
        if pinned is not None:
            order = [pinned]
        else:
            order = [self.wallets[(self._next + i) % len(self.wallets)] for i in range(len(self.wallets))]
        reasons: dict[str, str] = {}
        for fresh in (False, True):
            if fresh:
                # the cache said no everywhere; it may be stale (another worker released), so look again
                await asyncio.gather(*(self._read(wallet) for wallet in self.wallets))
                held = self._held(lease_id)
                if held is not None:
                    return held
            for wallet in order:
                outcome = await self._take(wallet, lease_id, ttl_ms)
                if isinstance(outcome, Lease):
                    if pinned is None:
                        self._next = (self.wallets.index(wallet) + 1) % len(self.wallets)
                    return outcome
                reasons[wallet] = outcome
        if pinned is not None:
            message = f"pinned wallet {pinned} unavailable: {reasons[pinned]}"
        elif not self.wallets:
            message = "no healthy wallet: the pool is empty"
        else:
            message = "no healthy wallet: " + ", ".join(f"{wallet} {reasons[wallet]}" for wallet in self.wallets)
        log.info("event=no_wallet lease=%s reason=%r", lease_id, message)  # often transient; the plan's result carries it if final
        raise NoWalletAvailable(message)

    async def adopt(self, lease_id: str, wallet: str, ttl_ms: int) -> Lease:
        """The lease ``lease_id`` on this very wallet, taken whatever its health: a plan whose
        transaction is already signed by ``wallet`` is in flight on it, so it counts there."""
        held = self._held(lease_id)
        if held is not None and held.wallet == wallet:
            return held  # taken=False
        expires_at_ms = now_ms() + ttl_ms
        taken = True

        def change(state: WalletState) -> WalletState | None:
            nonlocal taken
            taken = lease_id not in state.leases
            if not taken:
                return None
            return replace(state, leases={**state.leases, lease_id: expires_at_ms})

        if wallet not in self.wallets and wallet not in self._cache and await self._read_existing(wallet) is None:
            return Lease(lease_id, wallet, expires_at_ms, taken=False)  # a wallet no worker pools: nothing to count, nothing to give back
        state = await self._mutate(wallet, change)
        return Lease(lease_id, wallet, state.leases.get(lease_id, expires_at_ms), taken=taken)

    async def release(self, lease_id: str, wallet: str | None, outcome: str) -> None:
        """Give the lease back. "success" resets the wallet's error count, "failure" adds one, "none" neither.

        ``wallet`` None: wherever ``lease_id`` is held (a run that never learnt its lease, e.g. one whose
        execute was cut short). Idempotent: the error count changes only when this call removes the lease,
        so a re-run release (local activities can re-run) counts once; a lease already gone (released, or
        expired and dropped) is fine.
        """
        if outcome not in ("success", "failure", "none"):
            raise ValueError(f"outcome must be success, failure or none, not {outcome!r}")
        if wallet is None:
            # Where is it? The cache may not have caught up (a write acknowledged while NATS was
            # going away): read every wallet afresh. Only a run cut short gets here.
            await asyncio.gather(*(self._read(w) for w in self.wallets))
        # A lease the plan also holds elsewhere (taken by a run that died mid-way) goes back uncounted.
        strays = [w for w in self.wallets if w != wallet and (c := self._cache.get(w)) is not None and lease_id in c.state.leases]
        for stray in strays:
            await self._release_on(lease_id, stray, "none")
        if wallet is not None:
            await self._release_on(lease_id, wallet, outcome)

    async def _release_on(self, lease_id: str, wallet: str, outcome: str) -> None:
        if wallet not in self.wallets:
            # leased by a worker with other keys: release it all the same, but never create an entry for it
            try:
                Pubkey.from_string(wallet)
            except ValueError:
                raise ValueError(f"release of lease {lease_id}: {wallet!r} is not a wallet public key") from None
            if wallet not in self._cache and await self._read_existing(wallet) is None:
                log.debug("event=release lease=%s wallet=%s outcome=%s removed=False entry=missing", lease_id, wallet, outcome)
                return
        removed = False

        def change(state: WalletState) -> WalletState | None:
            nonlocal removed
            removed = lease_id in state.leases  # checked before pruning: an expired lease still counts its outcome
            if not removed:
                return None
            leases = {other: expiry for other, expiry in state.leases.items() if other != lease_id}
            errors = 0 if outcome == "success" else state.errors + 1 if outcome == "failure" else state.errors
            return replace(state, leases=leases, errors=errors)

        state = await self._mutate(wallet, change)
        log.debug("event=release lease=%s wallet=%s outcome=%s removed=%s errors=%d inFlight=%d", lease_id, wallet, outcome, removed, state.errors, state.in_flight)
        if removed and outcome == "failure" and state.errors == self.max_errors:
            log.warning("event=wallet_unhealthy wallet=%s errors=%d/%d", wallet, state.errors, self.max_errors)

    def holds(self, lease_id: str) -> bool:
        return self._held(lease_id) is not None

    async def follow(self) -> None:
        """Keep the cache current with every write to the bucket, by any worker (forever)."""
        while True:
            try:
                watcher = await self.kv.watch(KEY_PREFIX + ">")
                async for entry in watcher:
                    if entry is None or entry.value is None or entry.operation is not None:
                        continue  # the end of the initial values, or a delete/purge
                    wallet = entry.key[len(KEY_PREFIX) :]
                    try:
                        self._remember(wallet, WalletState.decode(entry.value), entry.revision)
                    except ValueError:
                        log.warning("event=bad_entry wallet=%s", wallet)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - NATS away: CAS still works from a stale cache
                log.warning("event=watch_failed error=%s; following again in 1 s", error)
                await asyncio.sleep(1.0)

    def _held(self, lease_id: str) -> Lease | None:
        """The unexpired lease ``lease_id`` already holds, according to this process's cache."""
        now = now_ms()
        for wallet in self.wallets:
            cached = self._cache.get(wallet)
            expiry = cached.state.leases.get(lease_id) if cached else None
            if expiry is not None and expiry > now:
                return Lease(lease_id, wallet, expiry, taken=False)
        return None

    async def _take(self, wallet: str, lease_id: str, ttl_ms: int) -> Lease | str:
        """CAS one lease onto ``wallet``: the Lease, or why the wallet cannot take it."""
        cached = self._cache.get(wallet) or await self._read(wallet)
        for _ in range(MAX_CAS_ATTEMPTS):
            now = now_ms()
            state = cached.state.pruned(now)
            expiry = state.leases.get(lease_id)
            if expiry is not None:  # a fresh read shows this id already holds this wallet
                return Lease(lease_id, wallet, expiry, taken=False)
            reason = self.unhealthy_reason(state)
            if reason is not None:
                return reason
            expires_at_ms = now + ttl_ms
            taken = replace(state, leases={**state.leases, lease_id: expires_at_ms})
            revision = await self._write(wallet, taken, cached.revision)
            if revision is not None:
                log.debug("event=acquire lease=%s wallet=%s inFlight=%d/%d expiresAtMs=%d", lease_id, wallet, taken.in_flight, self.max_in_flight, expires_at_ms)
                return Lease(lease_id, wallet, expires_at_ms)
            cached = await self._read(wallet)  # someone else wrote first: judge again on the fresh entry
        return "too contended"

    # --- balances -------------------------------------------------------------------------------------

    async def set_balance(self, wallet: str, lamports: int) -> None:
        was = self._cache[wallet].state.balance if wallet in self._cache else None
        await self._mutate(wallet, lambda state: replace(state, balance=int(lamports), balance_at_ms=now_ms()))
        if was != lamports:
            low = lamports < self.min_balance_lamports
            (log.warning if low else log.info)("event=balance wallet=%s lamports=%d sol=%s low=%s", wallet, lamports, _sol(lamports), low)

    async def refresh_balances(self, rpc: SolanaRpc) -> dict[str, int]:
        """Read every wallet's balance (getMultipleAccounts, 100 a request) and store it; returns lamports by wallet."""
        balances: dict[str, int] = {}
        for start in range(0, len(self.wallets), ACCOUNTS_PER_REQUEST):
            chunk = self.wallets[start : start + ACCOUNTS_PER_REQUEST]
            answer = await rpc.multiple_accounts([Pubkey.from_string(wallet) for wallet in chunk], "confirmed")
            for wallet, account in zip(chunk, answer, strict=True):
                balances[wallet] = account.lamports if account is not None else 0  # no account: never funded
        await asyncio.gather(*(self.set_balance(wallet, lamports) for wallet, lamports in balances.items()))
        return balances

    async def run_balance_refresh(self, rpc: SolanaRpc, interval_s: float = 30.0) -> None:
        """Refresh balances forever, every ``interval_s``; a failed round is logged and the next one tried."""
        while True:
            try:
                await self.refresh_balances(rpc)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - an RPC hiccup must not stop the refresher
                log.warning("event=balance_refresh_failed error=%s: %s", type(error).__name__, error)
            await asyncio.sleep(interval_s)

    # --- status ---------------------------------------------------------------------------------------

    async def snapshot(self) -> list[dict]:
        """Every wallet's current shared state (fresh reads), for the ``status`` command."""
        await asyncio.gather(*(self._read(wallet) for wallet in self.wallets))
        now = now_ms()
        rows = []
        for wallet in self.wallets:
            state = self._cache[wallet].state.pruned(now)
            reason = self.unhealthy_reason(state)
            rows.append(
                {"wallet": wallet, "balance": state.balance, "errors": state.errors, "inFlight": state.in_flight, "healthy": reason is None, "reason": reason}
            )
        return rows

    # --- KV plumbing ----------------------------------------------------------------------------------

    async def _mutate(self, wallet: str, change: Callable[[WalletState], WalletState | None]) -> WalletState:
        """Apply ``change`` to the wallet's entry by compare-and-set (None: nothing to write); the state after."""
        cached = self._cache.get(wallet)
        fresh = cached is None
        if cached is None:
            cached = await self._read(wallet)
        for _ in range(MAX_CAS_ATTEMPTS):
            changed = change(cached.state)
            if changed is None and not fresh:
                # "nothing to do" from a cached entry may be stale (another worker wrote since): ask once more
                cached, fresh = await self._read(wallet), True
                continue
            if changed is None:
                return cached.state.pruned(now_ms())
            changed = changed.pruned(now_ms())
            if await self._write(wallet, changed, cached.revision) is not None:
                return changed
            cached, fresh = await self._read(wallet), True
        raise RuntimeError(f"wallet {wallet}: gave up after {MAX_CAS_ATTEMPTS} conflicting writes")

    async def _write(self, wallet: str, state: WalletState, last: int) -> int | None:
        """CAS write; the new revision, or None when someone else wrote first."""
        try:
            revision = await self.kv.update(KEY_PREFIX + wallet, state.encode(), last=last)
        except KeyWrongLastSequenceError:
            return None
        self._remember(wallet, state, revision)
        return revision

    async def _read_existing(self, wallet: str) -> _Cached | None:
        """Fresh get of the wallet's entry; None when there is none."""
        try:
            entry = await self.kv.get(KEY_PREFIX + wallet)
        except KeyNotFoundError:
            return None
        return self._remember(wallet, WalletState.decode(entry.value), entry.revision)

    async def _read(self, wallet: str) -> _Cached:
        """Fresh get of the wallet's entry, creating it (balance unknown) when missing."""
        key = KEY_PREFIX + wallet
        while True:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                empty = WalletState()
                try:
                    revision = await self.kv.create(key, empty.encode())
                except KeyWrongLastSequenceError:
                    continue  # another worker created it a moment ago: read theirs
                return self._remember(wallet, empty, revision)
            return self._remember(wallet, WalletState.decode(entry.value), entry.revision)

    def _remember(self, wallet: str, state: WalletState, revision: int) -> _Cached:
        # concurrent reads can answer out of order: never let an older revision replace a newer one
        cached = self._cache.get(wallet)
        if cached is None or revision >= cached.revision:
            cached = self._cache[wallet] = _Cached(state, revision)
        return cached

