"""How many simple transfers per second the local cluster takes end to end (sendTransaction -> confirmed).

Runs the cluster as its own process (as `dev` and `bench` do) and drives it over real
JSON-RPC from this one: pre-signed transfers, posted in JSON-RPC batches, then polled
with getSignatureStatuses (256 a request) until every one is confirmed.

    python -m localnet.throughput --transactions 20000 --json
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time

import aiohttp
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from venue import LAMPORTS_PER_SOL



def start_cluster(payers: list[Keypair], slot_ms: float) -> tuple[subprocess.Popen, dict]:
    command = [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--json", "--slot-ms", str(slot_ms)]
    for payer in payers:
        command += ["--fund", f"{payer.pubkey()}:1000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("local cluster did not start")
    return process, json.loads(line)


async def measure(rpc_url: str, payers: list[Keypair], count: int, batch: int, concurrency: int) -> dict:
    # aiohttp, not httpx: measured here, httpx's AsyncClient tops out near 500 requests/s,
    # a fifth of what the cluster serves, and would measure the client instead.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post(body):
            async with session.post(rpc_url, json=body) as response:
                return await response.json()

        answer = await post({"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash", "params": [{"commitment": "processed"}]})
        blockhash = Hash.from_string(answer["result"]["value"]["blockhash"])
        sign_started = time.perf_counter()
        wire, signatures = [], []
        for i in range(count):
            payer, to = payers[i % len(payers)], Keypair().pubkey()
            message = MessageV0.try_compile(payer.pubkey(), [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=LAMPORTS_PER_SOL // 1000 + i))], [], blockhash)
            tx = VersionedTransaction(message, [payer])
            wire.append(base64.b64encode(bytes(tx)).decode())
            signatures.append(str(tx.signatures[0]))
        sign_s = time.perf_counter() - sign_started

        queue: asyncio.Queue[list[tuple[int, str]]] = asyncio.Queue()
        for start in range(0, count, batch):
            queue.put_nowait(list(enumerate(wire))[start : start + batch])

        async def sender() -> None:
            while not queue.empty():
                chunk = queue.get_nowait()
                body = [
                    {"jsonrpc": "2.0", "id": i, "method": "sendTransaction", "params": [text, {"encoding": "base64", "skipPreflight": True, "maxRetries": 0}]}
                    for i, text in chunk
                ]
                errors = [a for a in await post(body) if "error" in a]
                if errors:
                    raise RuntimeError(f"sendTransaction failed: {errors[0]}")

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        sent_s = time.perf_counter() - started
        pending = set(signatures)
        while pending:
            chunk = list(pending)[:256]
            answer = await post({"jsonrpc": "2.0", "id": 1, "method": "getSignatureStatuses", "params": [chunk]})
            for signature, status in zip(chunk, answer["result"]["value"]):
                if status is not None and status["confirmationStatus"] in ("confirmed", "finalized"):
                    if status["err"] is not None:
                        raise RuntimeError(f"{signature} failed: {status['err']}")
                    pending.discard(signature)
            if time.perf_counter() - started > 120:
                raise TimeoutError(f"{len(pending)} transactions not confirmed after 120 s")
            if pending and len(chunk) < 256:
                await asyncio.sleep(0.05)
        confirmed_s = time.perf_counter() - started
    return {
        "transactions": count,
        "sign_us_per_tx": round(sign_s / count * 1e6, 1),
        "send_s": round(sent_s, 3),
        "sends_per_s": round(count / sent_s),
        "confirmed_s": round(confirmed_s, 3),
        "confirmed_per_s": round(count / confirmed_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--payers", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="sendTransaction calls per JSON-RPC batch")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--slot-ms", type=float, default=400.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    payers = [Keypair() for _ in range(args.payers)]
    process, endpoints = start_cluster(payers, args.slot_ms)
    try:
        result = asyncio.run(measure(endpoints["rpc"], payers, args.transactions, args.batch, args.concurrency))
    finally:
        process.terminate()
        process.wait(10)
    result |= {"slot_ms": args.slot_ms, "batch": args.batch, "cpus": os.cpu_count()}
    print(json.dumps(result) if args.json else "\n".join(f"{k:16} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
