"""Where every transaction enters the cluster, whichever channel it came by.

It records the wire view the tests and the benchmark read (first-seen time, channels,
times received, landed slot), applies the channel's injected faults, and queues the
work for the next block.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from venue import PACKET_DATA_SIZE

from .faults import FaultPlan, Verdict
from .ledger import Ledger, Origin, Submission, error_json

log = logging.getLogger("localnet.intake")

MAX_WIRE_RECORDS = 200_000


class IntakeRefused(Exception):
    """The channel refuses the transaction; `kind` says how the protocol front-end should answer."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "malformed" | "too_large" | "rejected"


@dataclass
class WireRecord:
    """What the cluster saw of one signature on the wire."""

    signature: str
    first_seen_ns: int
    # The slot being filled when the cluster first received this signature, by any channel (a copy the
    # RPC node holds before forwarding counts from its arrival): landedSlot - firstSeenSlot is the
    # slots-to-land the cluster saw, whoever sent it and however.
    first_seen_slot: int | None = None
    channels: list[str] = field(default_factory=list)
    times_received: int = 0
    dropped_by_fault: int = 0
    bundle_ids: list[str] = field(default_factory=list)
    memos: list[str] = field(default_factory=list)  # SPL Memo texts: lets tests and the benchmark attribute a transaction to its plan

    def to_json(self, ledger: Ledger) -> dict:
        record = ledger.records.get(Signature.from_string(self.signature))
        return {
            "signature": self.signature,
            "firstSeenNs": self.first_seen_ns,
            "firstSeenSlot": self.first_seen_slot,
            "channels": self.channels,
            "timesReceived": self.times_received,
            "droppedByFault": self.dropped_by_fault,
            "bundleIds": self.bundle_ids,
            "memos": self.memos,
            "landedSlot": record.slot if record else None,
            "err": error_json(record.err) if record else None,
            # The channel and region of the copy that was executed (null until it lands, or for the cluster's own work).
            "landedVia": record.origin.to_json() if record and record.origin else None,
        }


MEMO_PROGRAMS = {
    Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"),  # SPL Memo v2
    Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo"),  # SPL Memo v1
}


def memo_texts(tx: VersionedTransaction) -> list[str]:
    keys = tx.message.account_keys
    texts = []
    for instruction in tx.message.instructions:
        if instruction.program_id_index < len(keys) and keys[instruction.program_id_index] in MEMO_PROGRAMS:
            texts.append(bytes(instruction.data).decode("utf-8", errors="replace"))
    return texts


def derive_bundle_id(transactions: list[VersionedTransaction]) -> str:
    """Jito's bundle id: hex SHA-256 over the first signatures (base58) joined by ','.

    jito-foundation/jito-solana bundle/src/lib.rs `derive_bundle_id`.
    """
    joined = ",".join(str(tx.signatures[0]) for tx in transactions)
    return hashlib.sha256(joined.encode()).hexdigest()


def decode_transaction(raw: bytes) -> VersionedTransaction:
    if not raw:
        raise IntakeRefused("malformed", "empty transaction")
    if len(raw) > PACKET_DATA_SIZE:
        raise IntakeRefused("too_large", f"transaction of {len(raw)} bytes is over the {PACKET_DATA_SIZE}-byte packet limit")
    try:
        return VersionedTransaction.from_bytes(raw)
    except Exception as error:
        raise IntakeRefused("malformed", f"failed to deserialize transaction: {error}") from None


class Intake:
    def __init__(self, ledger: Ledger, faults: FaultPlan) -> None:
        self.ledger = ledger
        self.faults = faults
        self.wire: OrderedDict[str, WireRecord] = OrderedDict()
        self.counters: Counter[str] = Counter()
        # RPC transactions the node holds before forwarding them (faults.rpc.forward_delay_slots): (due slot, work).
        self.forwarding: list[tuple[int, Submission]] = []

    def forward_due(self, slot: int) -> None:
        """Called as the block of `slot` begins: what the RPC node held until this slot reaches the leader's queue."""
        if not self.forwarding:
            return
        due = [submission for at, submission in self.forwarding if at <= slot]
        self.forwarding = [(at, submission) for at, submission in self.forwarding if at > slot]
        for submission in due:
            self.ledger.enqueue(submission)

    def _see(self, tx: VersionedTransaction, channel: str, now_ns: int) -> WireRecord:
        signature = str(tx.signatures[0])
        record = self.wire.get(signature)
        if record is None:
            record = self.wire[signature] = WireRecord(signature=signature, first_seen_ns=now_ns, first_seen_slot=self.ledger.slot, memos=memo_texts(tx))
            if len(self.wire) > MAX_WIRE_RECORDS:
                self.wire.popitem(last=False)
        record.times_received += 1
        if channel not in record.channels:
            record.channels.append(channel)
        return record

    def rate_limited(self, channel: str) -> bool:
        """The injected 429 roll for one request, counted."""
        if self.faults.rate_limited(channel):
            self.counters[f"{channel}.rate_limited"] += 1
            return True
        return False

    def verdict(self, channel: str) -> Verdict:
        """The injected fate (accept, drop, reject) of one transaction or bundle, counted."""
        verdict = self.faults.decide(channel)
        if verdict is not Verdict.accept:
            self.counters[f"{channel}.{verdict.value}"] += 1
        return verdict

    def receive(self, tx: VersionedTransaction, channel: str, verdict: Verdict = Verdict.accept, region: str | None = None) -> Signature:
        """A lone transaction (rpc sendTransaction, TPU stream, Jito sendTransaction; `region`: the block-engine region it came through)."""
        now_ns = time.time_ns()
        self.counters[f"{channel}.received"] += 1
        record = self._see(tx, channel, now_ns)
        if verdict is Verdict.reject:
            raise IntakeRefused("rejected", "transaction rejected (injected fault)")
        if verdict is not Verdict.accept:
            record.dropped_by_fault += 1
            return tx.signatures[0]
        submission = Submission([tx], received_ns=now_ns, origin=Origin(channel, region))
        held = self.faults.rpc.forward_delay_slots if channel == "rpc" else 0
        if held:
            self.counters["rpc.forward_delayed"] += 1
            self.forwarding.append((self.ledger.slot + held, submission))
        else:
            self.ledger.enqueue(submission)
        return tx.signatures[0]

    def receive_bundle(self, transactions: list[VersionedTransaction], verdict: Verdict = Verdict.accept, region: str | None = None) -> str:
        now_ns = time.time_ns()
        bundle_id = derive_bundle_id(transactions)
        self.counters["bundle.received"] += 1
        for tx in transactions:
            record = self._see(tx, "bundle", now_ns)
            record.bundle_ids.append(bundle_id)
            if verdict is Verdict.drop:
                record.dropped_by_fault += 1
        if verdict is Verdict.reject:
            raise IntakeRefused("rejected", "bundle rejected (injected fault)")
        if verdict is Verdict.drop:
            return bundle_id
        self.ledger.enqueue(Submission(list(transactions), bundle_id=bundle_id, received_ns=now_ns, origin=Origin("bundle", region)))
        return bundle_id
