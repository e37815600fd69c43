"""Which worker processes are alive, and which kill-switch state each has applied.

Each worker process keeps one entry in the JetStream KV bucket `executor_workers` (file
storage, one revision per key), rewritten about every second and at once when its halt
state changes. The key is the worker id with the characters KV keys refuse replaced by
`_`; the value is JSON:

    {"id": "<EXECUTOR_NAME>-<pid>@<host>", "name", "pid", "host",
     "startedAt", "seenAt" (ms since the epoch, the worker's clock),
     "halted": bool, "reason", "by",
     "haltSeq": stream sequence of the last halt it applied, "haltAppliedAt": ms,
     "stateSeq": stream sequence of the last halt or resume it applied}

A worker that stops cleanly deletes its key. One that dies just stops writing: readers
treat an entry older than SILENCE_S as not live, and the bucket's max age removes it a
little later. Liveness compares the worker's clock with the reader's, so hosts must keep
their clocks within a second or so of each other (NTP).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("hft.presence")

WORKERS_BUCKET = "executor_workers"
HEARTBEAT_S = 1.0
#: An entry not rewritten for this long belongs to a dead or cut-off worker.
SILENCE_S = 5.0
#: The bucket drops entries this old; long enough for `status` and `halt --wait` to name a
#: worker that just went silent, short enough that the bucket does not fill with dead ones.
ENTRY_TTL_S = 30.0
#: A heartbeat that cannot be stored within this long is given up; the next one follows.
WRITE_TIMEOUT_S = 2.0


def now_ms() -> int:
    return int(time.time() * 1000)


def worker_id(name: str, pid: int | None = None, host: str | None = None) -> str:
    return f"{name}-{os.getpid() if pid is None else pid}@{host or socket.gethostname()}"


def entry_key(identity: str) -> str:
    return re.sub(r"[^-/_=.A-Za-z0-9]", "_", identity).strip(".") or "_"


@dataclass
class Identity:
    id: str
    name: str
    pid: int
    host: str
    started_at: int = field(default_factory=now_ms)

    @classmethod
    def of_this_process(cls, name: str, identity: str | None = None) -> Identity:
        host = socket.gethostname()
        return cls(id=identity or worker_id(name, os.getpid(), host), name=name, pid=os.getpid(), host=host)


async def open_bucket(js: JetStreamContext, create: bool = True, replicas: int = 1) -> KeyValue | None:
    try:
        return await js.key_value(WORKERS_BUCKET)
    except BucketNotFoundError:
        if not create:
            return None
        # two workers starting together both get here; creating an identical bucket twice is accepted
        return await js.create_key_value(KeyValueConfig(bucket=WORKERS_BUCKET, history=1, ttl=ENTRY_TTL_S, storage=StorageType.FILE, replicas=replicas))


class Presence:
    """This process's entry. `state()` is read at each write, so every write carries the
    state as it is at that moment; writes are serialized so an older state is never stored
    after a newer one."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, identity: Identity, state: Callable[[], dict]) -> None:
        self.js = js
        self.kv = kv
        self.identity = identity
        self.state = state
        self.key = entry_key(identity.id)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._failing = False

    @classmethod
    async def open(cls, js: JetStreamContext, identity: Identity, state: Callable[[], dict], replicas: int = 1) -> Presence:
        return cls(js, await open_bucket(js, replicas=replicas), identity, state)

    def entry(self) -> dict:
        me = self.identity
        return {"id": me.id, "name": me.name, "pid": me.pid, "host": me.host, "startedAt": me.started_at, "seenAt": now_ms(), **self.state()}

    async def write(self) -> bool:
        async with self._lock:
            data = json.dumps(self.entry()).encode()
            try:
                await self.js.publish(f"$KV.{WORKERS_BUCKET}.{self.key}", data, timeout=WRITE_TIMEOUT_S)
            except Exception as error:
                if not self._failing:  # once per outage, not once a second
                    log.warning("stage=presence event=write_failed worker=%s error=%s", self.identity.id, type(error).__name__)
                self._failing = True
                return False
            if self._failing:
                log.info("stage=presence event=write_recovered worker=%s", self.identity.id)
            self._failing = False
            return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name="presence")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.write()

    async def stop(self) -> None:
        """Stop the heartbeat and remove the entry: a worker that stopped is not a live one."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            try:
                await asyncio.wait_for(self.kv.delete(self.key), WRITE_TIMEOUT_S)
            except Exception as error:
                log.warning("stage=presence event=remove_failed worker=%s error=%s", self.identity.id, type(error).__name__)


# --- readers (status, halt --wait) ------------------------------------------------------------------


def decode(value: bytes | None) -> dict | None:
    try:
        entry = json.loads(value or b"")
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("id"), str) else None


def is_live(entry: dict, at_ms: int | None = None) -> bool:
    seen = entry.get("seenAt")
    return isinstance(seen, (int, float)) and (now_ms() if at_ms is None else at_ms) - seen <= SILENCE_S * 1000


class WorkerTable:
    """Every worker entry in the bucket, kept current by a KV watch (deleted keys drop out)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self.revisions: dict[str, int] = {}
        self.changed = asyncio.Event()
        self._watcher = None
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(cls, js: JetStreamContext, create: bool = False) -> WorkerTable:
        table = cls()
        kv = await open_bucket(js, create=create)
        if kv is None:
            return table
        table._watcher = await kv.watchall()
        table._task = asyncio.create_task(table._follow())
        # The watch's "caught up" marker is no proof that its first entries were taken: nats-py
        # sends it when the consumer has nothing pending and the client has handled nothing yet,
        # which is also the case while the deliveries still wait in the client's queue (seen under
        # load: `status` listed no worker at all). So the current entries are read from the
        # stream itself, and the watch brings what changes after; revisions keep the newer one.
        prefix = f"$KV.{WORKERS_BUCKET}."
        info = await js.stream_info(f"KV_{WORKERS_BUCKET}", subjects_filter=f"{prefix}>")
        for subject in info.state.subjects or {}:
            try:
                table._take(await kv.get(subject.removeprefix(prefix)))
            except KeyNotFoundError:  # deleted or purged since (KeyDeletedError is one)
                continue
        return table

    def _take(self, entry: KeyValue.Entry) -> None:
        if (entry.revision or 0) <= self.revisions.get(entry.key, 0):
            return  # older than what the table holds (the watch's replay after the read)
        self.revisions[entry.key] = entry.revision or 0
        if entry.operation in ("DEL", "PURGE"):
            self.entries.pop(entry.key, None)
        elif (decoded := decode(entry.value)) is not None:
            self.entries[entry.key] = decoded
        self.changed.set()

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None:
                self._take(entry)

    def by_id(self) -> dict[str, dict]:
        return {entry["id"]: entry for entry in self.entries.values()}

    def live(self, at_ms: int | None = None) -> list[dict]:
        return sorted((e for e in self.entries.values() if is_live(e, at_ms)), key=lambda e: e["id"])

    def silent(self, at_ms: int | None = None) -> list[dict]:
        return sorted((e for e in self.entries.values() if not is_live(e, at_ms)), key=lambda e: e["id"])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass
