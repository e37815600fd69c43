"""Confirm: follow a submitted transaction to its true outcome.

One poller per worker asks getSignatureStatuses for every in-flight signature at once
(up to 256 a request; rate limits are per request), every `poll_s` (200 ms by default:
the seed's 2 s is far too slow for a 400 ms slot), plus the confirmed block height to
know when a blockhash has expired. Each confirm activity waits on its signature,
heartbeats, and rebroadcasts the same bytes every `rebroadcast_s` (rpc
plans, to the RPC and its backups; a bundle is sent once).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable


from workflows.events import ErrorCode
from workflows.stages import Confirmation, ConfirmRequest

from .rpc import SolanaRpc

log = logging.getLogger("hft.confirm")
MAX_STATUSES_PER_REQUEST = 256
LEVELS = {"processed": 0, "confirmed": 1, "finalized": 2}
WANTED = {"processed": 0, "confirmed": 1, "finalized": 2}


@dataclass
class SeenStatus:
    slot: int
    level: int
    err: object


class SignatureWatcher:
    """The worker's shared status poller."""

    def __init__(self, rpc: SolanaRpc, poll_s: float = 0.2) -> None:
        self.rpc = rpc
        self.poll_s = poll_s
        self.watching: dict[str, int] = {}  # signature -> number of waiters
        self.statuses: dict[str, SeenStatus] = {}
        self.block_height: int | None = None
        self.updated = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="signature-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def watch(self, signature: str) -> None:
        self.watching[signature] = self.watching.get(signature, 0) + 1

    def unwatch(self, signature: str) -> None:
        left = self.watching.get(signature, 1) - 1
        if left <= 0:
            self.watching.pop(signature, None)
            self.statuses.pop(signature, None)
        else:
            self.watching[signature] = left

    async def _run(self) -> None:
        while True:
            if self.watching:
                try:
                    await self._poll()
                except Exception as error:
                    log.warning("status poll failed: %s", error)
            await asyncio.sleep(self.poll_s)

    async def _poll(self) -> None:
        signatures = list(self.watching)
        self.block_height = await self.rpc.block_height("confirmed")
        for start in range(0, len(signatures), MAX_STATUSES_PER_REQUEST):
            chunk = signatures[start : start + MAX_STATUSES_PER_REQUEST]
            for signature, status in zip(chunk, await self.rpc.signature_statuses(chunk)):
                if status is not None:
                    self.statuses[signature] = SeenStatus(status.slot, LEVELS.get(status.confirmation_status, 0), status.err)
        self.updated.set()
        self.updated = asyncio.Event()


async def follow(
    request: ConfirmRequest,
    watcher: SignatureWatcher,
    *,
    commitment: str,
    rebroadcast: Callable[[], Awaitable[None]] | None,
    rebroadcast_s: float,
    heartbeat: Callable[[dict], None],
) -> Confirmation:
    """Wait until the signature reaches `commitment`, fails on-chain, expires, or the plan's time is up."""
    started = time.monotonic()
    signature = request.signed.signature
    wanted = WANTED[commitment]
    last_sent = time.monotonic()
    rebroadcasts = 0
    watcher.watch(signature)
    try:
        while True:
            seen = watcher.statuses.get(signature)
            now_ms = int(time.time() * 1000)
            # An error seen at a lower level than wanted may be on a fork that gets dropped: wait.
            if seen is not None and seen.level >= wanted:
                err = json.dumps(seen.err) if seen.err is not None else None
                return Confirmation(
                    landed=True, slot=seen.slot, err=err, error_code=ErrorCode.TX_FAILED.value if err else None,
                    confirmed_at_ms=now_ms, rebroadcasts=rebroadcasts, elapsed_ms=_ms_since(started),
                )
            if seen is None and watcher.block_height is not None and watcher.block_height > request.signed.last_valid_block_height:
                return Confirmation(landed=False, error_code=ErrorCode.BLOCKHASH_EXPIRED.value, rebroadcasts=rebroadcasts, elapsed_ms=_ms_since(started))
            if now_ms > request.give_up_at_ms:
                return Confirmation(landed=False, error_code=ErrorCode.CONFIRMATION_TIMEOUT.value, rebroadcasts=rebroadcasts, elapsed_ms=_ms_since(started))
            if rebroadcast is not None and seen is None and time.monotonic() - last_sent >= rebroadcast_s:
                last_sent = time.monotonic()
                rebroadcasts += 1
                try:
                    await rebroadcast()
                except Exception as error:  # the next rebroadcast may get through
                    log.info("plan=%s stage=confirm rebroadcast failed: %s", request.plan_id, error)
            heartbeat({"rebroadcasts": rebroadcasts, "blockHeight": watcher.block_height})
            try:
                await asyncio.wait_for(watcher.updated.wait(), timeout=max(0.05, watcher.poll_s * 2))
            except asyncio.TimeoutError:
                pass
    finally:
        watcher.unwatch(signature)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


__all__ = ["SignatureWatcher", "follow"]
