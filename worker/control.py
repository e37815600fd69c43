"""Operator commands: `worker`, `send-plan`, `halt`, `resume`, `status`.

They read the same environment as the worker (NATS_URL, TEMPORAL_ADDRESS, ...); with none
set they join a `hft-executor dev` running from this directory (.data/dev-environment.json).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nats
from temporalio.service import RPCError, RPCStatusCode
from nats.js.errors import NotFoundError

from activities.keystore import KeyStore
from activities.wallets import WalletPool

WALLET_BUCKET = "wallet_leases"

from . import logs
from .bridge import workflow_id
from .config import ExecutorConfig, nats_servers
from .killswitch import RUNNING_PLANS, KILLSWITCH_SUBJECT, RESUME_SUBJECT, halt_message
from .main import ExecutorWorker, connect_temporal
from .streams import ensure_streams

DEV_ENVIRONMENT = Path(".data") / "dev-environment.json"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    if "NATS_URL" not in env and DEV_ENVIRONMENT.exists():
        for key, value in json.loads(DEV_ENVIRONMENT.read_text()).items():
            env.setdefault(key, value)
    return env


async def _nats(config: ExecutorConfig):
    """A short-lived operator connection: fail fast with a clear message, don't retry forever."""
    async def quiet(_error: Exception) -> None:
        pass

    try:
        # nats-py keeps retrying a refused first connect on its own; the deadline is ours.
        return await asyncio.wait_for(nats.connect(servers=nats_servers(config.nats_url), connect_timeout=3, allow_reconnect=False, error_cb=quiet), 5)
    except Exception as error:
        raise SystemExit(f"cannot reach NATS at {config.nats_url} ({str(error) or type(error).__name__}); set NATS_URL or start `hft-executor dev`") from None


# --- worker -------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    return asyncio.run(_worker())


async def _worker() -> int:
    env = environment()
    config = ExecutorConfig.from_environment(env)
    try:
        keys = KeyStore.from_environment(env)
    except (ValueError, OSError) as error:
        raise SystemExit(f"wallet keys: {error}") from None
    if not len(keys):
        raise SystemExit("no wallet keys: set WALLET_1..WALLET_N or WALLET_KEYS_DIR")
    worker = ExecutorWorker(config, keys)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    try:
        waiter = asyncio.create_task(stop.wait())
        crashed = asyncio.create_task(worker.wait())
        await asyncio.wait({waiter, crashed}, return_when=asyncio.FIRST_COMPLETED)
        if crashed.done():
            crashed.result()
    finally:
        await worker.stop()
    return 0


# --- send-plan ----------------------------------------------------------------------


def read_plans(source: str) -> list[dict]:
    """A file (or - for stdin) holding one plan, a JSON array of plans, or one plan per line."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def send_plan(args: argparse.Namespace) -> int:
    return asyncio.run(_send_plan(args))


async def _send_plan(args: argparse.Namespace) -> int:
    plans = read_plans(args.file)
    config = ExecutorConfig.from_environment(environment())
    nc = await _nats(config)
    js = nc.jetstream()
    await ensure_streams(js)
    for plan in plans:
        opportunity = plan.get("opportunityId") if isinstance(plan, dict) else None
        subject = f"execution.planned.{opportunity if isinstance(opportunity, str) and opportunity else 'unknown'}"
        ack = await js.publish(subject, json.dumps(plan).encode())
        print(json.dumps({"planId": plan.get("planId") if isinstance(plan, dict) else None, "subject": subject, "seq": ack.seq}), flush=True)
    await nc.drain()
    return 0


# --- halt / resume ------------------------------------------------------------------


def halt(args: argparse.Namespace) -> int:
    return asyncio.run(_halt(args))


async def _halt(args: argparse.Namespace) -> int:
    config = ExecutorConfig.from_environment(environment())
    if args.plan:
        client = await connect_temporal(config)
        try:
            await client.get_workflow_handle(workflow_id(args.plan)).signal("halt", args.reason)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                print(f"no running execution {workflow_id(args.plan)}: it finished already or never started", file=sys.stderr, flush=True)
                return 1
            raise
        print(f"halt signalled to {workflow_id(args.plan)}", flush=True)
        return 0
    nc = await _nats(config)
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(KILLSWITCH_SUBJECT, halt_message(args.reason, "cli"))
    await nc.drain()
    print(f"kill switch on: {args.reason} (undo with `hft-executor resume`)", flush=True)
    return 0


def resume(args: argparse.Namespace) -> int:
    return asyncio.run(_resume())


async def _resume() -> int:
    config = ExecutorConfig.from_environment(environment())
    nc = await _nats(config)
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(RESUME_SUBJECT, halt_message("resumed", "cli"))
    await nc.drain()
    print("kill switch off: plans flow again", flush=True)
    return 0


# --- status -------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    report = asyncio.run(_status())
    if args.json:
        print(json.dumps(report), flush=True)
        return 0
    print(f"kill switch: {'ON (' + report['halted'] + ')' if report['halted'] else 'off'}")
    print(f"running executions: {report['running']}")
    for execution in report["runningSample"]:
        print(f"  {execution}")
    print("wallets:")
    for wallet in report["wallets"]:
        balance = "?" if wallet["balance"] is None else f"{wallet['balance'] / 1e9:.3f} SOL"
        state = "healthy" if wallet["healthy"] else f"unhealthy: {wallet['reason']}"
        print(f"  {wallet['wallet']}  {balance:>14}  in-flight {wallet['inFlight']}  errors {wallet['errors']}  {state}")
    return 0


async def _status() -> dict:
    config = ExecutorConfig.from_environment(environment())
    nc = await _nats(config)
    js = nc.jetstream()
    halted = None
    try:
        last_halt = await js.get_last_msg("SYSTEM", KILLSWITCH_SUBJECT)
        try:
            last_resume = await js.get_last_msg("SYSTEM", RESUME_SUBJECT)
        except NotFoundError:
            last_resume = None
        if last_resume is None or last_halt.seq > last_resume.seq:
            halted = json.loads(last_halt.data).get("reason", "halted")
    except NotFoundError:
        pass
    try:
        known = [key.removeprefix("wallet.") for key in await (await js.key_value(WALLET_BUCKET)).keys()]
    except Exception:  # no bucket, or an empty one: no worker has run yet
        known = []
    wallets = await WalletPool.open(js, known)
    snapshot = await wallets.snapshot()
    await nc.drain()
    client = await connect_temporal(config)
    running = [execution.id async for execution in client.list_workflows(RUNNING_PLANS, limit=20)]
    count = (await client.count_workflows(RUNNING_PLANS)).count
    return {"halted": halted, "running": count, "runningSample": running, "wallets": snapshot}
