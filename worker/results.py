"""`hft-executor results`: the executor's results as a downstream consumer sees them, without the NATS CLI.

Results are on the EXECUTED stream, subject executed.<status>.<opportunityId>, one per plan after
JetStream's dedupe (executor/publish.py). The command reads them as the operator through a
short-lived ordered consumer: ephemeral, in memory, no acks, gone when the command ends, so it
changes nothing for anyone else's consumers.

- ``--last N``: from sequence max(first, last - N + 1) up to the stream's last sequence when the
  command started;
- ``--follow``: then every new result, until Ctrl-C or SIGTERM (exit 0);
- ``--plan ID``: that plan's result (see ``_plan_results``), exit 1 if it has none;
- ``--json``: each result as it is on the wire, one per line; else a table (``print_table``, also
  the table of `dev --demo`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from executor.records import BUCKET as RECORDS_BUCKET
from executor.records import PlanRecords

from .config import ExecutorConfig
from .control import _nats, _run, environment
from .nats_connection import redact_url
from .streams import EXECUTED_SUBJECTS
from settings import CommandError

STREAM = "EXECUTED"
DEFAULT_LAST = 20
#: Without --follow: how long to wait for a result the stream said it had before giving up (aged out meanwhile).
IDLE_S = 5.0


# --- the table ----------------------------------------------------------------------

HEADER = f"{'plan':<28} {'method':<12} {'status':<8} {'code':<20} {'latency ms':>10} {'slot':>8}  {'signature / error'}"


def table_header() -> str:
    return HEADER + "\n" + "-" * len(HEADER)


def table_row(result: dict) -> str:
    """One result (its wire form, decoded) as a line of the table; fields a result lacks are left blank."""
    code = result.get("errorCode") or ""
    detail = str(result.get("error") or "")[:80] if code else result.get("signature") or ""
    latency = result.get("latency")
    latency = f"{latency:>10.1f}" if isinstance(latency, (int, float)) else " " * 10
    plan, method, status = (str(result.get(name) or "") for name in ("planId", "executionMethod", "status"))
    slot = str(result.get("blockSlot") or "")
    return f"{plan[-28:]:<28} {method:<12} {status:<8} {code:<20} {latency} {slot:>8}  {detail}"


def print_table(results: list[dict], out) -> None:
    out.write(table_header() + "\n")
    for result in results:
        out.write(table_row(result) + "\n")
    out.flush()


# --- the command --------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--last", type=_count, default=None, metavar="N", help=f"the last N results (default {DEFAULT_LAST}; 0 with --follow: only new ones)")
    parser.add_argument("--follow", "-f", action="store_true", help="then keep printing new results until Ctrl-C or SIGTERM")
    parser.add_argument("--plan", metavar="ID", help="the result of one plan id (exit 1 if it has none)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, as on the wire")


def run(args: argparse.Namespace) -> int:
    if args.plan is not None and (args.follow or args.last is not None):
        print("hft-executor results: --plan takes neither --last nor --follow", file=sys.stderr)
        return 2
    return _run(_results(args))


async def _results(args: argparse.Namespace) -> int:
    config = ExecutorConfig.from_environment(environment("operator"))
    nc = await _nats(config)
    try:
        js = nc.jetstream()
        try:
            state = (await js.stream_info(STREAM)).state
        except NotFoundError:
            raise CommandError(f"no {STREAM} stream at {redact_url(config.nats_url)}: no worker has run yet (a worker creates it)") from None
        if args.json:
            emit = _print_json
        else:
            print(table_header(), flush=True)
            emit = _print_row
        stopping = asyncio.Event()  # Ctrl-C or SIGTERM: stop reading (exit 0, or 130 for a --plan scan cut short)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        if args.plan is not None:
            found = await _plan_results(js, state, args.plan, stopping)
            for data in found:
                emit(data, False)
            if not found:
                if stopping.is_set():  # no answer either way
                    print(f"interrupted before the scan of {STREAM} was done: no result for plan {args.plan} so far", file=sys.stderr)
                    return 130
                print(f"no result for plan {args.plan} (none stored in {RECORDS_BUCKET}, none on {STREAM}): not run yet, still running, or unknown", file=sys.stderr)
                return 1
            return 0
        last = DEFAULT_LAST if args.last is None else args.last
        start = max(state.first_seq, state.last_seq - last + 1, 1)
        await _read(js, start, state.last_seq, follow=args.follow, stopping=stopping, on_result=lambda data: emit(data, args.follow))
        sys.stdout.flush()
        return 0
    finally:
        await nc.close()


async def _plan_results(js, state, plan_id: str, stopping: asyncio.Event) -> list[bytes]:
    """A plan's result(s), as on the wire.

    A subject filter cannot select a plan: the subject holds the opportunity id, the plan id is only in
    the body. The plan's stored result (KV plan_records, result.<planId>: executor/records.py) is its
    one result, the one every publish of it carries, so that is read first: one lookup however long the
    stream is. Only a plan the bridge rejected before it ran (a message that does not parse) has no stored
    result, just its message on the stream; for it, and for an id that has none at all, the stream is
    scanned from its first sequence to its last (a 7-day stream: seconds per hundred thousand results).
    """
    try:
        stored = await PlanRecords(await js.key_value(RECORDS_BUCKET)).result(plan_id)
    except NotFoundError:  # no bucket: no plan has run yet
        stored = None
    if stored is not None:
        return [stored.to_wire()]
    found: list[bytes] = []
    needle = json.dumps(plan_id).encode()  # a cheap test before parsing: the id as JSON writes it

    def match(data: bytes) -> None:
        if needle in data and _decode(data).get("planId") == plan_id:
            found.append(data)

    if state.messages:
        await _read(js, max(state.first_seq, 1), state.last_seq, follow=False, stopping=stopping, on_result=match)
    return found


async def _read(js, start: int, last: int, *, follow: bool, stopping: asyncio.Event, on_result: Callable[[bytes], None]) -> None:
    """Hand each result from sequence `start` to `on_result`: up to `last`, or on and on with `follow`, until `stopping` is set."""
    if not follow and start > last:
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def on_message(message) -> None:
        queue.put_nowait(message)

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    subscription = await js.subscribe(EXECUTED_SUBJECTS, stream=STREAM, cb=on_message, ordered_consumer=True, config=config)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while not stopping.is_set():
            if queue.empty():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, stop}, timeout=None if follow else IDLE_S, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break  # stopped, or (without --follow) nothing more came
                message = getter.result()
            else:
                message = queue.get_nowait()
            seq = message.metadata.sequence.stream
            if not follow and seq > last:
                break
            on_result(message.data)
            if not follow and seq >= last:
                break
    finally:
        stop.cancel()
        await subscription.unsubscribe()


def _decode(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _print_json(data: bytes, flush: bool) -> None:
    result = _decode(data)
    if not result:
        print(f"skipped a message on {STREAM} that is not a result: {data[:80]!r}", file=sys.stderr)
        return
    text = data.decode()
    print(text if "\n" not in text else json.dumps(result, ensure_ascii=False, separators=(",", ":")), flush=flush)


def _print_row(data: bytes, flush: bool) -> None:
    result = _decode(data)
    if not result:
        print(f"skipped a message on {STREAM} that is not a result: {data[:80]!r}", file=sys.stderr)
        return
    print(table_row(result), flush=flush)
