"""Operator commands: `worker`, `send-plan`, `halt`, `resume`, `status` (`results` is worker/results.py).

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
import time
from pathlib import Path

import nats.errors
from nats.js.errors import NoStreamResponseError
from temporalio.service import RPCError, RPCStatusCode

from executor.keystore import KeyStore, reexec_without_wallet_variables
from executor.wallets import WalletPool

from . import event_loop, logs
from .bridge import workflow_id
from .config import ExecutorConfig
from .killswitch import RUNNING_PLANS, KILLSWITCH_SUBJECT, RESUME_SUBJECT, default_sender, halt_message, last_state, parse_message
from .main import EXIT_CONNECTION_LOST, ConnectionLost, ExecutorWorker, connect_temporal
from .nats_connection import connect as nats_connect, redact_url
from .presence import SILENCE_S, WorkerTable
from .streams import ensure_streams
from settings import CommandError

WALLET_BUCKET = "wallet_leases"
DEV_ENVIRONMENT = Path(".data") / "dev-environment.json"


def environment(role: str = "worker") -> dict[str, str]:
    """The process's environment; with NATS_URL unset, completed by a running `dev`'s environment for ``role``
    (``worker``; ``planner`` for send-plan; ``operator`` for halt, resume, status and results: their NATS credentials)."""
    env = dict(os.environ)
    if "NATS_URL" not in env and DEV_ENVIRONMENT.exists():
        for key, value in json.loads(DEV_ENVIRONMENT.read_text()).get(role, {}).items():
            env.setdefault(key, value)
    return env


#: Permission violations NATS reported to this command (asynchronously: the refused request itself only times out).
_refusals: list[str] = []


async def _nats(config: ExecutorConfig):
    """A short-lived operator connection: fail fast with a clear message, don't retry forever."""
    async def note(error: Exception) -> None:
        if "permissions violation" in str(error).lower():
            _refusals.append(str(error))

    try:
        # nats-py keeps retrying a refused first connect on its own; the deadline is ours.
        return await asyncio.wait_for(nats_connect(config.nats_url, config.nats_auth, connect_timeout=3, allow_reconnect=False, error_cb=note), 5)
    except Exception as error:
        raise CommandError(
            f"cannot reach NATS at {redact_url(config.nats_url)} ({str(error) or type(error).__name__}); set NATS_URL "
            "(and NATS_USER/NATS_PASSWORD, NATS_TLS_*: see README, NATS security) or start `hft-executor dev`"
        ) from None


def _run(command) -> object:
    """asyncio.run, turning a request NATS refused (it shows as a timeout) into a one-line error naming the permission."""
    try:
        return asyncio.run(command)
    except (TimeoutError, nats.errors.TimeoutError):
        if _refusals:
            raise CommandError(f"NATS refused: {_refusals[-1].removeprefix('nats: ')} (not allowed for this user)") from None
        raise


# --- worker -------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    # WALLET_n in the start-up environment stay readable in /proc/<pid>/environ for the process's life:
    # start again without them first (executor/keystore.py says how the keys cross).
    reexec_without_wallet_variables()
    logs.configure(args.log_level)
    return event_loop.run(_worker())


async def _worker() -> int:
    env = environment("worker")
    config = ExecutorConfig.from_environment(env)
    try:
        keys = KeyStore.from_environment(env)
    except (ValueError, OSError) as error:
        raise CommandError(f"wallet keys: {error}") from None
    if not len(keys):
        raise CommandError("no wallet keys: set WALLET_1..WALLET_N or WALLET_KEYS_DIR")
    worker = ExecutorWorker(config, keys)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    try:
        await worker.run_until(stop)
    except ConnectionLost as lost:  # logged where it was seen; the supervisor starts a clean process
        return _exit_code(lost)
    finally:
        await worker.stop()
    return 0


def _exit_code(lost: ConnectionLost) -> int:
    print(f"hft-executor worker: {lost}; exiting with {EXIT_CONNECTION_LOST} so that the supervisor starts it anew", file=sys.stderr, flush=True)
    return EXIT_CONNECTION_LOST


# --- history-key --------------------------------------------------------------------


def history_key(args: argparse.Namespace) -> int:
    """A new key line on stdout, for a key file (`>> keys; chmod 600 keys`) or HISTORY_KEYS. Put it first to rotate."""
    from workflows.codec import HistoryKeyError, new_key_line

    try:
        print(new_key_line(args.id or time.strftime("hk-%Y%m%d", time.gmtime())), flush=True)
    except HistoryKeyError as error:
        raise CommandError(str(error)) from None
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
    return _run(_send_plan(args))


async def _send_plan(args: argparse.Namespace) -> int:
    plans = read_plans(args.file)
    config = ExecutorConfig.from_environment(environment("planner"))
    nc = await _nats(config)
    # No ensure_streams: a planner may publish plans and nothing else (a worker creates PLANNED).
    js = nc.jetstream()
    for plan in plans:
        opportunity = plan.get("opportunityId") if isinstance(plan, dict) else None
        subject = f"execution.planned.{opportunity if isinstance(opportunity, str) and opportunity else 'unknown'}"
        try:
            ack = await js.publish(subject, json.dumps(plan).encode())
        except NoStreamResponseError:
            raise CommandError(f"no stream takes {subject}: start a worker first (it creates PLANNED)") from None
        print(json.dumps({"planId": plan.get("planId") if isinstance(plan, dict) else None, "subject": subject, "seq": ack.seq}), flush=True)
    await nc.drain()
    return 0


# --- halt / resume ------------------------------------------------------------------

#: `halt --wait`: some live worker did not acknowledge the halt within --timeout.
NOT_ACKNOWLEDGED = 3
#: `halt --wait`: a resume published after this halt ended it before the wait did.
SUPERSEDED = 4


def halt(args: argparse.Namespace) -> int:
    return _run(_halt(args))


async def _halt(args: argparse.Namespace) -> int:
    config = ExecutorConfig.from_environment(environment("operator"))
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
    by = args.by or default_sender()
    nc = await _nats(config)
    js = nc.jetstream()
    await ensure_streams(js, replicas=config.nats_replicas)
    # Watch before publishing, so an acknowledgment that comes back at once is not missed.
    table = await WorkerTable.open(js, create=True) if args.wait else None
    published = await js.publish(KILLSWITCH_SUBJECT, halt_message(args.reason, by))
    report = {"halted": True, "reason": args.reason, "by": by, "seq": published.seq}
    code = 0
    if table is not None:
        report.update(await _wait_for_acknowledgments(js, table, published.seq, args.timeout))
        await table.close()
        code = SUPERSEDED if report["resumedAfter"] else NOT_ACKNOWLEDGED if report["missing"] else 0
        report["halted"] = not report["resumedAfter"]
    await nc.drain()
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _print_halt(report)
    return code


async def _wait_for_acknowledgments(js, table: WorkerTable, seq: int, timeout: float) -> dict:
    """Wait until every live worker's entry shows a halt at `seq` or later applied.

    Counted: workers live when the halt was published, and any that turn live during the
    wait. A counted worker that falls silent stays counted (dead or cut off from NATS, it
    cannot be told apart, and a cut-off worker may still be sending); one whose entry is
    removed stopped cleanly and drops out.
    """
    started = time.monotonic()
    counted = {entry["id"] for entry in table.live()}
    resumed_after = None
    checked_resume = 0.0
    while True:
        by_id = table.by_id()
        counted = (counted | {entry["id"] for entry in table.live()}) & by_id.keys()
        acknowledged = sorted(i for i in counted if (by_id[i].get("haltSeq") or 0) >= seq)
        missing = sorted(counted - set(acknowledged))
        elapsed = time.monotonic() - started
        if time.monotonic() - checked_resume >= 0.5 or not missing or elapsed >= timeout:
            checked_resume = time.monotonic()
            _, resume = await last_state(js)
            if resume is not None and resume[0] > seq:
                resumed_after = {"seq": resume[0], "by": parse_message(resume[1])[1]}
        if not missing or elapsed >= timeout or resumed_after:
            break
        table.changed.clear()
        try:
            await asyncio.wait_for(table.changed.wait(), min(0.2, timeout - elapsed))
        except TimeoutError:
            pass
    silent = [entry["id"] for entry in table.silent() if entry["id"] not in counted]
    return {
        "acknowledged": acknowledged,
        "missing": missing,
        "silent": silent,
        "resumedAfter": resumed_after,
        "waitedMs": int((time.monotonic() - started) * 1000),
        "workers": {i: by_id[i] for i in counted},
    }


def _print_halt(report: dict) -> None:
    print(f"kill switch on: {report['reason']} (seq {report['seq']}, by {report['by']}; undo with `hft-executor resume`)", flush=True)
    if "acknowledged" not in report:
        return
    workers = report.pop("workers")
    total = len(report["acknowledged"]) + len(report["missing"])
    print(f"acknowledged by {len(report['acknowledged'])} of {total} live workers after {report['waitedMs']} ms")
    now = time.time() * 1000
    for worker in report["acknowledged"]:
        entry = workers[worker]
        print(f"  acknowledged  {worker}  halt seq {entry['haltSeq']} applied {max(0, now - (entry.get('haltAppliedAt') or now)) / 1000:.1f} s ago")
    for worker in report["missing"]:
        entry = workers[worker]
        print(f"  MISSING       {worker}  last seen {max(0, now - entry['seenAt']) / 1000:.1f} s ago, last applied seq {entry.get('stateSeq')}")
    for worker in report["silent"]:
        print(f"  not counted   {worker}  silent for over {SILENCE_S:.0f} s (dead, or cut off from NATS)")
    if total == 0:
        print("no live worker is registered in the executor_workers bucket", file=sys.stderr)
    if report["resumedAfter"]:
        print(f"a resume (seq {report['resumedAfter']['seq']}, by {report['resumedAfter']['by']}) was published after this halt: the kill switch is off", file=sys.stderr)
    elif report["missing"]:
        print(f"{len(report['missing'])} live worker(s) did not acknowledge: they may still be sending", file=sys.stderr)
    sys.stdout.flush()


def resume(args: argparse.Namespace) -> int:
    return _run(_resume(args))


async def _resume(args: argparse.Namespace) -> int:
    by = args.by or default_sender()
    config = ExecutorConfig.from_environment(environment("operator"))
    nc = await _nats(config)
    js = nc.jetstream()
    await ensure_streams(js, replicas=config.nats_replicas)
    published = await js.publish(RESUME_SUBJECT, halt_message("resumed", by))
    await nc.drain()
    if args.json:
        print(json.dumps({"resumed": True, "by": by, "seq": published.seq}), flush=True)
    else:
        print(f"kill switch off: plans flow again (seq {published.seq}, by {by})", flush=True)
    return 0


# --- status -------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    report = _run(_status())
    if args.json:
        print(json.dumps(report), flush=True)
        return 0
    if report["halted"]:
        print(f"kill switch: ON ({report['halted']}; seq {report['haltSeq']}, by {report['haltedBy']})")
    else:
        print("kill switch: off")
    now = time.time() * 1000
    print(f"workers: {len(report['workers'])} live")
    for worker in report["workers"]:
        state = f"halted at seq {worker.get('haltSeq')}" if worker.get("halted") else "running"
        print(f"  {worker['id']}  {state}  last seen {max(0, now - worker['seenAt']) / 1000:.1f} s ago")
    for worker in report["silentWorkers"]:
        print(f"  {worker}  silent for over {SILENCE_S:.0f} s (dead, or cut off from NATS)")
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
    config = ExecutorConfig.from_environment(environment("operator"))
    nc = await _nats(config)
    js = nc.jetstream()
    halt, resume = await last_state(js)
    halted = halted_by = halt_seq = None
    if halt is not None and (resume is None or halt[0] > resume[0]):
        (halted, halted_by), halt_seq = parse_message(halt[1]), halt[0]
    table = await WorkerTable.open(js)
    workers, silent = table.live(), [entry["id"] for entry in table.silent()]
    await table.close()
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
    return {
        "halted": halted, "haltedBy": halted_by, "haltSeq": halt_seq, "workers": workers, "silentWorkers": silent,
        "running": count, "runningSample": running, "wallets": snapshot,
    }  # fmt: skip
