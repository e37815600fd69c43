"""Temporal security on the real stack: mutual TLS, encrypted history, the codec server, key rotation.

The history checks read what the Temporal server stores with a client that has no codec, as
someone with the database or the API would, and then prove each probe can see: the same
payloads through the codec show every field the probe looks for.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
import base64
import json
import os
import subprocess
import sys
import uuid

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from settings import SettingsError
from tests.stack import ROOT, stop_worker
from tests.temporal_tls import SERVER_NAME, MutualTlsTerminator, make_pki
from worker.bridge import workflow_id
from worker.config import ExecutorConfig
from worker.main import connect_temporal
from devtools.services import binary
from workflows.codec import ENCODING, KEY_ID_METADATA, new_key_line
from workflows.converter import data_converter as plain_converter
from workflows.execute_plan import ExecutePlan

CLI = [sys.executable, "-m", "worker.cli"]
# What SDK core writes itself into a local activity's marker (`details.data`): bookkeeping, no user data.
MARKER_BOOKKEEPING = {"seq", "attempt", "activity_id", "activity_type", "complete_time", "backoff", "original_schedule_time", "activation_index"}


# --- helpers ----------------------------------------------------------------------------------------------


def payloads_in(message, path: str = "") -> list[tuple[str, Payload]]:
    """Every Payload inside a protobuf message, with its field path (map keys in brackets)."""
    found = []
    if message.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
        return [(path, message)]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        here = f"{path}/{field.name}"
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if hasattr(item, "DESCRIPTOR"):
                    found += payloads_in(item, f"{here}[{key}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                found += payloads_in(item, f"{here}[{index}]")
        else:
            found += payloads_in(value, here)
    return found


def user_payloads(history: WorkflowHistory) -> list[tuple[str, Payload]]:
    """The payloads that carry the executor's data: all but search attributes (Temporal indexes them:
    plain by design) and the marker bookkeeping SDK core writes itself (checked separately)."""
    kept = []
    for index, event in enumerate(history.events):
        for path, payload in payloads_in(event, f"event{index}"):
            if "/search_attributes/" in path or "/marker_recorded_event_attributes/details[data]" in path:
                continue
            kept.append((path, payload))
    return kept


def marker_bookkeeping(history: WorkflowHistory) -> list[dict]:
    return [
        json.loads(payload.data)
        for index, event in enumerate(history.events)
        for path, payload in payloads_in(event, f"event{index}")
        if "/marker_recorded_event_attributes/details[data]" in path
    ]


async def signed_transaction(stack, plan_id: str) -> str:
    """The base64 signed transaction the plan's record holds (what the execute marker carries)."""
    kv = await stack.js.key_value("plan_records")
    key = "signed." + base64.urlsafe_b64encode(plan_id.encode()).decode().rstrip("=")
    return json.loads((await kv.get(key)).value)["transaction"]


def needles(plan: dict) -> dict[str, bytes]:
    """What must never be readable from history: the plan's identity and content, its transaction."""
    found = {"planId": plan["planId"].encode(), "inputAmount": f'"inputAmount":{plan["inputAmount"]}'.encode()}
    for r, route in enumerate(plan["routes"]):
        for i, instruction in enumerate(route["instructions"]):
            found[f"route {r} instruction {i} data"] = instruction["data"].encode()
    return found


async def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [*CLI, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


# --- encrypted history ------------------------------------------------------------------------------------


async def test_history_holds_only_ciphertext_of_plans_transactions_and_results(stack):
    plans = [stack.plan("rpc", wallet=3), stack.plan("jito_bundle", wallet=4), stack.plan("rpc", wallet=5, deadline_ms=-1)]
    results = [await stack.execute(plan) for plan in plans]
    assert [r["status"] for r in results] == ["success", "success", "timeout"]
    raw = await Client.connect(stack.config.temporal_address)  # no codec: what the server stores
    codec = stack.temporal.data_converter.payload_codec
    current = stack.config.history_keys.current

    for plan, result in zip(plans, results):
        history = await raw.get_workflow_handle(workflow_id(plan["planId"])).fetch_history()
        secrets = needles(plan)
        if result["status"] == "success":
            secrets["signature"] = result["signature"].encode()
            secrets["signed transaction"] = (await signed_transaction(stack, plan["planId"])).encode()
        stored = user_payloads(history)
        assert len(stored) >= 5, "input, summary, local activity results, the workflow's result"
        paths = " ".join(path for path, _ in stored)
        assert "workflow_execution_started_event_attributes/input" in paths and "/marker_recorded_event_attributes/details[result]" in paths
        assert "user_metadata/summary" in paths and "workflow_execution_completed_event_attributes/result" in paths
        for path, payload in stored:
            assert payload.metadata["encoding"] == ENCODING, f"{path} is stored in plain text"
            assert payload.metadata[KEY_ID_METADATA].decode() == current, path
        if result["status"] == "timeout":
            assert "encoded_attributes" in paths, "a failure's message is encrypted too"
        blob = b"\n".join(payload.SerializeToString() for _, payload in stored)
        assert [name for name, value in secrets.items() if value in blob] == []
        for row in marker_bookkeeping(history):
            assert set(row) <= MARKER_BOOKKEEPING, f"SDK marker data now holds {set(row) - MARKER_BOOKKEEPING}"

        # The probe sees what it looks for once the payloads are decrypted.
        decoded = await codec.decode([payload for _, payload in stored])
        clear = b"\n".join(payload.data for payload in decoded)
        assert [name for name, value in secrets.items() if value not in clear and name != "inputAmount"] == []
        assert b'"inputAmount"' in clear


async def test_temporal_cli_shows_ciphertext_and_decodes_through_the_codec_server(stack):
    plan = stack.plan("rpc", wallet=1)
    result = await stack.execute(plan)
    assert result["status"] == "success", result
    token = stack.dev.codec_token_file.read_text().strip()
    show = [binary("temporal"), "workflow", "show", "--address", stack.config.temporal_address, "-w", workflow_id(plan["planId"]), "-o", "json"]
    secret = [plan["routes"][0]["instructions"][2]["data"], result["signature"], f'"planId": "{plan["planId"]}"']

    async def shown(*extra: str) -> tuple[set[str], str]:
        """The payloads `temporal workflow show` prints: their encodings, and their data as text."""
        done = await asyncio.to_thread(subprocess.run, show + list(extra), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        printed = [p for event in json.loads(done.stdout)["events"] for _, p in _json_payloads(event)]
        encodings = {base64.b64decode(p["metadata"]["encoding"]).decode() for p in printed}
        return encodings, "\n".join(base64.b64decode(p.get("data", "")).decode(errors="replace") for p in printed)

    encodings, text = await shown()
    assert "binary/encrypted" in encodings and [s for s in secret if s in text] == []
    codec = ["--codec-endpoint", stack.dev.codec.url]
    encodings, text = await shown(*codec, "--codec-auth", f"Bearer {token}")
    assert "binary/encrypted" not in encodings and [s for s in secret if s not in text] == []
    # A wrong token: the codec server answers 401 and the CLI gives up rather than print anything.
    wrong = show + codec + ["--codec-auth", "Bearer wrong-token-wrong-token-wrong", "--command-timeout", "3s"]
    refused = await asyncio.to_thread(subprocess.run, wrong, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and [s for s in secret if s in refused.stdout + refused.stderr] == []


def _json_payloads(node, path: str = ""):
    """Payloads in the proto-JSON of a history event, search attributes left out (plain by design)."""
    if isinstance(node, dict):
        if "metadata" in node and "encoding" in node["metadata"] and "indexedFields" not in path:
            yield path, node
            return
        for key, value in node.items():
            yield from _json_payloads(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _json_payloads(value, f"{path}[{index}]")


# --- the codec server -------------------------------------------------------------------------------------


async def test_codec_server_decodes_what_the_worker_encoded_for_its_token_only(stack):
    plan = stack.plan("rpc", wallet=2)
    assert (await stack.execute(plan))["status"] == "success"
    raw = await Client.connect(stack.config.temporal_address)
    history = await raw.get_workflow_handle(workflow_id(plan["planId"])).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes.input
    body = json.dumps({"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                                     "data": base64.b64encode(p.data).decode()} for p in started.payloads]})  # fmt: skip
    server = stack.dev.codec
    token = stack.dev.codec_token_file.read_text().strip()
    ui = next(iter(sorted(server.origins)))
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}

    async def post(url: str, extra: dict | None = None, data: str = body):
        async with stack.http.post(url, data=data, headers={**headers, **(extra or {})}) as response:
            return response.status, await response.text(), response.headers

    status, text, _ = await post(f"{server.url}/decode", {"Authorization": f"Bearer {token}"})
    assert status == 200, text
    decoded = json.loads(text)["payloads"][0]
    assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain", "the original encoding came back out"
    assert json.loads(base64.b64decode(decoded["data"]))["planId"] == plan["planId"]

    # As the Temporal UI calls it: the token in the endpoint's path, CORS from the UI's origin.
    status, text, response_headers = await post(f"{server.ui_endpoint}/decode?preserveStorageRefs=true", {"Origin": ui})
    assert status == 200 and plan["planId"] in base64.b64decode(json.loads(text)["payloads"][0]["data"]).decode()
    assert response_headers["Access-Control-Allow-Origin"] == ui
    async with stack.http.options(f"{server.ui_endpoint}/decode", headers={"Origin": ui, "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "content-type,x-namespace"}) as preflight:  # fmt: skip
        assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == ui
        assert "x-namespace" in preflight.headers["Access-Control-Allow-Headers"].lower()

    for name, url, extra in (
        ("no token", f"{server.url}/decode", {}),
        ("wrong bearer", f"{server.url}/decode", {"Authorization": "Bearer " + "x" * len(token)}),
        ("bearer prefix of the token", f"{server.url}/decode", {"Authorization": f"Bearer {token[:-1]}"}),
        ("token without Bearer", f"{server.url}/decode", {"Authorization": token}),
        ("wrong path token", f"{server.url}/{'y' * len(token)}/decode", {}),
    ):
        status, text, response_headers = await post(url, extra)
        assert status == 401, f"{name}: {status} {text}"
        assert plan["planId"] not in text and token not in text
    status, text, response_headers = await post(f"{server.url}/decode", {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in response_headers
    async with stack.http.options(f"{server.url}/decode", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}) as preflight:
        assert preflight.status == 403
    status, _, _ = await post(f"{server.url}/decode", {"Authorization": f"Bearer {token}"}, data="not json")
    assert status == 400

    # /encode: what the UI sends a signal's input through; it comes back as the worker would have written it.
    plain = json.dumps({"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}, "data": base64.b64encode(b'"halt from the UI"').decode()}]})
    status, text, _ = await post(f"{server.url}/encode", {"Authorization": f"Bearer {token}"}, data=plain)
    assert status == 200
    encoded = json.loads(text)["payloads"][0]
    assert base64.b64decode(encoded["metadata"]["encoding"]) == ENCODING and b"halt" not in base64.b64decode(encoded["data"])
    back = await stack.temporal.data_converter.payload_codec.decode(
        [Payload(metadata={k: base64.b64decode(v) for k, v in encoded["metadata"].items()}, data=base64.b64decode(encoded["data"]))]
    )
    assert back[0].data == b'"halt from the UI"'


async def test_codec_server_command_refuses_to_run_open(tmp_path):
    env = {"HISTORY_KEYS": new_key_line("k1"), "PATH": os.environ.get("PATH", "")}
    done = await run_cli(env, "codec-server", "--port", "0")
    assert done.returncode == 1 and "no token" in done.stderr
    done = await run_cli({**env, "CODEC_AUTH_TOKEN": "short"}, "codec-server", "--port", "0")
    assert done.returncode == 1 and "at least 24 characters" in done.stderr and "short" not in done.stderr


# --- key rotation -----------------------------------------------------------------------------------------


async def test_a_history_written_with_key_a_is_read_with_keys_b_then_a(stack, tmp_path):
    old = stack.plan("rpc", wallet=0)
    assert (await stack.execute(old))["status"] == "success"  # written by the session's worker: key A only
    key_a = stack.config.history_keys.current
    line_b = new_key_line("rotated-b")
    queue = f"rotation-{uuid.uuid4().hex[:8]}"
    # HISTORY_KEYS first (B encrypts), then the file that holds A (still decrypts).
    env = {**stack.dev.environment(), "HISTORY_KEYS": line_b, "TEMPORAL_TASK_QUEUE": queue}
    rotated = await connect_temporal(ExecutorConfig.from_environment(env))
    assert rotated.data_converter.payload_codec.keys.ids == ("rotated-b", key_a)

    worker, log_path = await stack.start_worker(tmp_path, "rotated", HISTORY_KEYS=line_b, TEMPORAL_TASK_QUEUE=queue)
    try:
        new = stack.plan("rpc", wallet=1)
        handle = await rotated.start_workflow("ExecutePlan", new, id=workflow_id(new["planId"]), task_queue=queue)
        result = await asyncio.wait_for(handle.result(), 60)
        assert result["status"] == "success", result
    finally:
        await stop_worker(worker)
    assert "historyKey=rotated-b" in log_path.read_text()

    raw = await Client.connect(stack.config.temporal_address)
    new_history = await raw.get_workflow_handle(workflow_id(new["planId"])).fetch_history()
    old_history = await raw.get_workflow_handle(workflow_id(old["planId"])).fetch_history()
    assert {p.metadata[KEY_ID_METADATA].decode() for _, p in user_payloads(new_history)} == {"rotated-b"}
    assert {p.metadata[KEY_ID_METADATA].decode() for _, p in user_payloads(old_history)} == {key_a}

    # B, A reads both: the old history's result decodes and both histories replay.
    assert (await rotated.get_workflow_handle(workflow_id(old["planId"])).result())["status"] == "success"
    assert await replay_failures([old_history, new_history], rotated.data_converter) == []
    # A alone cannot read B's history, nor can no key read A's: the replay test really needs the codec.
    assert len(await replay_failures([new_history], stack.temporal.data_converter)) == 1
    assert len(await replay_failures([old_history], plain_converter)) == 1
    with pytest.raises(Exception) as refused:
        await stack.temporal.get_workflow_handle(workflow_id(new["planId"])).result()
    text = "".join(str(e) for e in (refused.value, refused.value.__cause__, getattr(refused.value, "__context__", None)))
    assert "rotated-b" in text and line_b.split(":", 1)[1] not in text


async def replay_failures(histories: list[WorkflowHistory], converter) -> list[str]:
    async def each():
        for history in histories:
            yield history

    failures = []
    replayer = Replayer(workflows=[ExecutePlan], data_converter=converter)
    async with replayer.workflow_replay_iterator(each()) as outcomes:
        async for outcome in outcomes:
            if outcome.replay_failure is not None:
                failures.append(str(outcome.replay_failure))
    return failures


# --- mutual TLS -------------------------------------------------------------------------------------------


async def test_mtls_clients_connect_with_their_certificate_and_nobody_without_one(stack, tmp_path):
    pki = make_pki(tmp_path / "pki")
    terminator = await MutualTlsTerminator(stack.dev.temporal.port, pki).start()
    tls = {
        "TEMPORAL_ADDRESS": terminator.address,
        "TEMPORAL_TLS_CA": str(pki.ca),
        "TEMPORAL_TLS_CERT": str(pki.client_cert),
        "TEMPORAL_TLS_KEY": str(pki.client_key),
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
    }
    env = {**stack.dev.environment(), **tls}
    try:
        # A client over mTLS starts a plan (as a planner could without the bridge) and reads its result.
        client = await connect_temporal(ExecutorConfig.from_environment(env))
        plan = stack.plan("rpc", wallet=0)
        handle = await client.start_workflow("ExecutePlan", plan, id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue)
        assert (await asyncio.wait_for(handle.result(), 30))["status"] == "success"

        # The worker process and an operator command, configured only by environment.
        worker, log_path = await stack.start_worker(tmp_path, "mtls", **tls)
        await stop_worker(worker)
        assert "temporalTls=mtls" in log_path.read_text()
        status = await run_cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert "running" in json.loads(status.stdout)
        accepted = terminator.accepted

        refused = {
            "no client certificate": {**tls, "TEMPORAL_TLS_CERT": "", "TEMPORAL_TLS_KEY": ""},
            "a certificate from another CA": {**tls, "TEMPORAL_TLS_CERT": str(pki.rogue_cert), "TEMPORAL_TLS_KEY": str(pki.rogue_key)},
            "plain TCP": {"TEMPORAL_ADDRESS": terminator.address},
        }
        for name, settings in refused.items():
            config = ExecutorConfig.from_environment({**stack.dev.environment(), **settings})
            try:
                await asyncio.wait_for(connect_temporal(config), 20)
            except RuntimeError:
                continue
            raise AssertionError(f"{name}: connected")
        assert terminator.accepted == accepted, "the terminator let none of them through"
        # The server's certificate names temporal.hft.test, not 127.0.0.1: without the name, the client refuses the server.
        with pytest.raises(RuntimeError, match="NotValidForName"):
            await connect_temporal(ExecutorConfig.from_environment({**env, "TEMPORAL_TLS_SERVER_NAME": ""}))
    finally:
        await terminator.stop()


async def test_mtls_settings_that_cannot_work_stop_the_process_with_the_variable_named(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        ExecutorConfig.from_environment({"TEMPORAL_TLS_CERT": str(pki.client_cert), "HISTORY_ENCRYPTION": "off"})
    pki.client_key.chmod(0o644)
    config = ExecutorConfig.from_environment(
        {"TEMPORAL_TLS_CERT": str(pki.client_cert), "TEMPORAL_TLS_KEY": str(pki.client_key), "HISTORY_ENCRYPTION": "off"}
    )
    with pytest.raises(SettingsError) as loose:
        await connect_temporal(config)
    assert "TEMPORAL_TLS_KEY" in str(loose.value) and "chmod 600" in str(loose.value)
    assert "PRIVATE KEY" not in str(loose.value)
    config = ExecutorConfig.from_environment({"TEMPORAL_TLS_CA": str(tmp_path / "missing.pem"), "HISTORY_ENCRYPTION": "off"})
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_CA=.*missing.pem: cannot read it"):
        await connect_temporal(config)


async def test_a_plan_started_in_plain_text_by_a_client_without_the_keys_never_runs(stack):
    """Issue 20: Temporal was an open door. A client that reaches Temporal without the history keys
    started a plan in plain text, and the worker ran it (the codec let plain payloads through). With
    encryption on, the plan is refused: one failed result, nothing sent. A halt in plain text still halts."""
    from temporalio.client import Client

    plain = await Client.connect(stack.config.temporal_address, namespace=stack.config.temporal_namespace)
    plan = stack.plan("rpc", wallet=2)
    handle = await plain.start_workflow("ExecutePlan", plan, id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue)
    told = await stack.result(plan["planId"], timeout=20)
    assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN"), told
    assert "plain text" in told["error"]
    assert await stack.wire_transactions(plan["planId"]) == [], "a plan in plain text was sent"
    ended = await asyncio.wait_for(stack.temporal.get_workflow_handle(handle.id).result(), 20)  # completed, not stuck
    assert ended["errorCode"] == "INVALID_PLAN"

    # An operator without the keys is not locked out of a halt: a plain `halt` signal still stops a plan.
    halted = stack.plan("rpc", wallet=2)
    encrypted = await stack.temporal.start_workflow(
        "ExecutePlan", halted, id=workflow_id(halted["planId"]), task_queue=stack.config.temporal_task_queue, start_delay=timedelta(seconds=3)
    )
    await plain.get_workflow_handle(encrypted.id).signal("halt", "halted by an operator without the history keys")
    result = await stack.result(halted["planId"], timeout=20)
    assert (result["status"], result["errorCode"]) == ("failed", "HALTED"), result
    assert "without the history keys" in result["error"]
