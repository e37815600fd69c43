"""The `hft-executor` command."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from localnet import command as localnet_command


TEMPORAL_COMMANDS = {"dev", "worker", "halt", "status", "bench", "chaos"}
#: The exit code when stdout's reader went away (`hft-executor status | head -1`): 128 + SIGPIPE, what a
#: shell reports for a writer that a closed pipe killed (`set -o pipefail` sees it; a plain pipeline does not).
BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    from bench import command as bench_command
    from chaos import command as chaos_command

    from . import codec_server, control, dev
    from . import inspect as inspect_command
    from . import results as results_command

    parser = argparse.ArgumentParser(prog="hft-executor", description="Durable Solana trade executor: every plan a Temporal workflow.")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("dev", help="everything embedded: Temporal, NATS, local Solana cluster, worker (+ --demo N)")
    dev.add_arguments(command)
    command.set_defaults(run=dev.run)

    command = commands.add_parser("worker", help="the production process: Temporal worker + PLANNED bridge + kill switch + metrics")
    command.add_argument("--log-level", default="INFO")
    command.set_defaults(run=control.run_worker)

    command = commands.add_parser("bench", help="plan-to-wire latency, throughput and the durability tax (embedded stack)")
    bench_command.add_arguments(command)
    command.set_defaults(run=bench_command.run)

    command = commands.add_parser("chaos", help="fault campaign: kills, outages, cluster faults and a halt; checks exactly-once from outside")
    chaos_command.add_arguments(command)
    command.set_defaults(run=chaos_command.run)

    command = commands.add_parser("localnet", help="run the local Solana cluster (JSON-RPC, Jito block engine, TPU over QUIC)")
    localnet_command.add_arguments(command)
    command.set_defaults(run=localnet_command.run)

    command = commands.add_parser("codec-server", help="Temporal's remote codec endpoint (/decode, /encode): the UI and CLI read the encrypted history")
    codec_server.add_arguments(command)
    command.set_defaults(run=codec_server.run)

    command = commands.add_parser("history-key", help="print a new random history key line, id:base64 (for HISTORY_KEYS or HISTORY_KEYS_FILE)")
    command.add_argument("--id", default=None, help="key id (default hk-<UTC date>)")
    command.set_defaults(run=control.history_key)

    command = commands.add_parser("send-plan", help="publish execution plans (a JSON file, array or JSON lines; - for stdin)")
    command.add_argument("file", metavar="FILE|-")
    command.set_defaults(run=control.send_plan)

    command = commands.add_parser("inspect-plan", help="the transaction a plan would become (decoded), without signing or sending")
    inspect_command.add_arguments(command)
    command.set_defaults(run=inspect_command.run)

    command = commands.add_parser("halt", help="kill switch on: no plan submits until `resume` (or halt one plan)")
    command.add_argument("--plan", help="halt only this plan id (signals its workflow)")
    command.add_argument("--reason", default="halted by operator")
    command.add_argument("--by", help="who halts, carried in the message and logged by every worker (default user@host)")
    command.add_argument("--wait", action="store_true", help=f"wait until every live worker acknowledged; exit {control.NOT_ACKNOWLEDGED} if one did not, {control.SUPERSEDED} if a resume came after")
    command.add_argument("--timeout", type=float, default=10.0, help="seconds --wait waits at most (default 10)")
    command.add_argument("--json", action="store_true", help="one JSON line")
    command.set_defaults(run=control.halt)

    command = commands.add_parser("resume", help="kill switch off")
    command.add_argument("--by", help="who resumes (default user@host)")
    command.add_argument("--json", action="store_true", help="one JSON line")
    command.set_defaults(run=control.resume)

    command = commands.add_parser("status", help="kill switch, live workers, running executions, wallets and leases")
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=control.status)

    command = commands.add_parser("results", help="the executor's results from EXECUTED: the last N, --follow, one --plan; a table or --json")
    results_command.add_arguments(command)
    command.set_defaults(run=results_command.run)

    name = None
    try:
        try:
            args = parser.parse_args(argv)
            name = args.command
            code = args.run(args)
        finally:
            sys.stdout.flush()  # here, not at exit: a closed pipe then shows as the BrokenPipeError below
    except BrokenPipeError:
        # The reader has gone: drop what it did not read, quietly, as the Python docs recommend (signal, "Note on
        # SIGPIPE"): stdout onto devnull, so that the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = BROKEN_PIPE
    if name in TEMPORAL_COMMANDS:
        # The Temporal client's Rust runtime can abort the interpreter's own teardown
        # ("PyGILState_Release", seen 1 run in 4 of `status`). Everything is stopped and
        # flushed by now, so leave without it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
