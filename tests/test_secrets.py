"""No private key leaves the key store: not into workflow history, results, logs or KV state.

Runs after the other tests on the session stack, so every kind of plan (success, halted,
malformed, expired) has left its traces to search.
"""
from __future__ import annotations

import json

from nats.js.errors import KeyNotFoundError, NoKeysError

from tests.stack import leaked, secret_forms


async def bucket_values(js, *buckets: str) -> list[str]:
    """Every value now in these KV buckets. A bucket may be empty (every worker's presence gone,
    every lease released) and a key may go between the listing and the read."""
    values = []
    for bucket in buckets:
        kv = await js.key_value(bucket)
        try:
            keys = await kv.keys()
        except NoKeysError:
            continue
        for key in keys:
            try:
                values.append((await kv.get(key)).value.decode())
            except KeyNotFoundError:
                pass
    return values


async def test_no_private_key_in_history_results_logs_or_kv(stack, worker_log):
    forms = secret_forms(stack.dev.data_dir / "wallets")
    assert forms, "the dev wallets exist as key files"
    plans = [stack.plan("jito_bundle", wallet=3), stack.plan("rpc", wallet=4), stack.plan("rpc", wallet=5, deadline_ms=-1)]
    statuses = [(await stack.execute(plan))["status"] for plan in plans]
    assert statuses == ["success", "success", "timeout"]

    histories = []
    async for execution in stack.temporal.list_workflows('WorkflowType = "ExecutePlan"'):
        history = await stack.temporal.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        histories.append(history.to_json())
    assert len(histories) >= len(plans)
    assert leaked("\n".join(histories), forms) == []

    assert leaked(json.dumps(stack.results), forms) == []

    assert len(worker_log.lines) > 50
    assert leaked("\n".join(worker_log.lines), forms) == []
    assert leaked(repr(stack.dev.keys) + str(stack.dev.keys), forms) == []

    values = await bucket_values(stack.js, "plan_records", "wallet_leases")
    assert values and leaked("\n".join(values), forms) == []


async def test_no_nats_credential_in_logs_or_in_what_the_worker_describes(stack, worker_log):
    """The session stack runs with NATS users and mutual TLS: none of their secrets may reach a log line."""
    security = stack.dev.security
    assert security is not None and security.passwords
    secrets = dict(security.passwords)
    secrets["route password"] = security.route_password
    for key_file in security.directory.glob("*-key.pem"):
        body = "".join(line for line in key_file.read_text().splitlines() if not line.startswith("-----"))
        secrets[key_file.name] = body[:48]  # any stretch of the key's base64 would do
    text = "\n".join(worker_log.lines) + repr(stack.config) + json.dumps(stack.config.describe()) + json.dumps(stack.results)
    assert [name for name, secret in secrets.items() if secret in text] == []
    assert stack.config.describe()["nats_auth"]["user"] == "worker"  # the describe() does show who it is


async def test_no_history_key_or_codec_token_in_logs_results_history_or_kv(stack, worker_log):
    """The history key and the codec server's token stay in their files: not in the worker's or the
    codec server's log lines, the Temporal server's log (its command line holds the UI's codec
    endpoint), results, the raw history, KV entries or any repr."""
    import base64

    from temporalio.client import Client

    from workflows.codec import HistoryKeys

    plan = stack.plan("rpc", wallet=4)
    assert (await stack.execute(plan))["status"] == "success"
    async with stack.http.post(f"{stack.dev.codec.url}/decode", data="{}", headers={"Authorization": "Bearer wrong"}) as refused:
        assert refused.status == 401  # a refusal is logged too: it must not quote what was sent either

    lines = [line for line in stack.dev.history_keys_file.read_text().splitlines() if line and not line.startswith("#")]
    assert HistoryKeys.from_environment({"HISTORY_KEYS_FILE": str(stack.dev.history_keys_file)}).ids == tuple(line.split(":")[0] for line in lines)
    forms = {}
    for line in lines:
        key = base64.b64decode(line.split(":", 1)[1])
        forms.update({"key base64": base64.b64encode(key).decode(), "key urlsafe": base64.urlsafe_b64encode(key).decode().rstrip("="),
                      "key hex": key.hex(), "key repr": repr(key)[2:-1][:40]})  # fmt: skip
    forms["codec token"] = stack.dev.codec_token_file.read_text().strip()

    raw = await Client.connect(stack.config.temporal_address)
    histories = [(await raw.get_workflow_handle(e.id, run_id=e.run_id).fetch_history()).to_json() async for e in raw.list_workflows('WorkflowType = "ExecutePlan"')]
    values = await bucket_values(stack.js, "plan_records", "wallet_leases", "executor_workers")
    temporal_log = stack.dev.temporal.log_file.read_text(errors="replace")
    assert "--ui-codec-endpoint" in temporal_log, "the endpoint is there, without its path"
    places = {
        "worker and codec server log lines": "\n".join(worker_log.lines),
        "Temporal server log": temporal_log,
        "results": json.dumps(stack.results),
        "raw histories": "\n".join(histories),
        "KV entries": "\n".join(values),
        "reprs": " ".join(map(repr, (stack.config, stack.config.describe(), stack.dev.codec, stack.config.history_keys, stack.temporal.data_converter))),
    }
    assert any("stage=codec event=refused status=401" in line for line in worker_log.lines)
    assert {place: leaked(text, forms) for place, text in places.items() if leaked(text, forms)} == {}


async def test_wallet_variables_are_gone_from_the_worker_processes_environ(stack, tmp_path):
    """`WALLET_n` removed from os.environ is still in /proc/<pid>/environ (the kernel keeps the start-up
    environment): the worker re-executes itself without them and takes the keys through a memory file."""
    import base58

    from tests.stack import stop_worker

    files = sorted((stack.dev.data_dir / "wallets").glob("*.json"))
    keys = {f"WALLET_{i}": base58.b58encode(bytes(json.loads(path.read_text()))).decode() for i, path in enumerate(files, 1)}
    process, log_path = await stack.start_worker(tmp_path, "env-keys", WALLET_KEYS_DIR="", **keys)
    try:
        environ = open(f"/proc/{process.pid}/environ", "rb").read().decode(errors="replace")
        assert "WALLET_1=" not in environ
        assert leaked(environ, secret_forms(stack.dev.data_dir / "wallets")) == []
        assert f"wallets={len(files)}" in log_path.read_text(), "every key reached the new image"
    finally:
        await stop_worker(process)
