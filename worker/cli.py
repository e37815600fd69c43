"""The `hft-executor` command.

Each command's module is imported only when that command runs: `hft-executor worker` loads
the production process and nothing of the developer tools (devtools, localnet, bench, chaos).
Only this module ends the process: commands raise `settings.CommandError` (a `SettingsError` is
one), and `main` turns it into exit status 1 with its message, what a SystemExit with the message
in each command did before.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from settings import CommandError

TEMPORAL_COMMANDS = {"dev", "worker", "halt", "status", "bench", "chaos"}
#: The exit code when stdout's reader went away (`hft-executor status | head -1`): 128 + SIGPIPE, what a
#: shell reports for a writer that a closed pipe killed (`set -o pipefail` sees it; a plain pipeline does not).
BROKEN_PIPE = 141


def _module(path: str) -> Callable[[argparse.ArgumentParser], None]:
    """A command whose module defines its own `add_arguments(parser)` and `run(args)`."""

    def define(parser: argparse.ArgumentParser) -> None:
        module = importlib.import_module(path)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)

    return define


def _worker(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(run=control.run_worker)


def _history_key(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("--id", default=None, help="key id (default hk-<UTC date>)")
    parser.set_defaults(run=control.history_key)


def _send_plan(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("file", metavar="FILE|-")
    parser.set_defaults(run=control.send_plan)


def _halt(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("--plan", help="halt only this plan id (signals its workflow)")
    parser.add_argument("--reason", default="halted by operator")
    parser.add_argument("--by", help="who halts, carried in the message and logged by every worker (default user@host)")
    parser.add_argument("--wait", action="store_true", help=f"wait until every live worker acknowledged; exit {control.NOT_ACKNOWLEDGED} if one did not, {control.SUPERSEDED} if a resume came after")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds --wait waits at most (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.set_defaults(run=control.halt)


def _resume(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("--by", help="who resumes (default user@host)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.set_defaults(run=control.resume)


def _status(parser: argparse.ArgumentParser) -> None:
    from . import control

    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=control.status)


#: name: (help, how to define its arguments and what runs it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "dev": ("everything embedded: Temporal, NATS, local Solana cluster, worker (+ --demo N)", _module("devtools.dev")),
    "worker": ("the production process: Temporal worker + PLANNED bridge + kill switch + metrics", _worker),
    "bench": ("plan-to-wire latency, throughput and the durability tax (embedded stack)", _module("bench.command")),
    "chaos": ("fault campaign: kills, outages, cluster faults and a halt; checks exactly-once from outside", _module("chaos.command")),
    "localnet": ("run the local Solana cluster (JSON-RPC, Jito block engine, TPU over QUIC)", _module("localnet.command")),
    "codec-server": ("Temporal's remote codec endpoint (/decode, /encode): the UI and CLI read the encrypted history", _module("worker.codec_server")),
    "history-key": ("print a new random history key line, id:base64 (for HISTORY_KEYS or HISTORY_KEYS_FILE)", _history_key),
    "send-plan": ("publish execution plans (a JSON file, array or JSON lines; - for stdin)", _send_plan),
    "inspect-plan": ("the transaction a plan would become (decoded), without signing or sending", _module("devtools.inspect_plan")),
    "halt": ("kill switch on: no plan submits until `resume` (or halt one plan)", _halt),
    "resume": ("kill switch off", _resume),
    "status": ("kill switch, live workers, running executions, wallets and leases", _status),
    "results": ("the executor's results from EXECUTED: the last N, --follow, one --plan; a table or --json", _module("worker.results")),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="hft-executor", description="Durable Solana trade executor: every plan a Temporal workflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command_name, (help_text, define) in COMMANDS.items():
        command = commands.add_parser(command_name, help=help_text)
        if command_name == chosen:
            define(command)

    name = None
    try:
        try:
            args = parser.parse_args(argv)
            name = args.command
            code = args.run(args)
        finally:
            sys.stdout.flush()  # here, not at exit: a closed pipe then shows as the BrokenPipeError below
    except CommandError as error:
        # The one place a refusal becomes an exit (a bad setting, a missing stream, a refused login): the library
        # raises, the command line ends the process, with the message on stderr and status 1.
        raise SystemExit(str(error)) from None
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
