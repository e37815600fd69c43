"""`hft-executor results` as an operator runs it, against the session stack; and every command on a closed pipe."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from tests.stack import ROOT
from worker.cli import BROKEN_PIPE
from worker.results import print_table, table_row

CLI = [sys.executable, "-m", "worker.cli"]


async def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [*CLI, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def _start(env: dict, *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=ROOT, env={**os.environ, **env}, stdout=stdout, stderr=subprocess.PIPE)


async def _line(process: subprocess.Popen, timeout: float = 30.0) -> bytes:
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout)
    assert line, f"exited {process.poll()}: {process.stderr.read().decode()[-2000:]}"
    return line


async def _exit_code(process: subprocess.Popen, timeout: float = 30.0) -> int:
    return await asyncio.wait_for(asyncio.to_thread(process.wait), timeout)


def _clean(stderr: str) -> bool:
    return "Traceback" not in stderr and "Exception ignored" not in stderr


async def _rejected(stack) -> dict:
    """A plan the bridge rejects before it runs (its result is on EXECUTED only, no stored result)."""
    plan = {**stack.plan("rpc", wallet=5), "simulationSuccess": False}
    await stack.publish(plan)
    result = await stack.result(plan["planId"])
    assert result["errorCode"] == "PLAN_NOT_SIMULATED"
    return plan


async def test_last_plan_and_table(stack):
    env = stack.dev.environment("operator")
    plans = [stack.plan("rpc", wallet=3), stack.plan("jito_bundle", wallet=4)]
    executed = await asyncio.gather(*(stack.execute(plan) for plan in plans))
    assert [result["status"] for result in executed] == ["success", "success"]
    rejected = await _rejected(stack)
    statuses = {plan["planId"]: "success" for plan in plans} | {rejected["planId"]: "failed"}

    last = await _run(env, "results", "--last", "20", "--json")
    assert last.returncode == 0 and _clean(last.stderr), last.stderr
    lines = [json.loads(line) for line in last.stdout.splitlines()]
    assert len(lines) <= 20
    assert {r["planId"]: r["status"] for r in lines if r["planId"] in statuses} == statuses
    two = (await _run(env, "results", "--last", "2", "--json")).stdout.splitlines()
    assert len(two) == 2 and all(json.loads(line)["planId"] for line in two)

    # --plan: an executed plan (its stored result) and a rejected one (found on the stream)
    for plan_id in (plans[1]["planId"], rejected["planId"]):
        one = await _run(env, "results", "--plan", plan_id, "--json")
        assert one.returncode == 0, one.stderr
        (result,) = [json.loads(line) for line in one.stdout.splitlines()]
        assert result["planId"] == plan_id and result["status"] == statuses[plan_id]
    assert json.loads(one.stdout)["errorCode"] == "PLAN_NOT_SIMULATED"

    unknown = await _run(env, "results", "--plan", "no-such-plan")
    assert unknown.returncode == 1 and "no result for plan no-such-plan" in unknown.stderr and _clean(unknown.stderr)

    table = await _run(env, "results", "--last", "5")
    assert table.returncode == 0, table.stderr
    header, rule, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["plan", "method", "status", "code", "latency"] and set(rule) == {"-"}
    assert any(plans[1]["planId"] in row and "jito_bundle" in row and executed[1]["signature"] in row for row in rows)
    assert any(rejected["planId"] in row and "PLAN_NOT_SIMULATED" in row for row in rows)
    one_row = await _run(env, "results", "--plan", plans[0]["planId"])
    assert one_row.returncode == 0 and plans[0]["planId"] in one_row.stdout.splitlines()[2]


async def test_follow_prints_new_results_until_terminated(stack):
    env = stack.dev.environment("operator")
    await stack.execute(stack.plan("rpc", wallet=3))  # the stream has a last result to start from
    process = _start(env, "results", "--follow", "--last", "1", "--json")
    try:
        json.loads(await _line(process))  # the last result: the command is reading the stream
        plan = stack.plan("rpc", wallet=4)
        await stack.execute(plan)
        while (result := json.loads(await _line(process)))["planId"] != plan["planId"]:
            pass
        assert result["status"] == "success"
        process.send_signal(signal.SIGTERM)
        assert await _exit_code(process) == 0
        assert _clean(process.stderr.read().decode())
    finally:
        if process.poll() is None:
            process.kill()


async def test_the_planner_may_not_read_results(stack):
    refused = await _run(stack.dev.environment("planner"), "results", "--last", "1")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "NATS refused: permissions violation" in refused.stderr and _clean(refused.stderr)


# --- a closed pipe ------------------------------------------------------------------


async def test_a_reader_that_goes_away_ends_results_follow_quietly(stack):
    """`hft-executor results --follow --json | head -1`: the next result finds the pipe closed."""
    process = _start(stack.dev.environment("operator"), "results", "--follow", "--last", "1", "--json")
    try:
        await _line(process)
        process.stdout.close()
        await stack.execute(stack.plan("rpc", wallet=3))
        assert await _exit_code(process) == BROKEN_PIPE
        stderr = process.stderr.read().decode()
        assert _clean(stderr) and "Broken pipe" not in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()


async def test_every_command_on_a_closed_pipe_exits_quietly(stack):
    """`status` (a Temporal command: it leaves through os._exit) and `results`, their stdout a pipe nobody reads."""
    env = stack.dev.environment("operator")
    for args in (["status"], ["results", "--last", "50", "--json"]):
        read, write = os.pipe()
        process = _start(env, *args, stdout=write)
        os.close(read), os.close(write)  # the reader is gone before the command writes a byte
        assert await _exit_code(process, 60) == BROKEN_PIPE, args
        stderr = process.stderr.read().decode()
        assert _clean(stderr) and "Broken pipe" not in stderr, (args, stderr)


def test_table_rows(tmp_path):
    failed = {"planId": "p-1", "executionMethod": "rpc", "status": "failed", "errorCode": "TX_FAILED", "error": "custom program error", "signature": "sig", "latency": 12.34}
    row = table_row(failed)
    assert row.split()[:5] == ["p-1", "rpc", "failed", "TX_FAILED", "12.3"] and row.endswith("custom program error")
    assert table_row({"planId": "p-2", "status": "success", "signature": "5ig", "blockSlot": 7}).endswith("7  5ig")
    with open(tmp_path / "table", "w") as out:
        print_table([failed], out)
    assert (tmp_path / "table").read_text().splitlines()[2] == row
