"""sendBundle latency: the official jito-py-rpc SDK versus activities.jito.JitoClient, on the local cluster.

Both start from the same kind of input (serialized, signed, tipped 1-transaction bundles,
each unique) and send them one at a time, sequentially, to the same block engine:

(a) jito_py_rpc.JitoJsonRpcSDK.send_bundle through asyncio.to_thread (what an async
    executor has to do with a blocking client); its print() of every request goes to
    /dev/null by redirecting stdout around the call, which is part of what it costs;
(b) JitoClient.send_bundle on its one kept-alive aiohttp connection.

Each call is timed from raw bytes to the checked bundle id (base64 encoding included for
both). Afterwards every bundle is polled with getInflightBundleStatuses until it landed.

    python -m bench.jito_client_comparison --json
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
from typing import TextIO

from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from activities.jito import STATIC_TIP_ACCOUNTS, JitoClient, JitoError, bundle_id
from localnet.cluster import ClusterConfig, ClusterThread, LocalCluster

log = logging.getLogger("bench.jito_client_comparison")

LAMPORTS_PER_SOL = 1_000_000_000
TIP_PUBKEYS = [Pubkey.from_string(a) for a in STATIC_TIP_ACCOUNTS]


def sign_bundles(payers: list[Keypair], recent: Hash, count: int, tip_offset: int) -> list[bytes]:
    """`count` distinct 1-transaction bundles: a transfer to a fresh account plus a tip of a unique amount."""
    raws = []
    for i in range(count):
        payer = payers[i % len(payers)]
        tip = 1000 + tip_offset + i
        instructions = [
            transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=1_000_000)),
            transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP_PUBKEYS[i % len(TIP_PUBKEYS)], lamports=tip)),
        ]
        message = MessageV0.try_compile(payer.pubkey(), instructions, [], recent)
        raws.append(bytes(VersionedTransaction(message, [payer])))
    return raws


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def summary(latencies_s: list[float]) -> dict:
    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "calls": len(ms),
        "p50Ms": round(percentile(ms, 50), 3),
        "p90Ms": round(percentile(ms, 90), 3),
        "p99Ms": round(percentile(ms, 99), 3),
        "meanMs": round(sum(ms) / len(ms), 3) if ms else None,
        "maxMs": round(ms[-1], 3) if ms else None,
    }


async def run_sdk(engine_url: str, raws: list[bytes], devnull: TextIO) -> tuple[list[float], list[str], int]:
    from jito_py_rpc import JitoJsonRpcSDK

    sdk = JitoJsonRpcSDK(engine_url + "/api/v1")

    def quiet(fn, *args):
        """Call the SDK with its print() of every request sent to /dev/null."""
        with contextlib.redirect_stdout(devnull):
            return fn(*args)

    warm = await asyncio.to_thread(quiet, sdk.get_tip_accounts)
    if not warm.get("success"):
        raise RuntimeError(f"jito-py-rpc warm-up failed: {warm}")
    latencies, ids, errors = [], [], 0
    for raw in raws:
        expected = bundle_id([raw])
        started = time.perf_counter()
        answer = await asyncio.to_thread(quiet, sdk.send_bundle, [base64.b64encode(raw).decode("ascii")])
        ok = answer.get("success") and answer["data"].get("result") == expected
        latencies.append(time.perf_counter() - started)
        if ok:
            ids.append(expected)
        else:
            errors += 1
            log.warning("jito-py-rpc sendBundle failed: %s", answer.get("error") or answer["data"].get("error"))
    return latencies, ids, errors


async def run_client(client: JitoClient, raws: list[bytes]) -> tuple[list[float], list[str], int]:
    await client.tip_accounts()  # warm-up: the executor fetches tip accounts at start
    latencies, ids, errors = [], [], 0
    for raw in raws:
        started = time.perf_counter()
        try:
            ids.append(await client.send_bundle([raw]))
        except JitoError as error:
            errors += 1
            log.warning("JitoClient sendBundle failed: %s", error)
        latencies.append(time.perf_counter() - started)
    return latencies, ids, errors


async def landed(client: JitoClient, ids: list[str], timeout_s: float) -> dict[str, int]:
    """Poll until no bundle is Pending (or timeout); returns the count per final status."""
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    final: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        statuses = await client.inflight_statuses(pending)
        for status in statuses:
            if status.status != "Pending":
                final[status.bundle_id] = status.status
        pending = [s.bundle_id for s in statuses if s.status == "Pending"]
        if pending:
            await asyncio.sleep(0.05)
    for bundle in pending:
        final[bundle] = "Pending"
    counts: dict[str, int] = {}
    for status in final.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


async def compare(cluster: ClusterThread, payers: list[Keypair], n: int, devnull: TextIO) -> dict:
    engine = cluster.endpoints()["blockEngine"]

    def latest() -> Hash:
        return cluster.call(lambda c: c.ledger.latest_blockhash[0])

    # (a) the SDK; bundles signed just before, so their blockhash is fresh.
    sdk_raws = sign_bundles(payers, latest(), n, tip_offset=0)
    sdk_latencies, sdk_ids, sdk_errors = await run_sdk(engine, sdk_raws, devnull)

    # (b) our client.
    async with JitoClient(engine, timeout_s=2.0) as client:
        client_raws = sign_bundles(payers, latest(), n, tip_offset=n)
        client_latencies, client_ids, client_errors = await run_client(client, client_raws)
        connections = dict(client.stats)
        sdk_landed = await landed(client, sdk_ids, timeout_s=15)
        client_landed = await landed(client, client_ids, timeout_s=15)

    sdk_summary = summary(sdk_latencies) | {"errors": sdk_errors, "statuses": sdk_landed, "allLanded": sdk_landed.get("Landed", 0) == n}
    client_summary = summary(client_latencies) | {
        "errors": client_errors,
        "statuses": client_landed,
        "allLanded": client_landed.get("Landed", 0) == n,
        "connectionsCreated": connections["connections_created"],
        "connectionsReused": connections["connections_reused"],
        "requests": connections["requests"],
    }
    return {
        "bundles": n,
        "payers": len(payers),
        "slotMs": cluster.config.slot_ms,
        "jitoPyRpc": sdk_summary,
        "jitoClient": client_summary,
        "ratioP50": round(sdk_summary["p50Ms"] / client_summary["p50Ms"], 2),
        "ratioP90": round(sdk_summary["p90Ms"] / client_summary["p90Ms"], 2),
        "ratioP99": round(sdk_summary["p99Ms"] / client_summary["p99Ms"], 2),
        "allLanded": sdk_summary["allLanded"] and client_summary["allLanded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jito_client_comparison", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--bundles", type=int, default=200, help="bundles per client (default 200)")
    parser.add_argument("--payers", type=int, default=4, help="funded payers the bundles rotate over (default 4)")
    parser.add_argument("--slot-ms", type=float, default=50.0, help="local cluster slot time (default 50)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    payers = [Keypair() for _ in range(args.payers)]
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=args.slot_ms)) as cluster, open(os.devnull, "w") as devnull:
        for payer in payers:
            cluster.call(LocalCluster.fund, payer.pubkey(), 100 * LAMPORTS_PER_SOL)
        result = asyncio.run(compare(cluster, payers, args.bundles, devnull))

    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for name in ("jitoPyRpc", "jitoClient"):
            s = result[name]
            log.info("%-10s p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  errors %d  statuses %s", name, s["p50Ms"], s["p90Ms"], s["p99Ms"], s["errors"], s["statuses"])
        log.info("ratio (jito-py-rpc / JitoClient): p50 %.2fx  p90 %.2fx  p99 %.2fx  all landed: %s", result["ratioP50"], result["ratioP90"], result["ratioP99"], result["allLanded"])
    return 0 if result["allLanded"] else 1


if __name__ == "__main__":
    sys.exit(main())
