"""Confirm: follow a sent transaction until the chain says what became of it.

One poller per worker asks getSignatureStatuses for every in-flight signature at once (up to
256 a request; rate limits are per request), every `poll_s` (200 ms by default: the seed's
2 s is far too slow for a 400 ms slot), plus the block height. That answers the common case,
a landing, cheaply from the node's recent status cache.

"Not landed" is never inferred from the poller: its view may predate the signature (a re-run
starts watching a signature no poll has asked about yet), and the status cache forgets old
transactions. A plan is reported as not landed only after one request to one node
(`SolanaRpc.landed_or_expired`) says the block height is past the transaction's
lastValidBlockHeight and the signature has no status, searched through the node's whole
history. Until then the wait goes on, however long the chain or the RPC takes: a result may
be late, never wrong.

While it waits it resends the same bytes every `rebroadcast_s` (rpc to the RPC and its
backups, tpu_direct to the leaders, race to both), but only while the plan may still send:
before its deadline and while no halt is in force. A bundle is not resent on a timer: it is
resent to another region when a region says it dropped it (executor/bundles.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from workflows.events import ErrorCode
from workflows.stages import Confirmation

from venue.rpc import SignatureStatus, SolanaRpc

log = logging.getLogger("hft.confirm")
MAX_STATUSES_PER_REQUEST = 256
LEVELS = {"processed": 0, "confirmed": 1, "finalized": 2}
# With no answer from the chain for this long, an attempt ends (retried by the workflow with
# backoff), so a long RPC outage costs a few history events a minute, not a heartbeat a second.
CHAIN_SILENCE_S = 10.0


class ChainUnavailable(Exception):
    """The chain could not be asked; nothing is known yet. Retried."""


@dataclass
class SeenStatus:
    slot: int
    level: int
    err: object


class SignatureWatcher:
    """The worker's shared status poller."""

    def __init__(self, rpc: SolanaRpc, poll_s: float = 0.2, commitment: str = "confirmed") -> None:
        self.rpc = rpc
        self.poll_s = poll_s
        # The height that decides expiry: never below confirmed, where a block can still be on a dropped fork.
        self.height_commitment = "finalized" if commitment == "finalized" else "confirmed"
        self.watching: dict[str, int] = {}  # signature -> number of waiters
        self.statuses: dict[str, SeenStatus] = {}
        self.block_height: int | None = None
        self.polls_started = 0
        self.polls_done = 0  # the number of the last poll that completed
        self.answered_at = time.monotonic()  # the last time the chain answered
        self.updated = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="signature-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def watch(self, signature: str) -> int:
        """Start watching; returns the number of the last poll started, which predates it."""
        self.watching[signature] = self.watching.get(signature, 0) + 1
        return self.polls_started

    def unwatch(self, signature: str) -> None:
        left = self.watching.get(signature, 1) - 1
        if left <= 0:
            self.watching.pop(signature, None)
            self.statuses.pop(signature, None)
        else:
            self.watching[signature] = left

    def note(self, signature: str, status: SignatureStatus) -> None:
        self.statuses[signature] = SeenStatus(status.slot, LEVELS.get(status.confirmation_status or "", 0), status.err)

    async def _run(self) -> None:
        while True:
            if self.watching:
                try:
                    await self._poll()
                except Exception as error:
                    log.warning("stage=confirm event=poll_failed error=%s", error)
            await asyncio.sleep(self.poll_s)

    async def _poll(self) -> None:
        self.polls_started += 1
        number = self.polls_started
        signatures = list(self.watching)
        height = await self.rpc.block_height(self.height_commitment)
        for start in range(0, len(signatures), MAX_STATUSES_PER_REQUEST):
            chunk = signatures[start : start + MAX_STATUSES_PER_REQUEST]
            for signature, status in zip(chunk, await self.rpc.signature_statuses(chunk)):
                if status is not None:
                    self.note(signature, status)
                else:
                    # Replaced on every poll: a status seen once and gone now was on a fork that was
                    # dropped, and the transaction is back to unknown (rebroadcast and the expiry check
                    # resume). One found in the node's history (landed_or_expired) is noted again there.
                    self.statuses.pop(signature, None)
        self.block_height = height
        self.polls_done = number
        self.answered_at = time.monotonic()
        self.updated.set()
        self.updated = asyncio.Event()


async def follow(
    plan_id: str,
    signature: str,
    last_valid_block_height: int,
    watcher: SignatureWatcher,
    *,
    commitment: str,
    rebroadcast: Callable[[], Awaitable[None]] | None,
    rebroadcast_s: float,
    may_resend: Callable[[], bool],
    heartbeat: Callable[[dict], None],
    between_polls: Callable[[], Awaitable[None]] | None = None,
) -> Confirmation:
    """Until the signature reaches `commitment` or fails on chain (landed), or the chain says it
    never landed (expired). Raises ChainUnavailable when the chain has not answered for a while.
    `between_polls` runs once per turn while it waits (a bundle's statuses and resends)."""
    started = time.monotonic()
    wanted = LEVELS[commitment]
    last_sent = time.monotonic()
    rebroadcasts = 0
    since = watcher.watch(signature)
    try:
        while True:
            seen = watcher.statuses.get(signature)
            # An error seen at a lower level than wanted may be on a fork that gets dropped: wait.
            if seen is not None and seen.level >= wanted:
                err = json.dumps(seen.err) if seen.err is not None else None
                return Confirmation(
                    landed=True, slot=seen.slot, err=err, error_code=ErrorCode.TX_FAILED.value if err else None,
                    confirmed_at_ms=int(time.time() * 1000), rebroadcasts=rebroadcasts, elapsed_ms=_ms_since(started),
                )
            polled_since = watcher.polls_done > since  # a poll that included this signature has answered
            if seen is None and polled_since and watcher.block_height is not None and watcher.block_height > last_valid_block_height:
                try:
                    height, status = await watcher.rpc.landed_or_expired(signature, watcher.height_commitment)
                except Exception as error:
                    log.info("plan=%s stage=confirm event=expiry_check_failed error=%s", plan_id, error)
                else:
                    watcher.answered_at = time.monotonic()
                    if status is None and height > last_valid_block_height:
                        return Confirmation(landed=False, error_code=ErrorCode.BLOCKHASH_EXPIRED.value, rebroadcasts=rebroadcasts, elapsed_ms=_ms_since(started))
                    if status is not None:
                        watcher.note(signature, status)  # landed after all, found in the node's history
                        continue
            if time.monotonic() - max(started, watcher.answered_at) > CHAIN_SILENCE_S:
                raise ChainUnavailable(f"no answer from the chain for {CHAIN_SILENCE_S:.0f} s; the transaction's fate is not known yet")
            if rebroadcast is not None and seen is None and time.monotonic() - last_sent >= rebroadcast_s and may_resend():
                last_sent = time.monotonic()
                rebroadcasts += 1
                try:
                    await rebroadcast()
                except Exception as error:  # the next rebroadcast may get through
                    log.info("plan=%s stage=confirm event=rebroadcast_failed error=%s", plan_id, error)
            if between_polls is not None and seen is None:
                try:
                    await between_polls()
                except Exception as error:  # never the plan's outcome: the chain decides
                    log.info("plan=%s stage=confirm event=between_polls_failed error=%s", plan_id, error)
            heartbeat({"rebroadcasts": rebroadcasts, "blockHeight": watcher.block_height})
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
            # event is set (gh-86296), and a confirm handed over at a worker's stop would run on.
            updated = asyncio.ensure_future(watcher.updated.wait())
            try:
                await asyncio.wait({updated}, timeout=max(0.05, watcher.poll_s * 2))
            finally:
                updated.cancel()
    finally:
        watcher.unwatch(signature)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


__all__ = ["ChainUnavailable", "SignatureWatcher", "follow"]
