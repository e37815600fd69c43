"""What an operator does to the running stack: the cluster's faults (the local cluster's admin
endpoint) and the kill switch (`hft-executor halt --wait --json` and `resume`, as commands)."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HALT_TIMEOUT_S = 20.0


# --- the cluster's faults ---------------------------------------------------------------------

INTAKE_CHANNELS = ("rpc", "bundle", "tpu")
# Status reads (getSignatureStatuses, getBlockHeight, getTransaction) that fail or answer late.
READS_FAULTS = {"reject": 0.1, "delay_ms": 200.0}


def cluster_faults(*, drop: float, rate_limit: float, delay_ms: float, market: dict | None = None) -> dict:
    """The cluster's faults while the campaign's are `drop`, `rate_limit`, `delay_ms` (all 0: off),
    on top of the market's own (`market`: the cluster's faults before the campaign touched them, as
    `GET /faults` answers): each setting is the larger of the two, so a `--market` keeps its faults
    through the campaign and gets them back when the campaign's are off."""
    market = market or {}

    def on_top(channel: str, wanted: dict) -> dict:
        base = market.get(channel) or {}
        return {key: max(value, base.get(key, 0.0)) for key, value in wanted.items()}

    body = {name: on_top(name, {"drop": drop, "rate_limit": rate_limit, "delay_ms": delay_ms, "reject": 0.0}) for name in INTAKE_CHANNELS}
    reads = dict(READS_FAULTS) if drop or rate_limit or delay_ms else {key: 0.0 for key in READS_FAULTS}
    body["reads"] = on_top("reads", reads)
    return body


async def get_faults(http: aiohttp.ClientSession, admin: str) -> dict:
    async with http.get(f"{admin}/faults") as response:
        if response.status != 200:
            raise RuntimeError(f"GET /faults refused: {await response.text()}")
        return await response.json()


async def put_faults(http: aiohttp.ClientSession, admin: str, body: dict) -> None:
    async with http.put(f"{admin}/faults", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"PUT /faults refused: {await response.text()}")


# --- halt and resume -----------------------------------------------------------------------------


async def _cli(env: dict[str, str], *args: str, timeout: float) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args,
        cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace")
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def halt(env: dict[str, str], *, reason: str = "chaos campaign halt") -> dict:
    """`hft-executor halt --wait`, as an operator runs it. Its acknowledgment is the moment it
    returns: when every live worker acknowledged it, or it gave up naming the missing (a worker
    cut off from NATS sends nothing new anyway: it refuses once the kill switch goes unheard)."""
    wait = True
    args = ["halt", "--reason", reason, "--by", "chaos", "--wait", "--json"]
    issued = time.time_ns()
    code, out, err = await _cli(env, *args, timeout=HALT_TIMEOUT_S)
    returned = time.time_ns()
    outcome = {"issued_ns": issued, "returned_ns": returned, "returncode": code, "waited": wait, "seq": None, "acknowledged": None, "missing": None}
    if wait:
        lines = [line for line in out.splitlines() if line.strip().startswith("{")]
        if lines:
            answer = json.loads(lines[-1])
            outcome.update(seq=answer.get("seq"), acknowledged=answer.get("acknowledged"), missing=answer.get("missing"))
    # A halt that was not stored (NATS down, a timeout) was never acknowledged.
    stored = code == 0 or (wait and outcome["seq"] is not None)
    outcome["acknowledged_ns"] = returned if stored else None
    if not stored:
        outcome["error"] = (err or out).strip()[-500:]
    return outcome


async def resume(env: dict[str, str]) -> dict:
    issued = time.time_ns()
    code, out, err = await _cli(env, "resume", timeout=HALT_TIMEOUT_S)
    return {"issued_ns": issued, "returned_ns": time.time_ns(), "returncode": code, **({"error": (err or out).strip()[-500:]} if code != 0 else {})}
