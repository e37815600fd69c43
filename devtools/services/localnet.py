"""The project's local Solana cluster (``hft-executor localnet``) as a supervised child process.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from .process import ServiceError, _Server

log = logging.getLogger("hft.services")
# The pace a worker keeps towards an engine the cluster does not limit: far above any plan rate here.
UNLIMITED_JITO_RPS = 1000.0
UNLIMITED_JITO_BURST = 100


class LocalnetServer(_Server):
    """The project's local Solana cluster (``hft-executor localnet --json``) as a child process.

    A separate process, not a thread: the cluster's slot clock and the worker's hot path
    would otherwise share one GIL and disturb each other's timings.
    """

    name = "localnet"

    def __init__(
        self,
        data_dir: Path,
        *,
        auto_ports: bool = True,
        slot_ms: float = 400.0,
        validators: int = 2,
        status_cache_slots: int | None = None,
        market: str | None = None,
        log_file: Path | None = None,
    ):
        super().__init__(data_dir, log_file)
        self.auto_ports = auto_ports
        self.slot_ms = slot_ms
        self.validators = validators
        # None keeps the command's default, agave's status cache (300 rooted slots).
        self.status_cache_slots = status_cache_slots
        # A market profile (`--market calm|busy|hostile|FILE.json`); None: the command's default, calm.
        self.market = market
        self.endpoints: dict[str, str] = {}

    def jito_environment(self) -> dict[str, str]:
        """How a worker reaches this cluster's block engines: its regions when it runs them (each by name,
        `JITO_BLOCK_ENGINE_URLS`), else the one engine; and the pace they allow (`JITO_REQUESTS_PER_SECOND`:
        the strictest region's limit, the engine's, or 1000/s with bursts of 100 where the cluster sets none)."""
        regions = self.endpoints.get("regions") or {}
        if regions:
            limits = [v for v in (self.endpoints.get("regionRequestsPerSecond") or {}).values() if v]
            limit = min(limits) if limits else None
        else:
            limit = self.endpoints.get("jitoRequestsPerSecond")
        pace = {"JITO_REQUESTS_PER_SECOND": str(limit)} if limit else {"JITO_REQUESTS_PER_SECOND": str(UNLIMITED_JITO_RPS), "JITO_REQUESTS_BURST": str(UNLIMITED_JITO_BURST)}
        return ({"JITO_BLOCK_ENGINE_URLS": ",".join(f"{name}={url}" for name, url in regions.items())} if regions else {}) | pace

    def command(self) -> list[str]:
        argv = [
            sys.executable, "-m", "worker.cli", "localnet", "--json",
            "--ports", "auto" if self.auto_ports else "default",
            "--slot-ms", str(self.slot_ms),
        ]  # fmt: skip
        profile: dict = {}
        if self.market is not None:
            from localnet.market import load_market  # checked here, so a bad profile fails before the child starts

            profile = load_market(self.market)
            market = self.market if not self.market.endswith(".json") else str(Path(self.market).resolve())
            argv += ["--market", market]
        if "validators" not in profile:  # a profile's leader count wins: its leader lists are indices into it
            argv += ["--validators", str(self.validators)]
        if self.status_cache_slots is not None:
            argv += ["--status-cache-slots", str(self.status_cache_slots)]
        return argv

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait for the one JSON line of endpoints the command prints when ready."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        child = self._spawn(self.command())
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                self._check_alive()
            except ServiceError:
                raise
            with open(self.log_file, "rb") as log_stream:
                log_stream.seek(offset)
                for line in log_stream.read().splitlines():
                    if line.startswith(b'{"rpc"'):
                        self.endpoints = json.loads(line)
                        log.info("localnet started pid=%d rpc=%s in %.2fs", child.pid, self.endpoints["rpc"], time.monotonic() - started)
                        return
            await asyncio.sleep(0.05)
        await self.stop()
        raise ServiceError(f"localnet not ready after {timeout:.1f}s; log {self.log_file}")

    async def restart(self, timeout: float = 30.0) -> None:
        """Refused: the local cluster keeps its ledger in memory (funded wallets, fixtures, landed
        transactions) and picks its own ports, so a restart would be another cluster at other addresses."""
        raise ServiceError("localnet cannot restart with its state: its ledger lives in memory; start a new one")


# --- a NATS cluster -------------------------------------------------------------------------------------
