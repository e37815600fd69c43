"""The status poller forgets a status the chain no longer has (issue 20): a transaction seen at
`processed` on a fork that is then dropped is unknown again, so it is rebroadcast and its expiry
is checked, instead of waiting out the attempt's 5 minutes. Server-less: the node is a stub."""
from __future__ import annotations

import asyncio

from executor.confirm import SignatureWatcher, follow
from venue.rpc import SignatureStatus

SIGNATURE = "5" * 64
LAST_VALID = 100


class ForkedNode:
    """A node that saw the transaction at `processed` on a fork for 3 polls, then lost it; the
    block height passes the transaction's lastValidBlockHeight and it never lands."""

    def __init__(self) -> None:
        self.polls = 0
        self.height = 95

    async def block_height(self, commitment: str) -> int:
        self.height += 1
        return self.height

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        self.polls += 1
        seen = SignatureStatus(slot=7, confirmation_status="processed", err=None)
        return [seen if self.polls <= 3 else None for _ in signatures]

    async def landed_or_expired(self, signature: str, commitment: str) -> tuple[int, SignatureStatus | None]:
        return self.height, None


async def test_a_status_on_a_dropped_fork_is_forgotten_and_the_transaction_expires():
    node = ForkedNode()
    watcher = SignatureWatcher(node, poll_s=0.01)
    watcher.start()
    rebroadcasts: list[float] = []

    async def rebroadcast() -> None:
        rebroadcasts.append(asyncio.get_running_loop().time())

    try:
        confirmation = await asyncio.wait_for(
            follow("p", SIGNATURE, LAST_VALID, watcher, commitment="confirmed", rebroadcast=rebroadcast, rebroadcast_s=0.01,
                   may_resend=lambda: True, heartbeat=lambda _: None),
            timeout=5,
        )  # fmt: skip
    finally:
        await watcher.stop()
    assert not confirmation.landed and confirmation.error_code == "BLOCKHASH_EXPIRED"
    assert rebroadcasts, "resent once the fork's status was gone"
