"""The block-engine regions a worker sends to, each with its own client and health (issue 23).

`JITO_BLOCK_ENGINE_URLS` lists the regions, `name=url` or a bare URL (named by its mainnet host,
`https://<region>.mainnet.block-engine.jito.wtf`, else by host:port); unset, the one
`JITO_BLOCK_ENGINE_URL` is the only "region". Each region has a `JitoClient` and an `Endpoint` on
a `HealthBoard` (venue/health.py: latency EWMA, circuit breaker, token bucket at Jito's published
limit), so the choice of region is the board's and failover needs no operator.

Two ways to choose, for two kinds of send:

* `ready(k)`: up to k regions that take a request *now* (breaker allows it, a token is free), best
  first. A race uses it: a region that would make the bundle wait is skipped, since the race's
  other paths are already on their way.
* `soonest()`: the region whose token comes first, best first among equals. A plan sent only as a
  bundle (`jito_bundle`) waits that long; spreading a burst over every region's limit is what the
  list of regions is for.

Bundle status reads (`inflight_statuses`) do not spend the send budget: Jito's 429 reads "Limit: 1
per second for txn requests" (copied by the local engine, localnet/blockengine.py), and
sendBundle/sendTransaction are its txn requests. They are paced on their own, once per region per
`JITO_BUNDLE_STATUS_POLL_MS`, by the caller (executor/bundles.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .health import Endpoint, EndpointUnavailable, HealthBoard
from .jito import InflightStatus, JitoClient, JitoError

MAINNET_SUFFIX = ".mainnet.block-engine.jito.wtf"


def region_name(entry: str) -> tuple[str, str]:
    """`name=url` or a bare URL -> (name, url). A mainnet URL is named by its region's host."""
    name, sep, url = entry.partition("=")
    if sep and "://" not in name:
        return name.strip(), url.strip()
    url = entry.strip()
    host = urlsplit(url).hostname or url
    if host.endswith(MAINNET_SUFFIX):
        return host.removesuffix(MAINNET_SUFFIX), url
    port = urlsplit(url).port
    return (f"{host}:{port}" if port else host), url


def parse_regions(entries: Iterable[str]) -> dict[str, str]:
    regions: dict[str, str] = {}
    for entry in entries:
        name, url = region_name(entry)
        if name in regions:
            raise ValueError(f"block-engine region {name!r} is listed twice")
        regions[name] = url
    return regions


@dataclass(frozen=True)
class RegionSend:
    """What one region said to one send: the bundle id it accepted, or the error."""

    region: str
    bundle_id: str | None = None
    error: BaseException | None = None


class BlockEngines:
    """The worker's block-engine regions: one client and one health endpoint each."""

    def __init__(self, clients: dict[str, JitoClient], board: HealthBoard) -> None:
        if set(clients) != set(board.endpoints):
            raise ValueError("every region needs a client and an endpoint")
        self.clients = clients
        self.board = board

    @classmethod
    def from_settings(cls, settings, *, uuid: str | None = None, timeout_s: float = 2.0) -> BlockEngines:
        regions = parse_regions(settings.jito_block_engine_urls)
        board = HealthBoard.from_settings(settings, regions)
        clients = {name: JitoClient(url, uuid=uuid, timeout_s=timeout_s) for name, url in regions.items()}
        return cls(clients, board)

    @property
    def names(self) -> list[str]:
        return list(self.clients)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    # --- choosing ----------------------------------------------------------------------------

    def ready(self, k: int, exclude: Sequence[str] = ()) -> list[Endpoint]:
        """Up to k regions that take a request now, best first; their tokens and probes are taken."""
        chosen: list[Endpoint] = []
        for endpoint in self.board.ranked():
            if len(chosen) >= k:
                break
            if endpoint.name in exclude or endpoint.limiter.wait_now() > 0 or not endpoint.breaker.allow():
                continue
            endpoint.limiter.reserve()
            chosen.append(endpoint)
        return chosen

    def soonest(self, exclude: Sequence[str] = (), max_wait_s: float | None = None) -> tuple[Endpoint, float] | None:
        """The region whose token comes first (best first among equals), taken, and the wait for it in
        seconds; None, taking nothing, when that wait would be over `max_wait_s`. Excluded regions are
        chosen only when no other may take a request."""
        for skip in (exclude, ()):
            candidates = [e for e in self.board.ranked() if e.name not in skip]
            if candidates:
                break
        else:
            raise EndpointUnavailable("every block-engine region's breaker is open")
        best = min(candidates, key=lambda e: e.limiter.wait_now())  # min keeps the ranking among equal waits
        if max_wait_s is not None and best.limiter.wait_now() > max_wait_s:
            return None
        if not best.breaker.allow():  # a half-open region's probe was taken meanwhile
            raise EndpointUnavailable(f"block-engine region {best.name} is probing")
        return best, best.limiter.reserve()

    # --- sending -----------------------------------------------------------------------------

    async def send_bundle(self, endpoint: Endpoint, raw: bytes) -> str:
        """sendBundle of one transaction to `endpoint` (its token already taken); health recorded."""
        return await self._recorded(endpoint, self.clients[endpoint.name].send_bundle([raw]))

    async def send_transaction(self, endpoint: Endpoint, raw: bytes) -> str:
        """Jito's sendTransaction (not bundle-only: the engine forwards it to the leader as a transaction)."""
        signature, _ = await self._recorded(endpoint, self.clients[endpoint.name].send_transaction(raw))
        return signature

    async def inflight_statuses(self, region: str, ids: Sequence[str]) -> list[InflightStatus]:
        return await self._recorded(self.board[region], self.clients[region].inflight_statuses(ids))

    async def _recorded(self, endpoint: Endpoint, request):
        started = time.monotonic()
        try:
            answer = await request
        except (JitoError, TimeoutError, OSError) as error:
            endpoint.record_failure(error)
            raise
        endpoint.record_success((time.monotonic() - started) * 1000.0)
        return answer


__all__ = ["BlockEngines", "RegionSend", "parse_regions", "region_name"]
