"""What TLS costs a KV round trip: `python -m bench.nats_tls [--blocks 20] [--per-block 100]`.

Two nats-servers on this machine, one open, one as `dev` runs it (users, permissions, mutual TLS). The same
create + get of a 1.2 kB value (about a plan record) on each, in alternating blocks so that the machine's drift
hits both alike. Prints the p50 and p99 of each operation and the client's CPU per operation.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from worker.nats_connection import connect
from worker.nats_security import NatsSecurity
from devtools.services import NatsServer


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(blocks: int, per_block: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="hft-nats-tls-"))
    security = NatsSecurity.create(directory / "security")
    servers = {"plain": NatsServer(directory / "plain", port=0), "tls": NatsServer(directory / "tls", port=0, security=security)}
    await asyncio.gather(*(server.start() for server in servers.values()))
    try:
        clients = {"plain": await connect(servers["plain"].url), "tls": await connect(servers["tls"].url, security.auth("worker"))}
        buckets = {name: await nc.jetstream().create_key_value(bucket="plan_records") for name, nc in clients.items()}
        samples = {name: {"create": [], "get": []} for name in buckets}
        cpu = {name: 0.0 for name in buckets}
        value = b"x" * 1200
        for block in range(blocks):
            order = list(buckets) if block % 2 == 0 else list(reversed(buckets))
            for name in order:
                kv, started_cpu = buckets[name], _cpu_s()
                for i in range(per_block):
                    key = f"signed.b{block}-{i}"
                    started = time.perf_counter()
                    await kv.create(key, value)
                    samples[name]["create"].append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await kv.get(key)
                    samples[name]["get"].append((time.perf_counter() - started) * 1000)
                cpu[name] += _cpu_s() - started_cpu
        for nc in clients.values():
            await nc.close()
    finally:
        await asyncio.gather(*(server.stop() for server in servers.values()))

    def p(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 3)

    return {
        name: {
            **{f"{op}_ms": {"p50": round(statistics.median(v), 3), "p99": p(v, 0.99)} for op, v in ops.items()},
            "client_cpu_ms_per_op": round(cpu[name] * 1000 / (2 * blocks * per_block), 3),
        }
        for name, ops in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.blocks, args.per_block))))


if __name__ == "__main__":
    main()
