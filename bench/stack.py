"""The stack a bench run measures: its own servers, a worker, and the sink every bench plan pays."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil

from solders.keypair import Keypair

from devtools.dev import DevStack, admin_post
from executor.policy import PolicySettings
from worker.main import ExecutorWorker


@contextlib.asynccontextmanager
async def bench_stack(args: argparse.Namespace, **options):
    """A stack of the run's own (`--ports`, `--slot-ms`, `--wallets`, `--market`...), its worker, the sink bench
    plans pay (funded, the one destination the plan policy allows, and what a market's searchers bid on) and an
    HTTP session: `(stack, worker, sink, http)`. All of it is stopped and removed at the end."""
    import aiohttp

    data_dir = args.data_dir / "bench" / str(os.getpid())
    stack = DevStack(
        data_dir, auto_ports=args.ports == "auto", slot_ms=args.slot_ms, wallet_count=args.wallets, metrics=False,
        history_encryption=args.history_encryption == "on", market=args.market, **options,
    )  # fmt: skip
    worker = None
    try:
        await stack.start()
        sink = str(Keypair().pubkey())
        worker = ExecutorWorker(stack.config, stack.keys, policy_settings=PolicySettings.from_environment().allowing(destinations=[sink]))
        await worker.start()
        async with aiohttp.ClientSession() as http:
            await admin_post(http, f"{stack.localnet.endpoints['admin']}/fund", {"pubkey": sink, "lamports": 1_000_000_000})
            if args.market:
                await searchers_bid_on(stack, http, sink)
            yield stack, worker, sink, http
    finally:
        if worker is not None and hasattr(worker, "bridge"):
            await worker.stop()
        await stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def searchers_bid_on(stack: DevStack, http, sink: str) -> None:
    """Every bench plan pays the one sink, which stands for the pool a real trade touches: a market's
    background searchers, if it has them, bid on that account, as competitors bid on a trade's pool."""
    admin = stack.localnet.endpoints["admin"]
    async with http.get(f"{admin}/auction") as response:
        auction = await response.json()
    if auction.get("enabled") and (auction.get("searchers") or {}).get("rate"):
        await admin_post(http, f"{admin}/auction", {"searchers": {"accounts": [sink]}})
