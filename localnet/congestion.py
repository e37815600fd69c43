"""Congestion and fees: block compute limits, a leader that orders its queue by priority, background load.

Off by default (`CongestionConfig.enabled`): the block then takes its queue in arrival order with
no compute limit beyond the slot's time budget, as before. On, each slot's queue goes through
`Congestion.schedule` before execution:

- **Block limits**, agave `cost-model/src/block_cost_limits.rs`: `MAX_BLOCK_UNITS` (50M since
  SIMD-0207; 48M before it, 60M with SIMD-0256) per block and `MAX_WRITABLE_ACCOUNT_UNITS` (12M)
  per write-locked account, both multiplied by `scale` (0.125 by default: 6,250,000 and 1,500,000
  CU). 0.125 is the smallest scale at which the largest transaction (1.4M CU requested, plus its
  signature and lock costs) still fits one account's limit, as any transaction fits an empty block
  on mainnet: a smaller one would make a transaction that lands on mainnet wait here for ever. The
  load's transactions ask for 200,000 CU each (agave's default per instruction, a common request
  for a swap), so about 31 of them fill a block and 7 an account: tens of transactions a slot
  stand for mainnet's thousands.
- **Cost of a transaction**, agave `cost-model/src/cost_model.rs` in simplified form:
  `SIGNATURE_COST` (720) per signature + `WRITE_LOCK_UNITS` (300) per write-locked account +
  instruction data bytes / `INSTRUCTION_DATA_BYTES_COST` (4) + the requested compute-unit limit
  (SetComputeUnitLimit, else 3,000 per builtin instruction and 200,000 per other instruction, at
  most 1.4M). Agave afterwards gives back the units a transaction did not use; here the block is
  charged what the scheduler reserved.
- **Priority**, agave `core/src/banking_stage/transaction_scheduler/receive_and_buffer.rs`
  `calculate_priority_and_cost`: reward x 1,000,000 / (1 + cost), reward = the priority fee
  (compute-unit price x limit / 10^6, rounded up) + the validator's half of the base fee (5,000
  lamports per signature, 50% burnt). Highest first; equal priorities keep arrival order.
- **What does not fit** (the block's limit, or the limit of an account it write-locks) waits,
  ahead of newer work, for the next slot; once its blockhash has expired the leader drops it
  (the ledger's precheck, as for any transaction).
- **Bundles** go first, in arrival order, before the lone transactions (jito-solana's bundle stage
  runs before the banking stage's scheduler in a Jito leader's slot); a bundle takes the space of
  all its transactions or none of it, and waits whole for a slot where it fits.
- **Background load**: seeded payers send real signed transfers (SetComputeUnitLimit,
  SetComputeUnitPrice, a 1+ lamport transfer to a hot account or to the payer's own sink), with
  compute-unit prices drawn log-uniformly from [fee_min, fee_max]; each slot the load tops its
  queued cost up to `fill` x the block limit. It queues at most one block's per-account limit on
  a hot account (a transaction that would pass it writes the payer's sink instead), so the load
  alone fills each hot account to its limit and the block to `fill`.
"""
from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from typing import Any

from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction


from .ledger import MAX_COMPUTE_UNIT_LIMIT, Block, Ledger, Submission, compute_unit_price, requested_compute_units, writable_keys

# agave cost-model/src/block_cost_limits.rs
MAX_BLOCK_UNITS = 50_000_000  # MAX_BLOCK_UNITS_SIMD_0207 (48M before SIMD-0207)
MAX_WRITABLE_ACCOUNT_UNITS = 12_000_000
SIGNATURE_COST = 720  # COMPUTE_UNIT_TO_US_RATIO (30) * 24
WRITE_LOCK_UNITS = 300  # COMPUTE_UNIT_TO_US_RATIO * 10
INSTRUCTION_DATA_BYTES_COST = 4  # 140 bytes per us / COMPUTE_UNIT_TO_US_RATIO
LAMPORTS_PER_SIGNATURE = 5_000
BURN_PERCENT = 50  # solana-fee-calculator DEFAULT_BURN_PERCENT
PRIORITY_MULTIPLIER = 1_000_000
DEFAULT_SCALE = 0.125  # the smallest at which a 1.4M-CU transaction fits an account's limit (see above)
PAYER_LAMPORTS = 10**15  # a million SOL per background payer
SLOTS_SHOWN = 64


@dataclass
class LoadConfig:
    """The background senders: how much of the block they keep queued, where they write, what they pay."""

    fill: float = 0.0  # share of the block CU limit the load keeps queued (0: no load)
    hot: tuple[str, ...] = ()  # accounts the load write-locks (one per transaction, in turn)
    hot_share: float = 1.0  # share of load transactions that write-lock a hot account (others: a sink of their own)
    fee_min: int = 10_000  # compute-unit price range, micro-lamports per CU (drawn log-uniformly)
    fee_max: int = 1_000_000
    cu_limit: int = 200_000  # SetComputeUnitLimit of each load transaction (agave's default per instruction)
    payers: int = 32
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.fill <= 1.0 or not 0.0 <= self.hot_share <= 1.0:
            raise ValueError("fill and hot_share are shares between 0 and 1")
        if not 0 <= self.fee_min <= self.fee_max:
            raise ValueError("expected 0 <= fee_min <= fee_max (micro-lamports per CU)")
        if not 1 <= self.cu_limit <= MAX_COMPUTE_UNIT_LIMIT or self.payers < 1:
            raise ValueError(f"cu_limit runs from 1 to {MAX_COMPUTE_UNIT_LIMIT}; payers from 1")
        self.hot = tuple(str(Pubkey.from_string(str(k))) for k in self.hot)


@dataclass
class CongestionConfig:
    enabled: bool = False
    scale: float = DEFAULT_SCALE  # multiplies mainnet's block and per-account limits
    block_units: int | None = None  # overrides MAX_BLOCK_UNITS x scale
    account_units: int | None = None  # overrides MAX_WRITABLE_ACCOUNT_UNITS x scale
    load: LoadConfig = field(default_factory=LoadConfig)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CongestionConfig":
        config = cls()
        config.update(data)
        return config

    def update(self, data: dict[str, Any]) -> None:
        """Merge a JSON object; keys left out keep their value; anything given but `enabled: false` turns it on."""
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        known = {f.name for f in fields(self)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
        load = data.get("load", {})
        if not isinstance(load, dict):
            raise TypeError("load: expected a JSON object")
        load_known = {f.name for f in fields(LoadConfig)}
        if set(load) - load_known:
            raise ValueError(f"load: unknown keys {sorted(set(load) - load_known)}; known: {sorted(load_known)}")
        new_load = LoadConfig(**{**self.load.__dict__, **load})
        if "hot" in load and isinstance(load["hot"], str):
            raise TypeError("load.hot: expected a list of base58 accounts")
        new_load.validate()
        scale = float(data.get("scale", self.scale))
        block_units = data.get("block_units", self.block_units)
        account_units = data.get("account_units", self.account_units)
        if scale <= 0 or any(u is not None and int(u) < 1 for u in (block_units, account_units)):
            raise ValueError("scale, block_units and account_units must be positive")
        self.scale = scale
        self.block_units = None if block_units is None else int(block_units)
        self.account_units = None if account_units is None else int(account_units)
        self.load = new_load
        self.enabled = bool(data.get("enabled", True if data else self.enabled))

    @property
    def block_limit(self) -> int:
        return self.block_units or max(1, int(MAX_BLOCK_UNITS * self.scale))

    @property
    def account_limit(self) -> int:
        return self.account_units or max(1, int(MAX_WRITABLE_ACCOUNT_UNITS * self.scale))

    def to_json(self) -> dict:
        return {
            "enabled": self.enabled,
            "scale": self.scale,
            "block_units": self.block_units,
            "account_units": self.account_units,
            "load": {**self.load.__dict__, "hot": list(self.load.hot)},
        }


def transaction_cost(tx: VersionedTransaction, writable: list[Pubkey]) -> int:
    """agave CostModel in simplified form: signatures + write locks + instruction data + requested CUs."""
    data_bytes = sum(len(bytes(ix.data)) for ix in tx.message.instructions)
    return (
        SIGNATURE_COST * len(tx.signatures)
        + WRITE_LOCK_UNITS * len(writable)
        + data_bytes // INSTRUCTION_DATA_BYTES_COST
        + requested_compute_units(tx)
    )


def priority(tx: VersionedTransaction, cost: int) -> int:
    """agave calculate_priority_and_cost: the leader's reward per unit of block space, x 10^6."""
    priority_fee = -(-compute_unit_price(tx) * requested_compute_units(tx) // 1_000_000)
    base_fee = LAMPORTS_PER_SIGNATURE * len(tx.signatures)
    reward = priority_fee + base_fee - base_fee * BURN_PERCENT // 100
    return reward * PRIORITY_MULTIPLIER // (1 + cost)


@dataclass
class SlotFill:
    slot: int
    units: int = 0
    transactions: int = 0
    load: int = 0
    waited: int = 0
    hottest: tuple[str, int] | None = None

    def to_json(self, block_limit: int) -> dict:
        return {
            "slot": self.slot,
            "cu": self.units,
            "fill": round(self.units / block_limit, 4),
            "transactions": self.transactions,
            "loadTransactions": self.load,
            "waited": self.waited,
            "hottestAccount": {"account": self.hottest[0], "cu": self.hottest[1]} if self.hottest else None,
        }


class BackgroundLoad:
    """Seeded payers sending priority-fee transfers; deterministic for a seed (payers, fees, targets)."""

    def __init__(self, config: LoadConfig, fund) -> None:
        self.config = config
        self.random = random.Random(f"congestion-load:{config.seed}")
        self.payers = [Keypair.from_seed(self.random.randbytes(32)) for _ in range(config.payers)]
        self.sinks = [Keypair.from_seed(self.random.randbytes(32)).pubkey() for _ in range(config.payers)]
        for keypair in self.payers:
            fund(keypair.pubkey(), PAYER_LAMPORTS)
        for sink in self.sinks:
            fund(sink, 1_000_000)  # rent-exempt, so a 1-lamport credit never fails on rent
        self.hot = [Pubkey.from_string(k) for k in config.hot]
        self.sent = 0

    def draw_price(self) -> int:
        low, high = self.config.fee_min, self.config.fee_max
        if low == high or high <= 0:
            return high
        return int(round(math.exp(self.random.uniform(math.log(max(low, 1)), math.log(high)))))

    def transaction(self, ledger: Ledger, full: set[Pubkey] = frozenset()) -> VersionedTransaction:
        """The next load transaction; it writes a hot account (in turn, skipping those in `full`) or its payer's sink."""
        index = self.sent % len(self.payers)
        payer = self.payers[index]
        to = self.sinks[index]
        if self.hot and self.random.random() < self.config.hot_share:
            hot = self.hot[self.sent % len(self.hot)]
            if hot not in full:
                to = hot
        self.sent += 1
        instructions = [
            set_compute_unit_limit(self.config.cu_limit),
            set_compute_unit_price(self.draw_price()),
            transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=1 + self.sent % 1_000_000)),
        ]
        message = MessageV0.try_compile(payer.pubkey(), instructions, [], ledger.latest_blockhash[0])
        return VersionedTransaction(message, [payer])


class Congestion:
    """Applies the block limits, the priority order and the background load to one slot's queue."""

    def __init__(self, config: CongestionConfig | None = None, fund=None) -> None:
        self.config = config or CongestionConfig()
        self._fund = fund or (lambda pubkey, lamports: None)
        self.load: BackgroundLoad | None = None
        self._load_signatures: set[Signature] = set()
        self.slots: deque[SlotFill] = deque(maxlen=SLOTS_SHOWN)
        self.totals: Counter[str] = Counter()
        self._restart_load()

    def update(self, data: dict) -> None:
        before = self.config.load
        self.config.update(data)
        if self.config.load != before:
            self._restart_load()

    def _restart_load(self) -> None:
        load = self.config.load
        self._load_signatures.clear()  # load already queued lands or expires as any transaction
        self.load = BackgroundLoad(load, self._fund) if load.fill > 0 else None

    def schedule(self, ledger: Ledger, block: Block) -> None:
        """Order `block.work` by priority and keep what fits the block's limits; the rest waits for the next slot."""
        if not self.config.enabled:
            return
        limit, account_limit = self.config.block_limit, self.config.account_limit
        loader = ledger._lookup_loader()
        work = block.work
        if self.load is not None:
            work = work + self._top_up(ledger, work, loader)
        bundles: list[tuple[Submission, int, Counter]] = []
        lone: list[tuple[int, int, Submission, int, Counter]] = []
        for order, submission in enumerate(work):
            if not ledger.blockhash_valid(submission.transactions[0].message.recent_blockhash):
                # Expired (or unknown): takes no space; the ledger's precheck drops it (a bundle fails).
                bundles.append((submission, 0, Counter())) if submission.bundle_id else lone.append((0, order, submission, 0, Counter()))
                continue
            cost, locks, rank = 0, Counter(), 0
            for tx in submission.transactions:
                writable = writable_keys(tx, loader)
                tx_cost = transaction_cost(tx, writable)
                cost += tx_cost
                for key in set(writable):
                    locks[key] += tx_cost
                rank = priority(tx, tx_cost)
            if submission.bundle_id is not None:
                bundles.append((submission, cost, locks))
            else:
                lone.append((-rank, order, submission, cost, locks))
        lone.sort(key=lambda item: (item[0], item[1]))
        ordered = bundles + [(s, c, k) for _, _, s, c, k in lone]
        used = 0
        per_account: Counter[Pubkey] = Counter()
        taken: list[Submission] = []
        waiting: list[Submission] = []
        fill = SlotFill(block.slot)
        for submission, cost, locks in ordered:
            fits = used + cost <= limit and all(per_account[key] + units <= account_limit for key, units in locks.items())
            if not fits:
                waiting.append(submission)
                continue
            taken.append(submission)
            used += cost
            per_account.update(locks)
            fill.transactions += len(submission.transactions)
            signature = submission.transactions[0].signatures[0]
            if signature in self._load_signatures:
                self._load_signatures.discard(signature)
                fill.load += 1
        block.work = taken
        ledger.requeue(waiting)
        fill.units, fill.waited = used, len(waiting)
        if per_account:
            key, units = per_account.most_common(1)[0]
            fill.hottest = (str(key), units)
        self.slots.append(fill)
        self.totals["slots"] += 1
        self.totals["units"] += used
        self.totals["waited"] += len(waiting)
        self.totals["loadSent"] = self.load.sent if self.load else self.totals["loadSent"]

    def _top_up(self, ledger: Ledger, work: list[Submission], loader) -> list[Submission]:
        """New load transactions so that the load's queued cost reaches `fill` x the block limit."""
        assert self.load is not None
        target = self.config.load.fill * self.config.block_limit
        queued = 0
        on_hot: Counter[Pubkey] = Counter()  # the load's queued cost per hot account: never more than one block's limit
        hot = set(self.load.hot)
        for submission in work:
            tx = submission.transactions[0]
            if tx.signatures[0] in self._load_signatures:
                writable = writable_keys(tx, loader)
                cost = transaction_cost(tx, writable)
                queued += cost
                for key in hot.intersection(writable):
                    on_hot[key] += cost
        added: list[Submission] = []
        while queued < target:
            full = {key for key in hot if on_hot[key] + WRITE_LOCK_UNITS + self.config.load.cu_limit > self.config.account_limit}
            tx = self.load.transaction(ledger, full)
            signature = tx.signatures[0]
            if ledger.already_known(signature):
                continue
            ledger.pending_signatures.add(signature)
            self._load_signatures.add(signature)
            added.append(Submission([tx]))
            writable = writable_keys(tx, loader)
            cost = transaction_cost(tx, writable)
            queued += cost
            for key in hot.intersection(writable):
                on_hot[key] += cost
        return added

    def to_json(self) -> dict:
        limit = self.config.block_limit
        shown = list(self.slots)
        return {
            **self.config.to_json(),
            "limits": {"block_units": limit, "account_units": self.config.account_limit},
            "recentFill": round(sum(s.units for s in shown) / (limit * len(shown)), 4) if shown else 0.0,
            "slots": [s.to_json(limit) for s in shown],
            "totals": dict(self.totals),
            "loadPayers": [str(p.pubkey()) for p in self.load.payers] if self.load else [],
        }
