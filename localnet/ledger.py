"""The local cluster's bank: LiteSVM plus the parts of a validator LiteSVM leaves out.

LiteSVM executes transactions synchronously against its latest blockhash only. A real
cluster does neither: transactions wait for the next block, any blockhash of the last
150 blocks is accepted, a signature is processed at most once, commitment deepens as
slots pass, and a Jito bundle lands all-or-nothing. This module adds exactly those, so
that a client which waits, polls and rebroadcasts correctly here does so on mainnet.

Everything here is synchronous and single-threaded: the cluster's event loop owns it.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Iterator, Sequence

from solders.account import Account
from solders.address_lookup_table_account import AddressLookupTable
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import (
    TransactionErrorDuplicateInstruction,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
    TransactionErrorInsufficientFundsForRent,
    TransactionStatus,
)

from venue import COMPUTE_BUDGET_PROGRAM_ID, ComputeBudgetInstruction, parse_compute_budget
from venue.programs import LOOKUP_TABLE_PROGRAM, SYSTEM_PROGRAM, TOKEN_PROGRAMS

log = logging.getLogger("localnet.ledger")

# A blockhash is valid for 150 blocks after the one that produced it (agave
# MAX_PROCESSING_AGE / MAX_RECENT_BLOCKHASHES); getLatestBlockhash answers
# lastValidBlockHeight = block height + 150.
SLOT_HASHES_ENTRIES = 512  # agave's MAX_ENTRIES for SlotHashes
BLOCKHASH_VALIDITY_BLOCKS = 150
TOKEN_ACCOUNT_LEN = 165
# The slot and the block height are different numbers on every real cluster (skipped
# slots); starting them apart here makes a client that confuses them fail in tests.
GENESIS_SLOT = 1_000
GENESIS_BLOCK_HEIGHT = 900
# agave runtime/src/status_cache.rs: MAX_CACHE_ENTRIES = MAX_RECENT_BLOCKHASHES (solana-clock,
# 300): the bank's status cache keeps the statuses of the 300 newest *rooted* slots (plus
# the unrooted ones above them).
STATUS_CACHE_SLOTS = 300
SKIPPED_SLOTS_KEPT = 10_000  # as many as the history keeps


class Commitment(str, Enum):
    processed = "processed"
    confirmed = "confirmed"
    finalized = "finalized"




def error_json(err: object) -> object:
    """A TransactionError as the JSON-RPC API spells it ("BlockhashNotFound", {"InstructionError": [0, {"Custom": 1}]})."""
    if err is None:
        return None
    status = TransactionStatus(0, None, None, err, None)  # solders owns the serde spelling
    return json.loads(status.to_json())["err"]


def lands_with_error(err: object) -> bool:
    """Whether a failed transaction still goes into the block (and pays its fee).

    Execution errors land; load-time errors (unknown blockhash, fee payer missing or
    unable to pay, bad signature, already processed) are dropped by the leader.
    """
    return isinstance(
        err,
        (TransactionErrorInstructionError, TransactionErrorInsufficientFundsForRent, TransactionErrorDuplicateInstruction),
    )


@dataclass
class TokenBalance:
    account_index: int
    mint: str
    owner: str
    program_id: str
    amount: int
    decimals: int

    def to_json(self) -> dict:
        ui = self.amount / 10**self.decimals
        return {
            "accountIndex": self.account_index,
            "mint": self.mint,
            "owner": self.owner,
            "programId": self.program_id,
            "uiTokenAmount": {
                "amount": str(self.amount),
                "decimals": self.decimals,
                "uiAmount": ui if self.amount else None,
                "uiAmountString": ui_amount_string(self.amount, self.decimals),
            },
        }


def ui_amount_string(amount: int, decimals: int) -> str:
    if decimals == 0:
        return str(amount)
    whole, frac = divmod(amount, 10**decimals)
    frac_s = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{whole}.{frac_s}" if frac_s else str(whole)


@dataclass(frozen=True)
class Origin:
    """Which path delivered a copy of a transaction: its intake channel (rpc, tpu, bundle) and,
    for the block engine's regions, the region's name."""

    channel: str
    region: str | None = None

    def to_json(self) -> dict:
        return {"channel": self.channel, "region": self.region}


@dataclass
class TxRecord:
    """A transaction that landed in a block (successfully or with an execution error)."""

    signature: Signature
    transaction: VersionedTransaction
    slot: int
    block_time: int
    err: object
    fee: int
    logs: list[str]
    compute_units: int
    account_keys: list[Pubkey]
    loaded_writable: list[Pubkey]
    loaded_readonly: list[Pubkey]
    pre_balances: list[int]
    post_balances: list[int]
    pre_token_balances: list[TokenBalance]
    post_token_balances: list[TokenBalance]
    bundle_id: str | None = None
    origin: Origin | None = None  # the path of the copy that landed (the submission executed)


@dataclass
class Submission:
    """One unit of work queued for the next block: a lone transaction or a Jito bundle."""

    transactions: list[VersionedTransaction]
    bundle_id: str | None = None
    received_ns: int = field(default_factory=time.time_ns)
    origin: Origin | None = None  # the channel and region it came by (None: the cluster's own work)


@dataclass
class Block:
    slot: int
    work: list[Submission]
    count: int = 0
    fees: dict[Pubkey, int] = field(default_factory=dict)
    tips: list[int] = field(default_factory=list)  # lamports each landed bundle paid to the tip accounts


@dataclass
class BundleOutcome:
    bundle_id: str
    slot: int
    landed: bool
    signatures: list[str]
    err: object = None
    tip_lamports: int = 0  # paid to the tip accounts given to try_bundle


class LedgerError(Exception):
    """A transaction or bundle refused before it reaches a block."""

    def __init__(self, err: object, message: str):
        super().__init__(message)
        self.err = err


class Ledger:
    """Slot clock, blockhash window, block production and transaction history over LiteSVM."""

    def __init__(
        self,
        *,
        confirmed_depth: int = 1,
        finalized_depth: int = 32,
        history_slots: int = 10_000,
        status_cache_slots: int = STATUS_CACHE_SLOTS,
        tip_accounts: Iterable[Pubkey] = (),
    ) -> None:
        if status_cache_slots < 0:
            raise ValueError(f"status_cache_slots={status_cache_slots} is negative")
        self.svm = LiteSVM().with_blockhash_check(False).with_transaction_history(0)
        self.confirmed_depth = confirmed_depth
        self.finalized_depth = finalized_depth
        self.history_slots = history_slots
        self.status_cache_slots = status_cache_slots
        # The block engine's tip accounts (given by the cluster; the ledger knows no block engine): what a
        # landed bundle paid to them is its tip (BundleOutcome.tip_lamports), read by the tip floor.
        self.tip_accounts: tuple[Pubkey, ...] = tuple(tip_accounts)
        self.slot = GENESIS_SLOT  # the slot whose block is being filled now
        self.block_height = GENESIS_BLOCK_HEIGHT  # height of the newest complete block
        self.genesis_hash = Hash.new_unique()
        self.svm.warp_to_slot(self.slot)
        # blockhash -> lastValidBlockHeight, oldest first; the newest is the latest blockhash.
        self.blockhashes: OrderedDict[Hash, int] = OrderedDict()
        # slot of the block that produced each blockhash, for answers at a commitment level.
        self.blockhash_by_slot: OrderedDict[int, Hash] = OrderedDict()
        self.slot_hashes: deque[tuple[int, Hash]] = deque(maxlen=SLOT_HASHES_ENTRIES)
        self._new_blockhash()
        self.pending: list[Submission] = []
        self.pending_signatures: set[Signature] = set()
        self.records: dict[Signature, TxRecord] = {}
        self.bundles: dict[str, BundleOutcome] = {}
        # Landed work per origin (the channel and region of the copy that was executed): transactions,
        # and units (a lone transaction or a whole bundle); never pruned, unlike `records`.
        self.landed_transactions: Counter[Origin | None] = Counter()
        self.landed_units: Counter[Origin | None] = Counter()
        self.slot_times: dict[int, int] = {}
        self.block_counts: dict[int, int] = {}
        # slot -> (block height, blockhash, parent slot) of every block produced, for getBlock/getBlocks.
        self.blocks: OrderedDict[int, tuple[int, Hash, int]] = OrderedDict()
        # Slots whose leader produced no block (offline leader or skip rate); newest last.
        self.skipped: deque[int] = deque(maxlen=SKIPPED_SLOTS_KEPT)
        # Recent prioritization fees: slot -> min fee of that block's transactions.
        self.prioritization: OrderedDict[int, dict[Pubkey, int]] = OrderedDict()
        self.last_drop_error: object = None
        # Accounts the fixture swap pools share between their wallets (each pool's in-vault): what the
        # background searchers of localnet.auction write-lock, so they compete with plans' swaps.
        self.pool_accounts: list[Pubkey] = []

    # --- clock ----------------------------------------------------------------

    @property
    def latest_blockhash(self) -> tuple[Hash, int]:
        blockhash = next(reversed(self.blockhashes))
        return blockhash, self.blockhashes[blockhash]

    def _new_blockhash(self) -> None:
        """The blockhash of the block just completed (slot - 1), valid through height + 150."""
        self.svm.expire_blockhash()
        blockhash = self.svm.latest_blockhash()
        self.blockhashes[blockhash] = self.block_height + BLOCKHASH_VALIDITY_BLOCKS
        self.blockhash_by_slot[self.slot - 1] = blockhash
        # The SlotHashes sysvar, newest first, as a validator keeps it (512 entries): programs such
        # as the lookup-table program check a "recent slot" against it.
        self.slot_hashes.appendleft((self.slot - 1, blockhash))
        self.svm.set_slot_hashes(list(self.slot_hashes))
        # Keep expired hashes for a while so isBlockhashValid answers false, not "unknown".
        while len(self.blockhashes) > 2 * BLOCKHASH_VALIDITY_BLOCKS + 1:
            self.blockhashes.popitem(last=False)
            self.blockhash_by_slot.popitem(last=False)

    def blockhash_at(self, commitment: "Commitment") -> tuple[Hash, int]:
        """getLatestBlockhash at a commitment: the blockhash of the newest block at that level."""
        wanted = self.slot_at(commitment)
        blockhash = self.blockhash_by_slot.get(wanted)
        if blockhash is None:  # a skipped slot has no blockhash: the newest block at or below it
            older = [h for s, h in self.blockhash_by_slot.items() if s <= wanted]
            blockhash = older[-1] if older else next(iter(self.blockhash_by_slot.values()))
        return blockhash, self.blockhashes[blockhash]

    def blockhash_valid(self, blockhash: Hash) -> bool:
        """Whether a transaction with this blockhash may still go into the block being filled."""
        last_valid = self.blockhashes.get(blockhash)
        return last_valid is not None and self.block_height + 1 <= last_valid

    def processed_slot(self) -> int:
        """The newest slot whose block is complete."""
        return self.slot - 1

    def slot_at(self, commitment: Commitment) -> int:
        depth = {Commitment.processed: 0, Commitment.confirmed: self.confirmed_depth, Commitment.finalized: self.finalized_depth}
        return max(GENESIS_SLOT - 1, self.processed_slot() - depth[commitment])

    def block_height_at(self, commitment: Commitment) -> int:
        """The height of the newest block at that level: only produced blocks count, skipped slots do not."""
        above = range(self.slot_at(commitment) + 1, self.processed_slot() + 1)
        skipped = 0
        for slot in reversed(self.skipped):  # newest first: stop below the range
            if slot < above.start:
                break
            skipped += slot in above
        return self.block_height - (len(above) - skipped)

    def was_skipped(self, slot: int) -> bool:
        return slot in self.skipped

    def commitment_of(self, slot: int) -> Commitment:
        depth = self.processed_slot() - slot
        if depth >= self.finalized_depth:
            return Commitment.finalized
        if depth >= self.confirmed_depth:
            return Commitment.confirmed
        return Commitment.processed

    def reaches(self, slot: int, commitment: Commitment) -> bool:
        return slot <= self.slot_at(commitment)

    # --- intake ----------------------------------------------------------------

    def already_known(self, signature: Signature) -> bool:
        return signature in self.records or signature in self.pending_signatures

    def enqueue(self, submission: Submission) -> None:
        """Queue a transaction or bundle for the next block (duplicates of a known signature are ignored)."""
        if submission.bundle_id is None:
            signature = submission.transactions[0].signatures[0]
            if self.already_known(signature):
                return
            self.pending_signatures.add(signature)
        self.pending.append(submission)

    def simulate(
        self, tx: VersionedTransaction, *, check_blockhash: bool = True
    ) -> tuple[object, TransactionMetadata | None, list[tuple[Pubkey, Account]]]:
        """Preflight: run against the current state without committing. Returns (err, meta or None if not run, post accounts)."""
        err = self._precheck(tx, check_blockhash=check_blockhash)
        if err is not None:
            return err, None, []
        result = self.svm.simulate_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            return result.err(), result.meta(), []
        return None, result.meta(), list(result.post_accounts())

    @contextmanager
    def sigverify(self, enabled: bool) -> Iterator[None]:
        """simulateTransaction verifies signatures only when asked (sigVerify)."""
        inner = self.svm._inner  # the wrapper exposes sigverify only as a builder
        previous = inner.get_sigverify()
        inner.set_sigverify(enabled)
        try:
            yield
        finally:
            inner.set_sigverify(previous)

    def _precheck(self, tx: VersionedTransaction, *, check_blockhash: bool = True) -> object:
        signature = tx.signatures[0]
        if signature in self.records:
            return TransactionErrorFieldless.AlreadyProcessed
        if check_blockhash and not self.blockhash_valid(tx.message.recent_blockhash):
            return TransactionErrorFieldless.BlockhashNotFound
        return None

    # --- block production --------------------------------------------------------

    def produce_block(self) -> list[BundleOutcome]:
        """Execute everything queued into the current slot, then open the next slot."""
        block = self.begin_block()
        outcomes = [o for o in (self.execute(s, block) for s in block.work) if isinstance(o, BundleOutcome)]
        self.finish_block(block)
        return outcomes

    def begin_block(self) -> "Block":
        """Take the queued work, in arrival order, for the block of the current slot."""
        work, self.pending = self.pending, []
        return Block(slot=self.slot, work=work)

    def execute(self, submission: Submission, block: "Block") -> TxRecord | BundleOutcome | None:
        if submission.bundle_id is not None:
            outcome = self._execute_bundle(submission)
            if outcome.landed:
                block.count += len(submission.transactions)
                block.tips.append(outcome.tip_lamports)
            return outcome
        tx = submission.transactions[0]
        self.pending_signatures.discard(tx.signatures[0])
        record = self._execute(tx, bundle_id=None)
        if record is not None:
            self._landed(record, submission.origin, unit=True)
            block.count += 1
            self._note_fees(tx, block.fees)
        return record

    def hold_bundles(self, work: list[Submission]) -> list[Submission]:
        """A leader without Jito's client takes no bundles: the block gets the rest of `work`.

        A bundle waits (first in the queue) for a Jito leader's slot while its blockhash is
        valid; once it has expired the bundle fails, as the block engine drops it.
        """
        keep: list[Submission] = []
        held: list[Submission] = []
        for submission in work:
            if submission.bundle_id is None:
                keep.append(submission)
            elif self.blockhash_valid(submission.transactions[0].message.recent_blockhash):
                held.append(submission)
            else:
                signatures = [str(tx.signatures[0]) for tx in submission.transactions]
                self.bundles[submission.bundle_id] = BundleOutcome(
                    submission.bundle_id, self.slot, False, signatures, err=TransactionErrorFieldless.BlockhashNotFound
                )
        self.pending = held + self.pending
        return keep

    def requeue(self, submissions: list[Submission]) -> None:
        """Work a full block could not take goes first into the next one."""
        self.pending = submissions + self.pending

    def finish_block(self, block: "Block") -> None:
        parent = next(reversed(self.blocks)) if self.blocks else GENESIS_SLOT - 1
        self.block_counts[self.slot] = block.count
        self.slot_times[self.slot] = time.time_ns()
        self.prioritization[self.slot] = block.fees
        while len(self.prioritization) > 150:
            self.prioritization.popitem(last=False)
        self._advance()
        self.blocks[self.slot - 1] = (self.block_height, self.latest_blockhash[0], parent)

    def parent_blockhash(self, slot: int) -> Hash | None:
        """The blockhash a block was built on (its parent's), from the blocks kept or the window."""
        parent = self.blocks[slot][2]
        if parent in self.blocks:
            return self.blocks[parent][1]
        return self.blockhash_by_slot.get(parent)

    def block_transactions(self, slot: int) -> list[TxRecord]:
        return [record for record in self.records.values() if record.slot == slot]

    def skip_slot(self) -> None:
        """The current slot's leader produced no block: the slot passes, the block height and the blockhash stay.

        Queued work stays queued for the next block (agave's send-transaction-service keeps
        retrying an RPC transaction to the upcoming leaders until its blockhash expires).
        """
        self.skipped.append(self.slot)
        self.slot += 1
        self._set_clock()

    def _advance(self) -> None:
        self.slot += 1
        self.block_height += 1
        self._set_clock()
        self._new_blockhash()
        if self.history_slots and self.slot % 1000 == 0:
            self._prune()

    def _set_clock(self) -> None:
        clock = self.svm.get_clock()
        clock.slot = self.slot
        clock.unix_timestamp = int(time.time())
        self.svm.set_clock(clock)

    def _prune(self) -> None:
        # The ledger's history is also where the status cache reads from: never prune below it.
        horizon = min(self.slot - self.history_slots, self.status_cache_floor())
        for signature in [s for s, r in self.records.items() if r.slot < horizon]:
            del self.records[signature]
        for key in [k for k in self.slot_times if k < horizon]:
            self.slot_times.pop(key, None)
            self.block_counts.pop(key, None)
        while self.blocks and next(iter(self.blocks)) < horizon:
            self.blocks.popitem(last=False)
        while self.skipped and self.skipped[0] < horizon:
            self.skipped.popleft()

    def _note_fees(self, tx: VersionedTransaction, slot_fees: dict[Pubkey, int]) -> None:
        price = compute_unit_price(tx)
        for key in writable_keys(tx, self._lookup_loader()):
            slot_fees[key] = min(slot_fees.get(key, price), price)

    def _execute(self, tx: VersionedTransaction, bundle_id: str | None) -> TxRecord | None:
        """Execute one transaction into the current block; None when the leader drops it."""
        err = self._precheck(tx)
        if err is not None:
            log.debug("dropped %s: %s", tx.signatures[0], err)
            self.last_drop_error = err
            return None
        keys, loaded_w, loaded_r = resolve_account_keys(tx, self._lookup_loader())
        all_keys = keys + loaded_w + loaded_r
        pre_balances = [self._lamports(k) for k in all_keys]
        pre_tokens = self._token_balances(all_keys)
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            err, meta = result.err(), result.meta()
            if not lands_with_error(err):
                self.last_drop_error = err
                return None
        else:
            err, meta = None, result
        record = TxRecord(
            signature=tx.signatures[0],
            transaction=tx,
            slot=self.slot,
            block_time=int(time.time()),
            err=err,
            fee=meta.fee(),
            logs=list(meta.logs()),
            compute_units=meta.compute_units_consumed(),
            account_keys=keys,
            loaded_writable=loaded_w,
            loaded_readonly=loaded_r,
            pre_balances=pre_balances,
            post_balances=[self._lamports(k) for k in all_keys],
            pre_token_balances=pre_tokens,
            post_token_balances=self._token_balances(all_keys),
            bundle_id=bundle_id,
        )
        self.records[record.signature] = record
        return record

    def _landed(self, record: TxRecord, origin: Origin | None, *, unit: bool) -> None:
        """Attribute a landed transaction to the copy that delivered it; count landed transactions and
        units (a bundle counts once) per origin."""
        record.origin = origin
        self.landed_transactions[origin] += 1
        if unit:
            self.landed_units[origin] += 1

    def _execute_bundle(self, submission: Submission) -> BundleOutcome:
        """All or nothing: snapshot every account the bundle may write, restore them all on any failure."""
        bundle_id = submission.bundle_id or ""
        signatures = [str(tx.signatures[0]) for tx in submission.transactions]
        outcome = self.try_bundle(submission.transactions, commit=True, tip_accounts=self.tip_accounts)
        outcome.bundle_id = bundle_id
        outcome.signatures = signatures
        if outcome.landed:
            for index, tx in enumerate(submission.transactions):
                record = self.records[tx.signatures[0]]
                record.bundle_id = bundle_id
                self._landed(record, submission.origin, unit=index == 0)
        elif (earlier := self.bundles.get(bundle_id)) is not None and earlier.landed:
            return outcome  # a second copy of a landed bundle (sent to two regions) fails; the bundle stays landed
        self.bundles[bundle_id] = outcome
        return outcome

    def try_bundle(self, transactions: Sequence[VersionedTransaction], *, commit: bool, tip_accounts: Iterable[Pubkey] = ()) -> BundleOutcome:
        """Apply a bundle in order; keep it only if every transaction succeeds and `commit` is set.

        The outcome's `tip_lamports` is what the bundle paid to `tip_accounts`, for the block
        engine's minimum-tip check.
        """
        loader = self._lookup_loader()
        touched: dict[Pubkey, Account | None] = {}
        for tx in transactions:
            for key in writable_keys(tx, loader):
                touched.setdefault(key, self.svm.get_account(key))
        tips = list(tip_accounts)
        tips_before = {k: self._lamports(k) for k in tips}
        records: list[TxRecord] = []
        failure: object = None
        for tx in transactions:
            self.last_drop_error = None
            record = self._execute(tx, bundle_id=None)
            if record is None:
                failure = self.last_drop_error or "Dropped"
                break
            records.append(record)
            if record.err is not None:
                failure = record.err
                break
        tip_paid = sum(self._lamports(k) - tips_before[k] for k in tips)
        landed = failure is None
        if not landed or not commit:
            for record in records:
                self.records.pop(record.signature, None)
            for key, account in touched.items():
                self.svm.set_account(key, account if account is not None else Account(0, b"", SYSTEM_PROGRAM))
        return BundleOutcome(bundle_id="", slot=self.slot, landed=landed, signatures=[], err=failure, tip_lamports=tip_paid)

    # --- reads ----------------------------------------------------------------

    def _lamports(self, key: Pubkey) -> int:
        account = self.svm.get_account(key)
        return account.lamports if account is not None else 0

    def _lookup_loader(self):
        def load(table: Pubkey) -> list[Pubkey] | None:
            account = self.svm.get_account(table)
            if account is None:
                return None
            return list(AddressLookupTable.deserialize(bytes(account.data)).addresses)

        return load

    def _token_balances(self, keys: list[Pubkey]) -> list[TokenBalance]:
        balances = []
        for index, key in enumerate(keys):
            account = self.svm.get_account(key)
            if account is None or account.owner not in TOKEN_PROGRAMS or len(account.data) < TOKEN_ACCOUNT_LEN:
                continue
            data = bytes(account.data)
            if len(data) > TOKEN_ACCOUNT_LEN and data[TOKEN_ACCOUNT_LEN] != 2:  # Token-2022 account type byte
                continue
            mint = Pubkey(data[0:32])
            mint_account = self.svm.get_account(mint)
            decimals = bytes(mint_account.data)[44] if mint_account is not None and len(mint_account.data) > 44 else 0
            balances.append(
                TokenBalance(
                    account_index=index,
                    mint=str(mint),
                    owner=str(Pubkey(data[32:64])),
                    program_id=str(account.owner),
                    amount=int.from_bytes(data[64:72], "little"),
                    decimals=decimals,
                )
            )
        return balances

    def status_cache_floor(self) -> int:
        """The oldest slot whose statuses the bank's status cache still holds.

        agave runtime/src/status_cache.rs: `add_root` keeps at most MAX_CACHE_ENTRIES roots
        (`purge_roots` forgets the oldest), and `do_get_status` answers only for a slot that
        is a kept root or an ancestor of the asking bank. So the cache is counted from the
        newest root (our finalized slot), not from the tip: a status stays readable for
        status_cache_slots + finalized_depth slots. (Slots are counted here, skipped ones
        included, where agave counts roots, which are blocks: with skipped slots the real
        cache reaches a little further back.)
        """
        return self.slot_at(Commitment.finalized) - self.status_cache_slots + 1

    def status(self, signature: Signature, *, search_history: bool = False) -> dict | None:
        """getSignatureStatuses' value for one signature, or None when unknown.

        As agave rpc/src/rpc.rs `get_signature_statuses`: the status cache first (the
        processed bank's `get_signature_status_slot`), then, only with
        `searchTransactionHistory`, the blockstore's *rooted* statuses
        (`get_rooted_transaction_status`, kept at or below the highest super-majority
        root), which answer as finalized with no confirmations count.
        """
        record = self.records.get(signature)
        if record is None:
            return None
        err = error_json(record.err)
        status = {"Ok": None} if err is None else {"Err": err}
        if record.slot >= self.status_cache_floor():
            commitment = self.commitment_of(record.slot)
            # agave counts 0 confirmations for a transaction of the bank still being filled.
            depth = max(0, self.processed_slot() - record.slot)
            return {
                "slot": record.slot,
                "confirmations": None if commitment is Commitment.finalized else depth,
                "status": status,
                "err": err,
                "confirmationStatus": commitment.value,
            }
        if search_history and self.reaches(record.slot, Commitment.finalized):
            return {"slot": record.slot, "confirmations": None, "status": status, "err": err, "confirmationStatus": "finalized"}
        return None


def resolve_account_keys(tx: VersionedTransaction, load_table) -> tuple[list[Pubkey], list[Pubkey], list[Pubkey]]:
    """Static keys, then addresses loaded from lookup tables (writable, then read-only)."""
    message = tx.message
    keys = list(message.account_keys)
    loaded_w: list[Pubkey] = []
    loaded_r: list[Pubkey] = []
    if isinstance(message, MessageV0):
        for lookup in message.address_table_lookups:
            addresses = load_table(lookup.account_key) or []
            loaded_w += [addresses[i] for i in bytes(lookup.writable_indexes) if i < len(addresses)]
            loaded_r += [addresses[i] for i in bytes(lookup.readonly_indexes) if i < len(addresses)]
    return keys, loaded_w, loaded_r


def writable_keys(tx: VersionedTransaction, load_table) -> list[Pubkey]:
    """Every account the transaction write-locks, from its header and lookups."""
    message = tx.message
    header = message.header
    keys = list(message.account_keys)
    signed = header.num_required_signatures
    writable = [k for i, k in enumerate(keys[:signed]) if i < signed - header.num_readonly_signed_accounts]
    unsigned = keys[signed:]
    writable += unsigned[: len(unsigned) - header.num_readonly_unsigned_accounts]
    if isinstance(message, MessageV0):
        _, loaded_w, _ = resolve_account_keys(tx, load_table)
        writable += loaded_w
    return writable


COMPUTE_BUDGET_PROGRAM = Pubkey.from_string(COMPUTE_BUDGET_PROGRAM_ID)
# solana-compute-budget: the limit a transaction gets without SetComputeUnitLimit, per instruction
# (builtins get MAX_BUILTIN_ALLOCATION_COMPUTE_UNIT_LIMIT), and the most any transaction may ask for.
DEFAULT_INSTRUCTION_COMPUTE_UNIT_LIMIT = 200_000
MAX_BUILTIN_ALLOCATION_COMPUTE_UNIT_LIMIT = 3_000
MAX_COMPUTE_UNIT_LIMIT = 1_400_000
BUILTINS = {SYSTEM_PROGRAM, COMPUTE_BUDGET_PROGRAM, LOOKUP_TABLE_PROGRAM}


def compute_unit_price(tx: VersionedTransaction) -> int:
    """The SetComputeUnitPrice value (micro-lamports per CU), 0 when absent."""
    message = tx.message
    keys = list(message.account_keys)
    for ix in message.instructions:
        if keys[ix.program_id_index] == COMPUTE_BUDGET_PROGRAM:
            parsed = parse_compute_budget(bytes(ix.data))
            if parsed is not None and parsed.exact and parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE:
                return parsed.value
    return 0


def requested_compute_units(tx: VersionedTransaction) -> int:
    """What the transaction asks for: its SetComputeUnitLimit, else agave's default for its instructions
    (capped at 1.4M). The auction ranks tips by it (Jito: "tip/cus-requested") and block space is charged by it."""
    message = tx.message
    keys = list(message.account_keys)
    default = 0
    for ix in message.instructions:
        program = keys[ix.program_id_index]
        if program == COMPUTE_BUDGET_PROGRAM:
            parsed = parse_compute_budget(bytes(ix.data))
            if parsed is not None and parsed.tag == ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT:
                return min(parsed.value, MAX_COMPUTE_UNIT_LIMIT)
        default += MAX_BUILTIN_ALLOCATION_COMPUTE_UNIT_LIMIT if program in BUILTINS else DEFAULT_INSTRUCTION_COMPUTE_UNIT_LIMIT
    return min(default, MAX_COMPUTE_UNIT_LIMIT)
