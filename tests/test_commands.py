"""The commands as a user runs them: `dev --demo --exit --json`, `send-plan`, `halt`, `resume`, `status`."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.stack import ROOT

CLI = [sys.executable, "-m", "worker.cli"]


def _port_open(url: str) -> bool:
    host, port = url.rsplit("//", 1)[-1].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, int(port.split("/")[0]))) == 0


def test_dev_demo_runs_every_plan_to_success_and_leaves_nothing_running():
    with tempfile.TemporaryDirectory() as data_dir:
        done = subprocess.run(
            [*CLI, "dev", "--ports", "auto", "--demo", "6", "--exit", "--json", "--slot-ms", "50", "--data-dir", data_dir],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    endpoints, summary = json.loads(lines[0]), json.loads(lines[-1])
    assert {"temporal", "temporalUi", "nats", "solanaRpc", "solanaBlockEngine", "wallets"} <= set(endpoints)
    assert summary["plans"] == summary["results"] == summary["success"] == 6, summary
    assert summary["failed"] == summary["timeout"] == 0
    assert "results 6/6" in done.stderr and "jito_bundle" in done.stderr  # progress and the result table
    for name in ("nats", "solanaRpc", "solanaAdmin"):
        assert not _port_open(endpoints[name]), f"{name} still listening after exit"
    assert not _port_open("tcp://" + endpoints["temporal"])


async def _run(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], cwd=ROOT, env={**os.environ, **env}, input=stdin, capture_output=True, text=True, timeout=60
    )


async def test_send_plan_halt_resume_and_status(stack, tmp_path: Path):
    planner, env = stack.dev.environment("planner"), stack.dev.environment("operator")  # each command as its user
    for keys in ("WALLET_KEYS_DIR", "HISTORY_KEYS_FILE"):  # the signer's alone
        assert keys in stack.dev.environment("worker") and keys not in planner and keys not in env
    plan = stack.plan("rpc", wallet=2)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    sent = await _run(planner, "send-plan", str(plan_file))
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["planId"] == plan["planId"]
    assert (await stack.result(plan["planId"]))["status"] == "success"

    from_stdin = stack.plan("jito_bundle", wallet=2)
    assert (await _run(planner, "send-plan", "-", stdin=json.dumps(from_stdin))).returncode == 0
    assert (await stack.result(from_stdin["planId"]))["status"] == "success"

    halted = await _run(env, "halt", "--reason", "maintenance window")
    assert halted.returncode == 0, halted.stderr
    status = json.loads((await _run(env, "status", "--json")).stdout)
    assert status["halted"] == "maintenance window"
    assert {w["wallet"] for w in status["wallets"]} == set(stack.wallets)
    assert all(w["balance"] is None or w["balance"] > 0 for w in status["wallets"])

    resumed = await _run(env, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((await _run(env, "status", "--json")).stdout)["halted"] is None
    for _ in range(100):  # the worker hears the resume
        if stack.worker.killswitch.halted() is None:
            break
        await asyncio.sleep(0.05)
    assert stack.worker.killswitch.halted() is None


def test_dev_stops_everything_on_ctrl_c():
    with tempfile.TemporaryDirectory() as data_dir:
        process = subprocess.Popen(
            [*CLI, "dev", "--ports", "auto", "--json", "--slot-ms", "50", "--data-dir", data_dir],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            endpoints = json.loads(process.stdout.readline())
            assert _port_open(endpoints["solanaRpc"]) and _port_open("tcp://" + endpoints["temporal"])
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0, process.stderr.read()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
    for name in ("nats", "solanaRpc", "solanaBlockEngine", "solanaAdmin", "temporalUi"):
        assert not _port_open(endpoints[name]), f"{name} still listening after Ctrl-C"
    assert not _port_open("tcp://" + endpoints["temporal"])


async def test_operator_commands_fail_clearly(stack):
    env = stack.dev.environment("operator")
    unknown = await _run(env, "halt", "--plan", "no-such-plan")
    assert unknown.returncode == 1 and "no running execution plan-no-such-plan" in unknown.stderr
    unreachable = await _run({**env, "NATS_URL": "nats://127.0.0.1:1"}, "status")
    assert unreachable.returncode == 1 and "cannot reach NATS at nats://127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unknown.stderr + unreachable.stderr


async def test_commands_run_as_their_nats_user_and_say_so_when_refused(stack):
    """halt as the planner: NATS refuses it (only the operator may touch system.>), and the command says why."""
    as_planner = await _run(stack.dev.environment("planner"), "halt", "--reason", "not the planner's to do")
    assert as_planner.returncode == 1, as_planner.stdout + as_planner.stderr
    assert "NATS refused: permissions violation for publish to" in as_planner.stderr and "Traceback" not in as_planner.stderr
    assert stack.worker.killswitch.halted() is None

    password = "wrong-" + os.urandom(8).hex()
    wrong = await _run({**stack.dev.environment("operator"), "NATS_PASSWORD": password}, "status")
    assert wrong.returncode == 1 and "authorization violation" in wrong.stderr.lower()
    assert password not in wrong.stderr + wrong.stdout and "Traceback" not in wrong.stderr
