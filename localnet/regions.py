"""Block-engine regions: several Jito block engines in front of the one chain, each on its own port.

Source: jito-labs/jito-docs `docs/source/lowlatencytxnsend.md` (the region table, `https://<region>.mainnet.
block-engine.jito.wtf`, and "Rate Limits": 1 request per second per IP per region, answered 429). Each
region has its own one-way latency, drop rate, per-IP rate limit, a view of the chain that may lag
some slots behind the tip (regions simulate independently: jito-labs/jito-docs pull request 72, a
lagging region's simulation answers `Blockhash not found`), and can be taken down (`refuse`: the port
stops listening; `blackhole`: connections are accepted and never answered) and brought back.

Off unless asked for: with no regions configured the cluster serves only its single `blockEngine`.
"""
from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields

from aiohttp import web

# Short name -> the host name Jito uses in https://<host>.mainnet.block-engine.jito.wtf.
REGION_HOSTS = {
    "ams": "amsterdam",
    "dub": "dublin",
    "fra": "frankfurt",
    "lon": "london",
    "nyc": "ny",
    "slc": "slc",
    "sgp": "singapore",
    "tyo": "tokyo",
}
REGION_NAMES = tuple(REGION_HOSTS)
# "1 request per second per IP per region" (jito-labs/jito-docs docs/source/lowlatencytxnsend.md, "Rate Limits",
# at b5ef793, 2026-02-23: the newest page). It said 5 until commit fa0e59a (2025-02-22), which changed it to 1; the
# issues that asked for this emulation quoted the older 5. A sender with an approved higher limit sets `rate_limit`.
JITO_DEFAULT_RPS = 1.0
DOWN_MODES = ("refuse", "blackhole")
REGION_PORT_BASE = 8920  # with --ports default: ams 8920, dub 8921, ... in REGION_NAMES order
MAX_TRACKED_BUNDLES = 20_000


def region_mainnet_url(name: str) -> str:
    return f"https://{REGION_HOSTS[name]}.mainnet.block-engine.jito.wtf"


@dataclass
class RegionSettings:
    latency_ms: float = 0.0  # one-way: added before the request is handled and again before the answer
    drop: float = 0.0  # share of accepted bundles (with an id) that this region never forwards
    rate_limit: float | None = JITO_DEFAULT_RPS  # txn requests per second per IP; None or 0: no limit
    lag_slots: int = 0  # the region's view of the chain trails the tip by this many slots
    down: str | None = None  # None (up), "refuse" or "blackhole"

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop <= 1.0:
            raise ValueError(f"drop={self.drop} is outside [0, 1]")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms={self.latency_ms} is negative")
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError(f"rate_limit={self.rate_limit} is negative")
        if not isinstance(self.lag_slots, int) or self.lag_slots < 0:
            raise ValueError(f"lag_slots={self.lag_slots} must be a whole number of slots, 0 or more")
        if self.down not in (None, *DOWN_MODES):
            raise ValueError(f"down={self.down!r}: expected null, 'refuse' or 'blackhole'")

    def merged(self, changes: dict) -> "RegionSettings":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown region setting(s): {sorted(unknown)}; expected {sorted(known)}")
        return RegionSettings(**(asdict(self) | changes))


def parse_regions(spec: str | dict | None, base: dict[str, RegionSettings] | None = None) -> dict[str, RegionSettings]:
    """`ams,fra,nyc` (Jito's defaults for each) or JSON `{"ams": {"latency_ms": 5, "drop": 0.3}, ...}`.

    With `base` (a market profile's regions), the spec is merged into it: a region it names keeps the
    base's settings it does not change, and the base's other regions stay."""
    regions = dict(base or {})
    if not spec:
        return regions
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            import json

            spec = json.loads(text)
        else:
            spec = {name.strip(): {} for name in text.split(",") if name.strip()}
    if not isinstance(spec, dict):
        raise ValueError("expected a comma-separated list of regions or a JSON object")
    for name, settings in spec.items():
        if name not in REGION_HOSTS:
            raise ValueError(f"unknown region {name!r}; Jito's regions are {list(REGION_NAMES)}")
        if not isinstance(settings, dict):
            raise ValueError(f"region {name}: expected an object of settings")
        regions[name] = regions.get(name, RegionSettings()).merged(settings)
    return regions


@dataclass
class Region:
    """One region's block engine: its settings, its listening port and what it counted."""

    name: str
    settings: RegionSettings
    seed: int | None = None
    port: int = 0
    runner: web.AppRunner | None = None
    # `lost_at_auction` is counted by the tip auction (a bundle this region forwarded that was outbid); listed at 0 without it.
    counters: dict[str, int] = field(
        default_factory=lambda: {"accepted": 0, "dropped": 0, "rate_limited": 0, "refused_lagging": 0, "lost_at_auction": 0}
    )
    # Bundles this region accepted and forwarded, to count those that landed.
    forwarded: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Set when a blackholed region comes back or the cluster stops: held requests are then cut off.
    release: asyncio.Event | None = None

    def __post_init__(self) -> None:
        # Each region rolls its own dice, so one region's traffic never changes another's drops.
        self._rng = random.Random(f"{self.seed}:{self.name}")

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = random.Random(f"{seed}:{self.name}")

    def drops(self) -> bool:
        return bool(self.settings.drop) and self._rng.random() < self.settings.drop

    def forward(self, bundle_id: str) -> None:
        self.forwarded[bundle_id] = None
        while len(self.forwarded) > MAX_TRACKED_BUNDLES:
            self.forwarded.popitem(last=False)

    def to_json(self, host: str, ledger) -> dict:
        # Landed: the bundles and lone transactions whose landed copy came through this region (a bundle sent to
        # two regions lands once, and counts for the region whose copy was executed).
        landed = sum(count for origin, count in ledger.landed_units.items() if origin is not None and origin.region == self.name)
        return {
            "url": f"http://{host}:{self.port}",
            "mainnet": region_mainnet_url(self.name),
            "settings": asdict(self.settings),
            "up": self.settings.down is None,
            "counters": self.counters | {"landed": landed},
        }


def region_middleware(region: Region):
    """Latency both ways, and the blackhole: the request is read and never answered."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if region.settings.down == "blackhole":
            await hold(region, request)
        delay = region.settings.latency_ms / 1000
        if delay:
            await asyncio.sleep(delay)
        response = await handler(request)
        if delay:
            await asyncio.sleep(delay)
        return response

    return middleware


async def hold(region: Region, request: web.Request) -> None:
    """Never answer; when released (region back up, cluster stopping) cut the connection, answering nothing."""
    if region.release is None or region.release.is_set():
        region.release = asyncio.Event()
    await region.release.wait()
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
