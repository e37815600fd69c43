"""The plan's one signed transaction, recorded outside Temporal.

Local activities re-run whenever their workflow task fails, and a re-run build takes a
newer blockhash: signing that would make a second transaction that can land beside the
first. So the first signed transaction of a plan is written create-only to a JetStream
key-value bucket before anything is sent (usually while the workflow start is in flight),
and every later run reuses it. The run that wrote the record knows whether it sent it; a
run that finds an earlier run's record cannot, so it treats those bytes as possibly on
the wire: it resends them, or, halted or past the deadline, only watches them, and never
reports HALTED or DEADLINE_EXCEEDED for a transaction that lands.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, replace

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from workflows.stages import SignedTransaction

BUCKET = "plan_records"
RECORD_TTL_S = 7 * 24 * 3600  # longer than the namespace retention (72 h in dev and compose), so no plan id is ever signed twice


def _key(kind: str, plan_id: str) -> str:
    # Plan ids may hold ':' which KV keys may not; url-safe base64 keeps them distinct and valid.
    return f"{kind}.{base64.urlsafe_b64encode(plan_id.encode()).decode().rstrip('=')}"


class PlanRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js, bucket: str = BUCKET) -> "PlanRecords":
        from nats.js.api import KeyValueConfig, StorageType

        try:
            kv = await js.key_value(bucket)
        except Exception:
            kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=RECORD_TTL_S, storage=StorageType.FILE))
        return cls(kv)

    async def keep_first(self, signed: SignedTransaction) -> SignedTransaction:
        """Record `signed` unless the plan already has a signed transaction; return the one that counts."""
        try:
            await self.kv.create(_key("signed", signed.plan_id), json.dumps(asdict(signed)).encode())
            return signed
        except KeyWrongLastSequenceError:
            return await self.signed(signed.plan_id)

    async def signed(self, plan_id: str) -> SignedTransaction:
        entry = await self.kv.get(_key("signed", plan_id))
        return replace(SignedTransaction(**json.loads(entry.value)), reused=True)

    async def recorded(self, plan_id: str) -> SignedTransaction | None:
        """The plan's recorded transaction, if an earlier run got that far."""
        try:
            return await self.signed(plan_id)
        except KeyNotFoundError:
            return None
