"""The kill switch as an operator relies on it: a halt reaches every worker, whatever its
connection was doing when the halt was published, and `halt --wait` says which workers
acknowledged it.

The first tests run `KillSwitch` on its own against a real nats-server, some of them
through a TCP proxy the test cuts or slows. The last ones run `hft-executor worker`
processes on the real stack and the `halt`/`resume`/`status` commands as a user does.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import pytest

from tests.stack import ROOT, Stack, wait_until
from tests.tcp_proxy import TcpProxy
from worker.killswitch import KillSwitch, halt_message
from worker.presence import SILENCE_S, WorkerTable
from devtools.services import NatsServer
from worker.streams import KILLSWITCH_SUBJECT, RESUME_SUBJECT, ensure_streams

CLI = [sys.executable, "-m", "worker.cli"]
NOT_ACKNOWLEDGED = 3
SUPERSEDED = 4


@pytest.fixture
async def nats_server(tmp_path):
    server = NatsServer(tmp_path / "nats", port=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def operator(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    yield js
    await nc.close()


class Workers:
    """KillSwitches wired to their connection as `ExecutorWorker` wires its own."""

    def __init__(self) -> None:
        self.started: list[KillSwitch] = []

    async def start(self, url: str, name: str) -> KillSwitch:
        holder: list[KillSwitch] = []

        async def reconnected() -> None:
            if holder:
                await holder[0].reconnected()

        nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnected_cb=reconnected)
        js = nc.jetstream()
        await ensure_streams(js)
        killswitch = KillSwitch(nc, js, None, name, worker_id=f"{name}-{os.getpid()}@test")
        holder.append(killswitch)
        await killswitch.start()
        self.started.append(killswitch)
        return killswitch

    async def stop(self, killswitch: KillSwitch) -> None:
        self.started.remove(killswitch)
        await killswitch.stop()
        await killswitch.nc.close()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(killswitch) for killswitch in list(self.started)))


@pytest.fixture
async def proxies(nats_server):
    """TCP proxies to the test's nats-server; closed after the workers that use them."""
    opened: list[TcpProxy] = []

    async def open_proxy(delay_s: float = 0.0) -> TcpProxy:
        opened.append(await TcpProxy("127.0.0.1", nats_server.port, delay_s=delay_s).start())
        return opened[-1]

    yield open_proxy
    for proxy in opened:
        await proxy.stop()


@pytest.fixture
async def workers(proxies):
    started = Workers()
    yield started
    await started.close()


async def halt(js, reason: str = "test halt", by: str = "tester") -> int:
    return (await js.publish(KILLSWITCH_SUBJECT, halt_message(reason, by))).seq


async def resume(js, by: str = "tester") -> int:
    return (await js.publish(RESUME_SUBJECT, halt_message("resumed", by))).seq


async def _true(value) -> bool:
    return bool(value)


# --- one KillSwitch against a real nats-server ---------------------------------------------------


async def test_a_halt_published_while_a_worker_is_cut_off_applies_within_two_seconds_of_reconnecting(operator, proxies, workers):
    proxy = await proxies()
    worker = await workers.start(proxy.url, "cut-off")
    assert worker.halted() is None
    proxy.sever()
    await wait_until(lambda: _true(not worker.nc.is_connected), timeout=5)
    seq = await halt(operator, "halted while you were away", by="risk-desk")
    # Longer than the 5 s after which nats-server drops an ephemeral consumer nobody
    # listens to: a partition of a few seconds is an ordinary one.
    await asyncio.sleep(6.0)
    assert worker.halted() is None, "cut off: it cannot know yet"
    proxy.heal()
    await wait_until(lambda: _true(worker.halted() is not None), timeout=10)
    reconnected_at = proxy.accepted_at[-1]
    assert worker.halt_applied_at / 1000 - reconnected_at < 2.0, "halted within two seconds of reconnecting"
    assert (worker.reason, worker.by, worker.halt_seq) == ("halted while you were away", "risk-desk", seq)
    table = await WorkerTable.open(operator)
    await wait_until(lambda: _true((table.by_id()[worker.worker_id].get("haltSeq") or 0) >= seq), timeout=3)
    await table.close()


async def test_a_halt_published_while_a_worker_starts_is_never_missed(nats_server, operator, proxies, workers):
    """Whichever step of its start a worker is at when a halt is published, it ends halted,
    and through its subscription: well before its once-a-second re-read would have caught a
    miss. One start per step: the halt is stored right before the worker's n-th JetStream
    request reaches the server."""

    def counting(proxy: TcpProxy, at_request: int | None = None, reason: str = "") -> dict:
        seen = {"requests": 0, "halted_at": None}

        async def before_upstream(chunk: bytes) -> None:
            seen["requests"] += chunk.count(b"$JS.API.")
            if at_request is not None and seen["halted_at"] is None and seen["requests"] >= at_request:
                await halt(operator, reason)
                seen["halted_at"] = time.monotonic()

        proxy.before_upstream = before_upstream
        return seen

    await workers.start(nats_server.url, "first")  # creates what only the first start creates
    calibration = await proxies()
    seen = counting(calibration)
    await workers.start(calibration.url, "calibration")
    steps = seen["requests"]
    assert steps >= 5, "a start makes several JetStream requests"

    missed = []
    for step in range(1, steps + 1):
        await resume(operator)
        proxy = await proxies()
        seen = counting(proxy, at_request=step, reason=f"halt at step {step}")
        worker = await workers.start(proxy.url, f"starting-{step}")
        assert seen["halted_at"] is not None, f"the start made fewer than {step} requests"
        deadline = max(time.monotonic(), seen["halted_at"]) + 0.5
        while worker.halted() != f"halt at step {step}" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if worker.halted() != f"halt at step {step}":
            missed.append(step)
        await workers.stop(worker)
    assert missed == [], f"halts published at these steps of {steps} were missed: {missed}"


async def test_resume_clears_the_state_everywhere_and_each_worker_says_so(nats_server, operator, proxies, workers):
    direct = await workers.start(nats_server.url, "direct")
    proxy = await proxies()
    remote = await workers.start(proxy.url, "remote")
    halt_seq = await halt(operator, "close of day")
    await wait_until(lambda: _true(direct.halted() and remote.halted()), timeout=3)

    proxy.sever()  # one of them is away when the resume is published
    await wait_until(lambda: _true(not remote.nc.is_connected), timeout=5)
    resume_seq = await resume(operator, by="desk-lead")
    await wait_until(lambda: _true(direct.halted() is None), timeout=3)
    assert remote.halted() == "close of day"
    proxy.heal()
    await wait_until(lambda: _true(remote.halted() is None), timeout=10)

    restarted = await workers.start(nats_server.url, "restarted")
    assert restarted.halted() is None, "a worker started after the resume is not halted"
    table = await WorkerTable.open(operator)
    for worker in (direct, remote, restarted):
        await wait_until(lambda worker=worker: _true(table.by_id().get(worker.worker_id, {}).get("stateSeq") == resume_seq), timeout=3)
        entry = table.by_id()[worker.worker_id]
        assert entry["halted"] is False and entry["reason"] is None and entry["by"] == "desk-lead"
    assert table.by_id()[direct.worker_id]["haltSeq"] == halt_seq, "the last halt applied stays on record"
    await table.close()


async def test_the_newer_message_decides_even_when_the_stream_is_recreated(nats_server, operator, workers):
    worker = await workers.start(nats_server.url, "recreated")
    for _ in range(5):
        await resume(operator)
    await halt(operator, "before the reset")
    await wait_until(lambda: _true(worker.halted()), timeout=3)
    await resume(operator)
    await wait_until(lambda: _true(worker.halted() is None), timeout=3)

    await operator.delete_stream("SYSTEM")
    await ensure_streams(operator)
    seq = await halt(operator, "after the reset")
    assert seq < worker.applied_seq, "a recreated stream starts again from sequence 1"
    await wait_until(lambda: _true(worker.halted() == "after the reset"), timeout=5)


async def test_halt_wait_stops_with_4_when_a_resume_overtakes_it(nats_server, operator, proxies, workers):
    """A resume published while `halt --wait` waits: the halt is no longer in force, and the
    operator must not read the wait's end as "everything is stopped"."""
    await workers.start(nats_server.url, "listening")
    proxy = await proxies()
    away = await workers.start(proxy.url, "away")
    proxy.sever()
    await wait_until(lambda: _true(not away.nc.is_connected), timeout=5)
    waiting = asyncio.create_task(asyncio.to_thread(
        subprocess.run, [*CLI, "halt", "--wait", "--timeout", "20", "--json"], cwd=ROOT,
        env={**os.environ, "NATS_URL": nats_server.url}, capture_output=True, text=True, timeout=60,
    ))  # fmt: skip
    await wait_until(lambda: _true(workers.started[0].halted()), timeout=15)
    resume_seq = await resume(operator, by="someone-else")
    done = await asyncio.wait_for(waiting, 10)
    assert done.returncode == SUPERSEDED, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["halted"] is False and report["resumedAfter"] == {"seq": resume_seq, "by": "someone-else"}
    assert report["missing"] == [away.worker_id]


# --- worker processes and the commands, on the real stack ----------------------------------------


@pytest.fixture(scope="module")
async def ks_stack():
    data_dir = Path(tempfile.mkdtemp(prefix="hft-killswitch-"))
    stack = await Stack(data_dir, slot_ms=100.0, wallets=2).start()
    stack.logs = data_dir / "logs"
    stack.logs.mkdir()
    nats_port = int(stack.config.nats_url.rsplit(":", 1)[1])
    stack.proxy = await TcpProxy("127.0.0.1", nats_port).start()
    stack.direct = await start_worker(stack, "ks-direct")
    # TLS end to end through the proxy: the worker still verifies the server's name (127.0.0.1) in its certificate.
    stack.proxied = await start_worker(stack, "ks-proxied", NATS_URL=stack.proxy.url.replace("nats://", "tls://"))
    yield stack
    for worker in (stack.direct, stack.proxied):
        await stop_worker(worker)
    await stack.proxy.stop()
    await stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, log: Path, name: str) -> None:
        self.process, self.log, self.name = process, log, name
        self.id = f"{name}-{process.pid}@{socket.gethostname()}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


async def start_worker(stack: Stack, name: str, **env: str) -> WorkerProcess:
    log = stack.logs / f"{name}.log"
    worker = WorkerProcess(stack.worker_process(log, EXECUTOR_NAME=name, **env), log, name)
    deadline = time.monotonic() + 60
    while "event=started name=" not in (worker.text() if log.exists() else ""):
        assert worker.process.poll() is None, f"worker {name} exited: {worker.text()[-2000:]}"
        assert time.monotonic() < deadline, f"worker {name} not ready: {worker.text()[-2000:]}"
        await asyncio.sleep(0.1)
    return worker


async def stop_worker(worker: WorkerProcess) -> None:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(worker.process.wait, 30)
        except subprocess.TimeoutExpired:
            worker.process.kill()


async def run(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], cwd=ROOT, env={**os.environ, **stack.dev.environment("operator")}, capture_output=True, text=True, timeout=60
    )


async def status(stack: Stack) -> dict:
    done = await run(stack, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def resumed_everywhere(stack: Stack, *workers: WorkerProcess) -> None:
    done = await run(stack, "resume", "--by", "tester", "--json")
    assert done.returncode == 0, done.stderr
    seq = json.loads(done.stdout)["seq"]

    async def cleared() -> bool:
        entries = {entry["id"]: entry for entry in (await status(stack))["workers"]}
        return all(w.id in entries and not entries[w.id]["halted"] and entries[w.id]["stateSeq"] >= seq for w in workers)

    await wait_until(cleared, timeout=10, every=0.3)


async def test_halt_wait_returns_0_when_every_live_worker_acknowledged(ks_stack):
    stack = ks_stack
    done = await run(stack, "halt", "--wait", "--json", "--reason", "end of session", "--by", "alice@desk")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert {stack.direct.id, stack.proxied.id} <= set(report["acknowledged"]), report
        assert report["missing"] == [] and report["halted"] is True
        assert (report["reason"], report["by"]) == ("end of session", "alice@desk")
        for worker in (stack.direct, stack.proxied):
            assert f'event=halt seq={report["seq"]} reason="end of session" by="alice@desk"' in worker.text()
        async def both_listed_halted() -> bool:
            # A heartbeat can slip past the 5 s liveness window on a box busy with the rest of
            # the suite; what a user relies on is that status shows both halted at this seq.
            workers = {entry["id"]: entry for entry in (await status(stack))["workers"]}
            return all(w.id in workers and workers[w.id]["halted"] and workers[w.id]["haltSeq"] == report["seq"] for w in (stack.direct, stack.proxied))

        await wait_until(both_listed_halted, timeout=10, every=0.3)

        plain = await run(stack, "halt", "--wait", "--reason", "again")
        assert plain.returncode == 0, plain.stdout + plain.stderr
        assert f"acknowledged  {stack.direct.id}" in plain.stdout and f"acknowledged  {stack.proxied.id}" in plain.stdout
    finally:
        await resumed_everywhere(stack, stack.direct, stack.proxied)


async def test_halt_wait_names_the_cut_off_worker_which_halts_when_it_reconnects(ks_stack):
    stack = ks_stack
    stack.proxy.sever()
    severed = time.monotonic()
    try:
        done = await run(stack, "halt", "--wait", "--timeout", "3", "--json", "--reason", "cut off", "--by", "bob")
        assert done.returncode == NOT_ACKNOWLEDGED, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["missing"] == [stack.proxied.id], report
        assert stack.direct.id in report["acknowledged"] and stack.proxied.id not in report["acknowledged"]
        # Cut off longer than nats-server keeps a consumer nobody listens to (5 s).
        await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - severed)))
    finally:
        stack.proxy.heal()
    try:
        async def acknowledged() -> dict | None:
            entry = {e["id"]: e for e in (await status(stack))["workers"]}.get(stack.proxied.id)
            return entry if entry and (entry.get("haltSeq") or 0) >= report["seq"] else None

        entry = await wait_until(acknowledged, timeout=15, every=0.3)
        assert entry["haltAppliedAt"] / 1000 - stack.proxy.accepted_at[-1] < 2.0, "halted within two seconds of reconnecting"
        log = stack.proxied.text()
        assert f'event=halt seq={report["seq"]} reason="cut off" by="bob"' in log
        assert f"event=reconnected worker={stack.proxied.id}" in log, "the worker re-reads the state when NATS comes back"
    finally:
        await resumed_everywhere(stack, stack.direct, stack.proxied)


async def test_a_killed_worker_stops_counting_as_live_after_the_silence_window(ks_stack):
    stack = ks_stack
    doomed = await start_worker(stack, "ks-doomed")
    assert doomed.id in {entry["id"] for entry in (await status(stack))["workers"]}
    doomed.process.kill()
    doomed.process.wait()
    killed = time.monotonic()
    listed = await status(stack)
    assert doomed.id in {entry["id"] for entry in listed["workers"]}, "still inside the silence window"
    await asyncio.sleep(max(0.0, SILENCE_S + 0.5 - (time.monotonic() - killed)))
    listed = await status(stack)
    assert doomed.id not in {entry["id"] for entry in listed["workers"]} and doomed.id in listed["silentWorkers"]
    done = await run(stack, "halt", "--wait", "--json", "--timeout", "5", "--reason", "after a crash")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert doomed.id not in report["acknowledged"] + report["missing"] and doomed.id in report["silent"]
        assert {stack.direct.id, stack.proxied.id} <= set(report["acknowledged"])
    finally:
        await resumed_everywhere(stack, stack.direct, stack.proxied)
