"""The plan's record: its one signed transaction (or the proof that it has none), and its one result.

Local activities re-run whenever their workflow task fails, a task can time out on a
worker that is still running it, and a re-run build takes a newer blockhash: signing again
would make a second transaction that can land beside the first. So the plan's fate lives
outside Temporal, in one create-only JetStream key-value entry per plan, written before
anything is sent. Once it exists, the plan's fate is that entry:

- ``signed``: the plan's one transaction. Whoever finds it resends those bytes or, halted or
  late, only watches them. A run that did not write it cannot know whether it went out, so
  before it resends it bumps the entry's revision (``claim``): that is how the writer learns
  someone else may be sending.
- ``void``: the plan sends nothing, ever. Written create-only when a plan ends without a
  transaction, or over the writer's own ``signed`` entry (compare-and-set on the revision it
  wrote) when it refuses to send it. Either write fails if anyone else got there first, and
  then the plan follows whatever the entry holds. Nothing reports "nothing sent" without
  winning that write.

Beside it, ``result.<id>``: the plan's one result, create-only. A re-run that reaches a
different conclusion publishes the stored one, so Temporal, PlanStatus and every subscriber
tell one story; the bridge refuses to start a plan id that already has one, for as long as
the PLANNED stream can redeliver it.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, replace

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from workflows.events import ExecutionResultEvent
from workflows.stages import SignedTransaction

BUCKET = "plan_records"
PLANNED_MAX_AGE_S = 7 * 24 * 3600.0  # how long PLANNED keeps (and can redeliver) a plan
# Outlives every redelivery of the plan and Temporal's retention, so no plan id is ever signed twice.
RECORD_TTL_S = PLANNED_MAX_AGE_S + 24 * 3600.0


def _key(kind: str, plan_id: str) -> str:
    # Plan ids may hold ':' which KV keys may not; url-safe base64 keeps them distinct and valid.
    return f"{kind}.{base64.urlsafe_b64encode(plan_id.encode()).decode().rstrip('=')}"


@dataclass(frozen=True)
class Record:
    """What the plan's entry says, at one revision."""

    revision: int
    signed: SignedTransaction | None  # None: void
    void_code: str | None = None
    void_reason: str | None = None

    @property
    def void(self) -> bool:
        return self.signed is None


def _decode(data: bytes, revision: int) -> Record:
    body = json.loads(data)
    if body.get("state") == "void":
        return Record(revision, None, body.get("code"), body.get("reason"))
    fields = {name: body[name] for name in SignedTransaction.__dataclass_fields__ if name in body}
    return Record(revision, replace(SignedTransaction(**fields), reused=True, elapsed_ms=0.0))


def _signed_entry(signed: SignedTransaction, claims: int = 0) -> bytes:
    body = {**asdict(signed), "state": "signed", "claims": claims}
    body.pop("reused"), body.pop("elapsed_ms")
    return json.dumps(body).encode()


def _void_entry(code: str, reason: str) -> bytes:
    return json.dumps({"state": "void", "code": code, "reason": reason[:500]}).encode()


class PlanRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js, bucket: str = BUCKET, replicas: int = 1) -> "PlanRecords":
        from nats.js.api import KeyValueConfig, StorageType

        try:
            kv = await js.key_value(bucket)
        except Exception:
            kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=RECORD_TTL_S, storage=StorageType.FILE, replicas=replicas))
        return cls(kv)

    # --- the transaction ------------------------------------------------------------------------

    async def read(self, plan_id: str) -> Record | None:
        try:
            entry = await self.kv.get(_key("signed", plan_id))
        except KeyNotFoundError:
            return None
        return _decode(entry.value, entry.revision)

    async def create(self, signed: SignedTransaction) -> tuple[Record, bool]:
        """Make `signed` the plan's transaction unless it has a record already; the record that
        counts, and whether this call wrote it."""
        try:
            revision = await self.kv.create(_key("signed", signed.plan_id), _signed_entry(signed))
            return Record(revision, signed), True
        except KeyWrongLastSequenceError:
            return await self._current(signed.plan_id), False

    async def void(self, plan_id: str, code: str, reason: str, *, over: Record | None = None) -> Record:
        """The plan sends nothing, ever: written create-only, or over `over` (this run's own signed
        entry, unchanged since). Returns the record that counts: the void, or the transaction
        someone recorded or claimed first."""
        key = _key("signed", plan_id)
        try:
            if over is None:
                revision = await self.kv.create(key, _void_entry(code, reason))
            else:
                revision = await self.kv.update(key, _void_entry(code, reason), last=over.revision)
        except KeyWrongLastSequenceError:
            return await self._current(plan_id)
        return Record(revision, None, code, reason)

    async def claim(self, record: Record) -> Record:
        """Before resending a transaction this run did not record: bump the entry's revision, so its
        writer can no longer void it. Returns the claimed record, or the entry as it now is (void)."""
        assert record.signed is not None
        try:
            revision = await self.kv.update(_key("signed", record.signed.plan_id), _signed_entry(record.signed, claims=1), last=record.revision)
            return replace(record, revision=revision)
        except KeyWrongLastSequenceError:
            current = await self._current(record.signed.plan_id)
            return current if current.void else await self.claim(current)

    async def _current(self, plan_id: str) -> Record:
        record = await self.read(plan_id)
        if record is None:  # deleted between the refused write and this read: only by hand
            raise RuntimeError(f"plan {plan_id}: record vanished while it was being written")
        return record

    # --- the result -----------------------------------------------------------------------------

    async def keep_result(self, result: ExecutionResultEvent) -> ExecutionResultEvent:
        """Make `result` the plan's result unless it has one; the one that counts."""
        try:
            await self.kv.create(_key("result", result.plan_id), result.to_wire())
            return result
        except KeyWrongLastSequenceError:
            stored = await self.result(result.plan_id)
            assert stored is not None
            return stored

    async def result(self, plan_id: str) -> ExecutionResultEvent | None:
        try:
            entry = await self.kv.get(_key("result", plan_id))
        except KeyNotFoundError:
            return None
        return ExecutionResultEvent.model_validate_json(entry.value)
