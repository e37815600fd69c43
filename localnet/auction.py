"""Jito's tip auction, and a background searcher load that competes in it (both off by default).

Source: jito-labs/jito-docs `docs/source/lowlatencytxnsend.md`, "What is the auction?":
  "Parallel auctions are run at 50ms ticks" (the page said 200ms until its 2025-06-20 revision,
  jito-docs commit fdf4799); "Bundles with intersecting locking patterns on a particular account
  [(w, w) or (r, w) or (w, r)] are run in a single auction"; "Bundles that do not touch the same
  accounts are run in separate auctions, as well as bundles that have non-intersecting locking
  patterns (r, r)"; "Bundle orderings within a single auction are prioritized in the auction based on
  requested tip/cus-requested efficiency".

How the auction maps onto the slot clock: a block takes the bundles queued since the previous block;
they are split into auction ticks of `tick_ms` by arrival time (counted from the previous block's
start; a bundle held from earlier, e.g. across a non-Jito leader's slots, joins the first tick), so
a 400 ms slot holds 8 ticks of 50 ms, and a slot shorter than a tick is one auction of its own (at
least one auction per block). Within a tick the bundles are ranked by tip per requested compute unit
(ties: the earlier arrival) and taken greedily: a bundle whose locks intersect (w/w, r/w, w/r) those
of a bundle already taken loses. The 8 tip accounts are left out of the locks (every bundle
write-locks one). The tip is read by a dry run against the state at the block's start, as the engine's
simulation does; a bundle whose dry run fails is not ranked (it goes on and fails in the block, as
today). Requested compute units are the transactions' SetComputeUnitLimit, or agave's default
(3,000 per builtin instruction, 200,000 per other one, at most 1,400,000) when a transaction sets
none (`ledger.requested_compute_units`). Winners keep their place in the block; a loser does not land in that slot: it is recorded as
failed (err "lost auction") and never retried.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterable

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from venue import ComputeBudgetInstruction

from .ledger import COMPUTE_BUDGET_PROGRAM, BundleOutcome, Ledger, Submission, requested_compute_units, resolve_account_keys, writable_keys

DEFAULT_TICK_MS = 50.0  # jito-docs lowlatencytxnsend.md since 2025-06-20 (200 before)
LOST_AUCTION = "lost auction"
MIN_SEARCHER_TIP = 1000  # the engine's minimum tip
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
SEARCHER_FUNDS = 10_000 * 10**9
MAX_TRACKED = 20_000


@dataclass
class SearcherConfig:
    """The background searchers: `rate` bundles/s (0: off), tips lognormal around `tip_median` lamports."""

    rate: float = 0.0
    tip_median: int = 10_000  # lamports: the distribution's median
    tip_sigma: float = 1.0  # of the tip's natural log; 0 makes every tip the median
    compute_units: int = 50_000  # each searcher transaction's SetComputeUnitLimit
    # Accounts to write-lock (base58); empty: every fixture pool's shared vault, or, with no pool
    # yet, `hot_accounts` accounts of the searchers' own (so they still compete with each other).
    accounts: list[str] = field(default_factory=list)
    hot_accounts: int = 2
    wallets: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate < 0 or self.tip_median < MIN_SEARCHER_TIP or self.tip_sigma < 0:
            raise ValueError(f"searchers: rate >= 0, tip_median >= {MIN_SEARCHER_TIP} and tip_sigma >= 0 expected")
        if self.compute_units <= 0 or self.hot_accounts < 1 or self.wallets < 1:
            raise ValueError("searchers: compute_units, hot_accounts and wallets must be positive")
        for account in self.accounts:
            Pubkey.from_string(account)

    @property
    def on(self) -> bool:
        return self.rate > 0

    def merged(self, changes: dict) -> "SearcherConfig":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown searchers keys: {sorted(unknown)}; expected {sorted(known)}")
        return SearcherConfig(**(asdict(self) | changes))


@dataclass
class AuctionConfig:
    enabled: bool = False
    tick_ms: float = DEFAULT_TICK_MS
    # A bundle a region or a fault dropped reads Failed once the slot it was sent in is over,
    # instead of Pending until its blockhash expires (the calm default, and the old behaviour).
    prompt_failures: bool = False
    searchers: SearcherConfig = field(default_factory=SearcherConfig)

    def update(self, data: dict) -> None:
        """A partial JSON update; `searchers` merges. Searchers given without `enabled` turn the auction on."""
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        unknown = set(data) - {"enabled", "tick_ms", "prompt_failures", "searchers"}
        if unknown:
            raise ValueError(f"unknown auction keys: {sorted(unknown)}")
        tick_ms = float(data.get("tick_ms", self.tick_ms))
        if tick_ms <= 0:
            raise ValueError("tick_ms must be > 0")
        searchers = self.searchers
        if "searchers" in data:
            if not isinstance(data["searchers"], dict):
                raise TypeError("searchers must be an object")
            searchers = searchers.merged(data["searchers"])
        self.tick_ms, self.searchers = tick_ms, searchers
        if "prompt_failures" in data:
            self.prompt_failures = bool(data["prompt_failures"])
        if "enabled" in data:
            self.enabled = bool(data["enabled"])
        elif searchers.on and "searchers" in data:
            self.enabled = True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "AuctionConfig":
        config = cls()
        config.update(data or {})
        return config


def bundle_locks(transactions: Iterable[VersionedTransaction], load_table, excluded: set[Pubkey]) -> tuple[set[Pubkey], set[Pubkey]]:
    """(write-locked, read-locked) accounts of a bundle, tip accounts excluded."""
    write: set[Pubkey] = set()
    read: set[Pubkey] = set()
    for tx in transactions:
        writable = set(writable_keys(tx, load_table))
        keys, loaded_w, loaded_r = resolve_account_keys(tx, load_table)
        write |= writable
        read |= set(keys + loaded_w + loaded_r) - writable
    write -= excluded
    read -= excluded | write
    return write, read


class Auction:
    """Runs the auctions of each block (when enabled) and keeps their counters."""

    def __init__(self, config: AuctionConfig) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self.last_block_ns: int | None = None

    def run(self, ledger: Ledger, work: list[Submission], tip_accounts: list[Pubkey], now_ns: int) -> tuple[list[Submission], list[BundleOutcome]]:
        """The block's work without the bundles that lost their auction, and the losers' outcomes."""
        window_start = self.last_block_ns
        self.last_block_ns = now_ns
        tick_ns = int(self.config.tick_ms * 1e6)
        ticks: dict[int, list[Submission]] = {}
        seen: set[str] = set()
        for submission in work:
            if submission.bundle_id is None or submission.bundle_id in seen:
                continue  # lone transactions do not bid; a second copy of a bundle is not a rival of the first
            seen.add(submission.bundle_id)
            start = window_start if window_start is not None else submission.received_ns
            ticks.setdefault(max(0, (submission.received_ns - start) // tick_ns), []).append(submission)
        losers: list[BundleOutcome] = []
        excluded = set(tip_accounts)
        loader = ledger._lookup_loader()
        for bids in ticks.values():
            if len(bids) < 2:
                continue
            locks = [bundle_locks(s.transactions, loader, excluded) for s in bids]
            rivals = _contested(locks)
            if not rivals:
                continue
            self.counters["auctions"] += 1
            ranked = []
            for index in rivals:
                bid = bids[index]
                trial = ledger.try_bundle(bid.transactions, commit=False, tip_accounts=tip_accounts)
                if not trial.landed:
                    continue  # fails its simulation: not ranked, it fails in the block
                units = sum(requested_compute_units(tx) for tx in bid.transactions) or 1
                ranked.append((-trial.tip_lamports / units, bid.received_ns, index))
            ranked.sort()
            taken_write: set[Pubkey] = set()
            taken_read: set[Pubkey] = set()
            for _, _, index in ranked:
                write, read = locks[index]
                if write & (taken_write | taken_read) or read & taken_write:
                    bid = bids[index]
                    signatures = [str(tx.signatures[0]) for tx in bid.transactions]
                    losers.append(BundleOutcome(bid.bundle_id or "", ledger.slot, False, signatures, err=LOST_AUCTION))
                    continue
                taken_write |= write
                taken_read |= read
        if not losers:
            return work, []
        lost = {outcome.bundle_id for outcome in losers}
        for outcome in losers:
            earlier = ledger.bundles.get(outcome.bundle_id)
            if earlier is None or not earlier.landed:  # a late copy of a landed bundle does not unland it
                ledger.bundles[outcome.bundle_id] = outcome
        self.counters["lost"] += len(losers)
        return [s for s in work if s.bundle_id not in lost], losers


def _contested(locks: list[tuple[set[Pubkey], set[Pubkey]]]) -> list[int]:
    """Indices of the bids whose locks intersect another bid's (w/w, r/w, w/r)."""
    writers: Counter[Pubkey] = Counter()
    readers: Counter[Pubkey] = Counter()
    for write, read in locks:
        writers.update(write)
        readers.update(read)
    contested = []
    for index, (write, read) in enumerate(locks):
        if any(writers[k] > 1 or readers[k] for k in write) or any(writers[k] for k in read):
            contested.append(index)
    return contested


def _keypair(seed: int, label: str) -> Keypair:
    return Keypair.from_seed(hashlib.sha256(f"localnet-searcher:{seed}:{label}".encode()).digest())


class Searchers:
    """Background searchers: seeded bundles at `rate` per second that write-lock the contested accounts.

    Each bundle is one transaction from one of `wallets` searcher wallets: SetComputeUnitLimit, a
    0-lamport system transfer to the target account (it write-locks the account without changing
    it, as a backrun on the pool would lock it), a memo numbering it, and the tip, drawn from a
    lognormal distribution (median `tip_median`, `tip_sigma` of its log), to one of the tip
    accounts. The bundles go straight into the leader's queue, as another searcher's bundles
    reach it through the engine: no fault plan or region applies to them, and they are not in the
    admin wire view. They bid in the auction like any bundle; the winners land and pay real tips.
    """

    def __init__(
        self,
        config: SearcherConfig,
        ledger: Ledger,
        tip_accounts: list[Pubkey],
        fund: Callable[[Pubkey, int], None],
        enqueue: Callable[[list[VersionedTransaction]], str],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.tip_accounts = tip_accounts
        self.enqueue = enqueue
        self.rng = random.Random(f"searchers:{config.seed}")
        self.wallets = [_keypair(config.seed, f"wallet:{i}") for i in range(config.wallets)]
        self.hot = [_keypair(config.seed, f"hot:{i}").pubkey() for i in range(config.hot_accounts)]
        for wallet in self.wallets:
            fund(wallet.pubkey(), SEARCHER_FUNDS)
        for account in self.hot:
            if ledger.svm.get_account(account) is None:
                fund(account, ledger.svm.minimum_balance_for_rent_exemption(0))
        self.sent = 0
        self.bundles: OrderedDict[str, int] = OrderedDict()  # bundle id -> tip
        self._task: asyncio.Task | None = None

    def targets(self) -> list[Pubkey]:
        if self.config.accounts:
            return [Pubkey.from_string(a) for a in self.config.accounts]
        return list(self.ledger.pool_accounts) or self.hot

    def tip(self) -> int:
        config = self.config
        return max(MIN_SEARCHER_TIP, round(self.rng.lognormvariate(math.log(config.tip_median), config.tip_sigma)))

    def bundle(self) -> tuple[list[VersionedTransaction], int]:
        wallet = self.rng.choice(self.wallets)
        target = self.rng.choice(self.targets())
        tip_account = self.rng.choice(self.tip_accounts)
        tip = self.tip()
        self.sent += 1
        instructions = [
            Instruction(COMPUTE_BUDGET_PROGRAM, bytes([ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT]) + self.config.compute_units.to_bytes(4, "little"), []),
            transfer(TransferParams(from_pubkey=wallet.pubkey(), to_pubkey=target, lamports=0)),
            Instruction(MEMO_PROGRAM, f"searcher {self.config.seed}:{self.sent}".encode(), []),
            transfer(TransferParams(from_pubkey=wallet.pubkey(), to_pubkey=tip_account, lamports=tip)),
        ]
        blockhash, _ = self.ledger.latest_blockhash
        tx = VersionedTransaction(MessageV0.try_compile(wallet.pubkey(), instructions, [], blockhash), [wallet])
        return [tx], tip

    def start(self) -> None:
        if self.config.on and self._task is None:
            self._task = asyncio.create_task(self._run(), name="localnet-searchers")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.rate
        deadline = loop.time()
        while True:
            transactions, tip = self.bundle()
            self.bundles[self.enqueue(transactions)] = tip
            while len(self.bundles) > MAX_TRACKED:
                self.bundles.popitem(last=False)
            deadline += interval
            now = loop.time()
            if deadline < now - 1.0:  # fell behind (machine paused): no burst to catch up
                deadline = now
            await asyncio.sleep(max(0.0, deadline - now))

    def to_json(self) -> dict:
        landed = lost = tips = 0
        for bundle_id, tip in self.bundles.items():
            outcome = self.ledger.bundles.get(bundle_id)
            if outcome is None:
                continue
            if outcome.landed:
                landed += 1
                tips += tip
            elif outcome.err == LOST_AUCTION:
                lost += 1
        return {"sent": self.sent, "landed": landed, "lost_at_auction": lost, "tips_landed_lamports": tips, "targets": [str(t) for t in self.targets()]}
