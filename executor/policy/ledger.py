"""The per-wallet, per-minute spend cap's count, shared by every worker through a NATS KV bucket
(rule max_sol_per_wallet_minute)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid

log = logging.getLogger("hft.policy")

SPEND_BUCKET = "wallet_spend"
SPEND_PREFIX = "spend."


def _worker_token(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


class SpendLedger:
    """Lamports each wallet spent over the last `window_s`, summed over every worker.

    Each worker counts its own spend exactly, in memory, per wallet and per second, at the moment
    it passes a transaction for signing (whether or not it lands: an upper bound), and publishes
    it in the KV bucket `wallet_spend` (one key per wallet and worker, written in the background,
    never waited on by a plan). It follows the bucket, so the cap applies to the sum over all
    workers; another worker's latest spend is seen a few milliseconds late, so concurrent plans
    on two workers can overshoot the cap by at most what is in flight between them. The bucket
    is in memory with a 2-minute TTL: a NATS restart forgets at most the last minute."""

    def __init__(self, worker: str = "local", window_s: float = 60.0, kv=None) -> None:
        self.worker = worker
        self.window_s = window_s
        self.kv = kv
        self._mine: dict[str, dict[int, int]] = {}
        self._theirs: dict[str, dict[str, dict[int, int]]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, js, worker_name: str, *, replicas: int = 1, window_s: float = 60.0) -> SpendLedger:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await js.key_value(SPEND_BUCKET)
        except BucketNotFoundError:  # two workers creating an identical bucket at once is accepted
            kv = await js.create_key_value(KeyValueConfig(bucket=SPEND_BUCKET, history=1, ttl=max(120.0, 2 * window_s), storage=StorageType.MEMORY, replicas=replicas))
        return cls(_worker_token(worker_name), window_s, kv)

    def _since(self, now_s: float) -> int:
        return int(now_s - self.window_s)  # seconds after this one are in the window

    def total(self, wallet: str, now_s: float | None = None) -> int:
        since = self._since(time.time() if now_s is None else now_s)
        total = sum(v for s, v in self._mine.get(wallet, {}).items() if s > since)
        for buckets in self._theirs.get(wallet, {}).values():
            total += sum(v for s, v in buckets.items() if s > since)
        return total

    def add(self, wallet: str, lamports: int, now_s: float | None = None) -> int:
        """Count `lamports` for `wallet` now; returns the second it was counted in (for `refund`)."""
        now_s = time.time() if now_s is None else now_s
        second, since = int(now_s), self._since(now_s)
        buckets = self._mine.setdefault(wallet, {})
        for old in [s for s in buckets if s <= since]:
            del buckets[old]
        buckets[second] = buckets.get(second, 0) + lamports
        self._changed(wallet)
        return second

    def refund(self, wallet: str, lamports: int, second: int) -> None:
        buckets = self._mine.get(wallet, {})
        if second in buckets:
            buckets[second] = max(0, buckets[second] - lamports)
            self._changed(wallet)

    def _changed(self, wallet: str) -> None:
        if self.kv is not None:
            self._dirty.add(wallet)
            self._wake.set()

    async def run(self) -> None:
        """Publish this worker's totals and follow the others' (forever, in the background)."""
        if self.kv is None:
            await asyncio.Event().wait()  # nothing to share; like every worker task, it ends only when cancelled
        await asyncio.gather(self._publish_forever(), self._follow_forever())

    async def _publish_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for wallet in dirty:
                since = self._since(time.time())
                body = {"wallet": wallet, "seconds": {str(s): v for s, v in self._mine.get(wallet, {}).items() if s > since}}
                try:
                    await self.kv.put(f"{SPEND_PREFIX}{wallet}.{self.worker}", json.dumps(body).encode())
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - NATS away: the local count still holds; try again
                    log.warning("stage=policy event=spend_publish_failed wallet=%s error=%s", wallet, error)
                    self._dirty.add(wallet)
                    await asyncio.sleep(0.5)
                    self._wake.set()

    async def _follow_forever(self) -> None:
        while True:
            try:
                watcher = await self.kv.watch(SPEND_PREFIX + ">")
                async for entry in watcher:
                    if entry is None or entry.value is None or entry.operation is not None:
                        continue
                    wallet, _, worker = entry.key[len(SPEND_PREFIX) :].rpartition(".")
                    if worker == self.worker:
                        continue
                    try:
                        seconds = {int(s): int(v) for s, v in json.loads(entry.value)["seconds"].items()}
                    except (ValueError, KeyError, TypeError):
                        log.warning("stage=policy event=bad_spend_entry key=%s", entry.key)
                        continue
                    self._theirs.setdefault(wallet, {})[worker] = seconds
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - NATS away: keep the last view, follow again
                log.warning("stage=policy event=spend_watch_failed error=%s; following again in 1 s", error)
                await asyncio.sleep(1.0)
