"""The production process loads nothing of the developer tools (devtools, local cluster, bench, chaos)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.stack import ROOT

DEVELOPER_TOOLS = ("devtools", "localnet", "bench", "chaos")

PROBE = textwrap.dedent(
    """
    import json, os, sys
    from worker import cli

    def leave(code):  # the Temporal commands end with os._exit: end with SystemExit instead, to report
        raise SystemExit(code)

    os._exit = leave
    argv = sys.argv[1:]
    if argv[0] == "worker":
        from worker import control
        control.run_worker = lambda args: 0  # stop where the worker would connect: what it imported is the point
    try:
        cli.main(argv)
    except SystemExit:
        pass
    tools = %r
    print(json.dumps(sorted(m for m in sys.modules if m in tools or m.startswith(tuple(t + "." for t in tools)))))
    """
    % (DEVELOPER_TOOLS,)
)


def loaded_tools(*argv: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hft_executor_worker_imports_neither_localnet_nor_bench():
    assert loaded_tools("worker") == []


def test_the_probe_sees_a_developer_tool_when_one_is_loaded():
    assert "bench.command" in loaded_tools("bench", "--help")
    assert "localnet.command" in loaded_tools("localnet", "--help")
    assert "devtools.dev" in loaded_tools("dev", "--help")
    assert "devtools.inspect_plan" in loaded_tools("inspect-plan", "--help")


def test_the_top_level_help_lists_every_command_without_loading_them():
    done = subprocess.run([sys.executable, "-m", "worker.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for command in ("dev", "worker", "bench", "chaos", "localnet", "results", "halt", "status", "send-plan"):
        assert command in done.stdout
    assert loaded_tools("--help") == []


def test_the_domain_loads_nothing_of_temporal():
    """executor/ is the trading domain: it raises its own errors (executor/errors.py) and passes plain
    dataclasses (workflows/stages.py), so it runs and tests without temporalio; only activities/
    translates to Temporal's errors (issue 21)."""
    probe = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        import executor
        for module in pkgutil.walk_packages(executor.__path__, "executor."):
            importlib.import_module(module.name)
        print(json.dumps(sorted(m for m in sys.modules if m == "temporalio" or m.startswith("temporalio."))))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
