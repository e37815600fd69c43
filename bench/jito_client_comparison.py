"""sendBundle latency: venue.jito.JitoClient against the Python Jito clients on PyPI, on the local cluster.

All start from the same kind of input (serialized, signed, tipped 1-transaction bundles,
each unique) and send them one at a time to the same in-process block engine. The clients
take turns bundle by bundle (A B C D, then B C D A, ...), so drift on a shared machine
falls on all of them alike:

- `jitoClient`: `JitoClient.send_bundle` on its one kept-alive aiohttp connection (base64);
- `jitoPyRpc`: jito-py-rpc 0.1.5 `JitoJsonRpcSDK.send_bundle` (the project's dependency):
  blocking `requests.post` without a session, so through `asyncio.to_thread`; its print()
  of every request goes to /dev/null by redirecting stdout around the call (part of its cost);
  it sends `{"encoding": "base64"}`;
- `jitoAsync`: jito-async `JitoJsonRpcSDK.send_bundle` (async, one aiohttp ClientSession).
  It wraps its argument as `params: [arg]` and cannot add the encoding object, so it can only
  send base58 (the block engine's default encoding);
- `jitoPy`: jito-py `Searcher.send_bundle` (blocking `requests.post`, no session), through
  `asyncio.to_thread`; base58 only (its docstring: "Base-64 encoded transactions are not supported").

jito-async and jito-py are not project dependencies: where one is not installed it is skipped
and the JSON says why (`skipped`). Each call is timed from raw bytes to the checked bundle id
(the base64 or base58 encoding included); `encodeUs` gives the encodings' own cost. Afterwards
every bundle is polled with getInflightBundleStatuses until it landed. Ratios are a
client's percentile over JitoClient's.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO

import base58
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from venue.jito import STATIC_TIP_ACCOUNTS, JitoClient, bundle_id
from localnet.cluster import ClusterConfig, ClusterThread, LocalCluster
from venue import LAMPORTS_PER_SOL

log = logging.getLogger("bench.jito_client_comparison")

TIP_PUBKEYS = [Pubkey.from_string(a) for a in STATIC_TIP_ACCOUNTS]
BASELINE = "jitoClient"
# name -> (PyPI package, module): the order of the JSON and of the first round's turns.
LIBRARIES = {"jitoPyRpc": ("jito-py-rpc", "jito_py_rpc"), "jitoAsync": ("jito-async", "jito_async"), "jitoPy": ("jito-py", "jito_py")}


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


@dataclass
class Contender:
    """One client: `send(raw)` returns the bundle id it got back (or raises); it is checked here."""

    name: str
    encoding: str
    send: Callable[[bytes], Awaitable[str | None]]
    latencies: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    errors: int = 0

    async def one(self, raw: bytes) -> None:
        expected = bundle_id([raw])
        started = time.perf_counter()
        try:
            answer = await self.send(raw)
            ok = answer == expected
            problem = f"answered {answer!r}, expected {expected}"
        except Exception as error:  # a library's own exception types differ; all count as errors
            ok, problem = False, f"{type(error).__name__}: {error}"
        self.latencies.append(time.perf_counter() - started)
        if ok:
            self.ids.append(expected)
        else:
            self.errors += 1
            log.warning("%s sendBundle failed: %s", self.name, problem)


def b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def encode_cost_us(raws: list[bytes], repeat: int = 5) -> dict[str, float]:
    """Mean µs per transaction of each encoding, interleaved, over the bench's own bundles."""
    totals = {"base64": 0.0, "base58": 0.0}
    for _ in range(repeat):
        for name, fn in (("base64", b64), ("base58", b58)):
            started = time.perf_counter()
            for raw in raws:
                fn(raw)
            totals[name] += time.perf_counter() - started
    return {name: round(total / (repeat * len(raws)) * 1e6, 2) for name, total in totals.items()}


@contextlib.asynccontextmanager
async def contenders(engine: str, devnull: TextIO, skipped: dict[str, str]):
    """Every client that can be imported, warmed up with one getTipAccounts; the missing ones go to `skipped`."""
    stack = contextlib.AsyncExitStack()
    async with stack:
        client = await stack.enter_async_context(JitoClient(engine, timeout_s=2.0))
        await client.tip_accounts()  # the executor fetches tip accounts at start

        async def ours(raw: bytes) -> str:
            return await client.send_bundle([raw])

        found = [Contender(BASELINE, "base64", ours)]

        def quiet(fn, *args):
            """Call a blocking SDK with its print() of every request sent to /dev/null."""
            with contextlib.redirect_stdout(devnull):
                return fn(*args)

        for name, (package, module) in LIBRARIES.items():
            try:
                __import__(module)
            except ImportError as error:
                skipped[name] = f"{package} is not installed ({error}); pip install {package} to include it"
                log.warning("skipping %s: %s", name, skipped[name])
                continue
            if name == "jitoPyRpc":
                from jito_py_rpc import JitoJsonRpcSDK as RpcSdk

                rpc_sdk = RpcSdk(engine + "/api/v1")
                warm = await asyncio.to_thread(quiet, rpc_sdk.get_tip_accounts)
                if not warm.get("success"):
                    raise RuntimeError(f"jito-py-rpc warm-up failed: {warm}")

                async def py_rpc(raw: bytes, sdk=rpc_sdk) -> str | None:
                    answer = await asyncio.to_thread(quiet, sdk.send_bundle, [b64(raw)])
                    if not answer.get("success"):
                        raise RuntimeError(answer.get("error"))
                    return answer["data"].get("result") or answer["data"].get("error")

                found.append(Contender(name, "base64", py_rpc))
            elif name == "jitoAsync":
                from jito_async import JitoJsonRpcSDK as AsyncSdk

                async_sdk = await stack.enter_async_context(AsyncSdk(engine))
                await async_sdk.get_tip_accounts()

                async def jito_async(raw: bytes, sdk=async_sdk) -> str | None:
                    answer = await sdk.send_bundle([b58(raw)])  # sent as params: [[tx]]: no encoding object possible
                    return answer["data"].get("result") or answer["data"].get("error")

                found.append(Contender(name, "base58", jito_async))
            elif name == "jitoPy":
                from jito_py.searcher import Searcher

                searcher = Searcher(engine)
                await asyncio.to_thread(searcher.get_tip_accounts)

                async def jito_py(raw: bytes, s=searcher) -> str:
                    return await asyncio.to_thread(s.send_bundle, [b58(raw)])

                found.append(Contender(name, "base58", jito_py))
        yield client, found


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


async def compare(cluster: ClusterThread, payers: list[Keypair], n: int, chunk: int, devnull: TextIO) -> dict:
    engine = cluster.endpoints()["blockEngine"]
    skipped: dict[str, str] = {}

    def latest() -> Hash:
        return cluster.call(lambda c: c.ledger.latest_blockhash[0])

    async with contenders(engine, devnull, skipped) as (client, found):
        k = len(found)
        encode_us = encode_cost_us(sign_bundles(payers, latest(), 50, tip_offset=k * n))
        turn = 0
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            # signed just before their round, so the blockhash is fresh; signing is not timed.
            recent = latest()
            raws = {c.name: sign_bundles(payers, recent, size, tip_offset=i * n + start) for i, c in enumerate(found)}
            for j in range(size):
                for c in found[turn % k :] + found[: turn % k]:  # rotate who goes first
                    await c.one(raws[c.name][j])
                turn += 1
        connections = dict(client.stats)
        report: dict = {"bundles": n, "payers": len(payers), "slotMs": cluster.config.slot_ms, "interleaved": [c.name for c in found], "encodeUs": encode_us}
        for c in found:
            statuses = await landed(client, c.ids, timeout_s=15)
            report[c.name] = summary(c.latencies) | {"encoding": c.encoding, "errors": c.errors, "statuses": statuses, "allLanded": statuses.get("Landed", 0) == n}
    report[BASELINE] |= {
        "connectionsCreated": connections["connections_created"],
        "connectionsReused": connections["connections_reused"],
        "requests": connections["requests"],
    }
    base = report[BASELINE]
    ratios = {}
    for c in found[1:]:
        s = report[c.name]
        ratios[c.name] = {q: round(s[f"{q}Ms"] / base[f"{q}Ms"], 2) for q in ("p50", "p90", "p99")}
    report["ratios"] = ratios  # a library's percentile / JitoClient's
    if "jitoPyRpc" in ratios:  # the keys of the first version of this comparison
        report |= {"ratioP50": ratios["jitoPyRpc"]["p50"], "ratioP90": ratios["jitoPyRpc"]["p90"], "ratioP99": ratios["jitoPyRpc"]["p99"]}
    report["skipped"] = skipped
    report["allLanded"] = all(report[c.name]["allLanded"] for c in found)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jito_client_comparison", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--bundles", type=int, default=200, help="bundles per client (default 200)")
    parser.add_argument("--round", type=int, default=25, help="bundles per client signed with one blockhash before they are sent (default 25)")
    parser.add_argument("--payers", type=int, default=4, help="funded payers the bundles rotate over (default 4)")
    parser.add_argument("--slot-ms", type=float, default=50.0, help="local cluster slot time (default 50)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    payers = [Keypair() for _ in range(args.payers)]
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=args.slot_ms)) as cluster, open(os.devnull, "w") as devnull:
        for payer in payers:
            cluster.call(LocalCluster.fund, payer.pubkey(), 100 * LAMPORTS_PER_SOL)
        result = asyncio.run(compare(cluster, payers, args.bundles, max(1, args.round), devnull))

    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for name in result["interleaved"]:
            s = result[name]
            log.info("%-10s %s  p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  errors %d  statuses %s", name, s["encoding"], s["p50Ms"], s["p90Ms"], s["p99Ms"], s["errors"], s["statuses"])
        for name, r in result["ratios"].items():
            log.info("ratio %s / JitoClient: p50 %.2fx  p90 %.2fx  p99 %.2fx", name, r["p50"], r["p90"], r["p99"])
        for name, why in result["skipped"].items():
            log.info("skipped %s: %s", name, why)
        log.info("encoding, µs per transaction: %s; all landed: %s", result["encodeUs"], result["allLanded"])
    return 0 if result["allLanded"] else 1


if __name__ == "__main__":
    sys.exit(main())
