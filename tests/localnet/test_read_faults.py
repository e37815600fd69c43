"""The `reads` fault channel, seen by a plain aiohttp client as the executor's status poller sees it."""
from __future__ import annotations

import base64
import time

import aiohttp
import pytest
from solders.keypair import Keypair

from localnet.faults import no_faults
from localnet.reads import UNAVAILABLE_BODY

from .conftest import SOL, funded_wallet, latest_blockhash, transfer_tx, wait_status


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def call(method: str, params: list | None = None, request_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or []}


async def post(session: aiohttp.ClientSession, url: str, body: dict | list) -> tuple[int, object, float]:
    """HTTP status, decoded body (JSON when it is JSON, text otherwise) and seconds taken."""
    started = time.monotonic()
    async with session.post(url, json=body) as response:
        text = await response.text()
        elapsed = time.monotonic() - started
        if response.content_type == "application/json":
            return response.status, await response.json(), elapsed
        return response.status, text, elapsed



async def test_rate_limited_reads_answer_429_as_each_server_does(cluster, admin, session):
    rpc, engine = cluster.endpoints()["rpc"], cluster.endpoints()["blockEngine"] + "/api/v1/getBundleStatuses"
    admin.put("/faults", json={"reads": {"rate_limit": 1.0}}).raise_for_status()
    for method, params in (("getSignatureStatuses", [[str(Keypair().pubkey())]]), ("getBlockHeight", []), ("getTransaction", ["1" * 64])):
        status, body, _ = await post(session, rpc, call(method, params))
        assert status == 429 and body["error"]["code"] == 429, (method, body)
    status, body, _ = await post(session, engine, call("getBundleStatuses", [["00" * 32]]))
    assert status == 429 and body["error"]["code"] == -32097  # Jito's own 429 body
    status, body, _ = await post(session, rpc, call("getSlot"))
    assert status == 200 and isinstance(body["result"], int)  # not a status read


async def test_rejected_reads_answer_503_while_sends_and_other_calls_go_through(cluster, rpc, admin, session):
    endpoints = cluster.endpoints()
    admin.put("/faults", json={"reads": {"reject": 1.0}}).raise_for_status()
    for method in ("getSignatureStatuses", "getBlockHeight", "getTransaction"):
        params = {"getSignatureStatuses": [[]], "getBlockHeight": [], "getTransaction": ["1" * 64]}[method]
        status, body, _ = await post(session, endpoints["rpc"], call(method, params))
        assert (status, body) == (503, UNAVAILABLE_BODY), method
    for method in ("getBundleStatuses", "getInflightBundleStatuses"):
        status, body, _ = await post(session, endpoints["blockEngine"] + f"/api/v1/{method}", call(method, [["00" * 32]]))
        assert (status, body) == (503, UNAVAILABLE_BODY), method

    payer = funded_wallet(cluster)
    tx = transfer_tx(payer, Keypair().pubkey(), SOL, await latest_blockhash(rpc))
    encoded = base64.b64encode(bytes(tx)).decode()
    status, body, _ = await post(session, endpoints["rpc"], call("sendTransaction", [encoded, {"encoding": "base64"}]))
    assert status == 200 and body["result"] == str(tx.signatures[0])

    admin.put("/faults", json=no_faults()).raise_for_status()
    await wait_status(rpc, tx.signatures[0], "confirmed")
    status, body, _ = await post(session, endpoints["rpc"], call("getSignatureStatuses", [[str(tx.signatures[0])]]))
    assert status == 200 and body["result"]["value"][0]["confirmationStatus"] in ("confirmed", "finalized")
    counters = admin.get("/stats").json()["counters"]
    assert counters["reads.reject"] >= 5


async def test_delayed_reads_answer_late_once_per_request(cluster, admin, session):
    rpc = cluster.endpoints()["rpc"]
    admin.put("/faults", json={"reads": {"delay_ms": 400}}).raise_for_status()
    status, body, elapsed = await post(session, rpc, call("getBlockHeight"))
    assert status == 200 and isinstance(body["result"], int) and elapsed >= 0.4
    batch = [call("getBlockHeight", [], 1), call("getSignatureStatuses", [[]], 2), call("getTransaction", ["1" * 64], 3), call("getSlot", [], 4)]
    status, body, elapsed = await post(session, rpc, batch)
    assert status == 200 and [answer["id"] for answer in body] == [1, 2, 3, 4] and all("result" in a for a in body)
    assert 0.4 <= elapsed < 1.0  # one delay for the batch, not one per read
    _, _, elapsed = await post(session, rpc, call("getSlot"))
    assert elapsed < 0.4  # not a status read

    admin.put("/faults", json=no_faults()).raise_for_status()
    _, _, elapsed = await post(session, rpc, call("getBlockHeight"))
    assert elapsed < 0.4


async def test_a_batch_with_a_read_gets_one_verdict(cluster, admin, session):
    rpc = cluster.endpoints()["rpc"]
    admin.put("/faults", json={"reads": {"rate_limit": 0.3, "reject": 0.3}, "seed": 5}).raise_for_status()
    before = admin.get("/stats").json()["counters"]
    batch = [call("getSlot", [], 1), call("getBlockHeight", [], 2), call("getSignatureStatuses", [[]], 3), call("getBlockHeight", [], 4)]
    outcomes = []
    for _ in range(40):
        status, body, _ = await post(session, rpc, batch)
        if status == 200:
            assert [answer["id"] for answer in body] == [1, 2, 3, 4] and all("result" in answer for answer in body)
        outcomes.append(status)
    after = admin.get("/stats").json()["counters"]
    assert set(outcomes) == {200, 429, 503}
    assert after.get("reads.rate_limited", 0) - before.get("reads.rate_limited", 0) == outcomes.count(429)
    assert after.get("reads.reject", 0) - before.get("reads.reject", 0) == outcomes.count(503)


async def test_a_batch_of_reads_is_one_view_of_the_chain_even_when_late(cluster, admin, session):
    rpc = cluster.endpoints()["rpc"]
    status, body, _ = await post(session, rpc, call("getEpochInfo", [{"commitment": "processed"}]))
    offset = body["result"]["absoluteSlot"] - body["result"]["blockHeight"]  # no skipped slots: constant
    admin.put("/faults", json={"reads": {"delay_ms": 60}}).raise_for_status()  # longer than a slot
    for _ in range(10):
        batch = [call("getBlockHeight", [{"commitment": "processed"}], 1), call("getSignatureStatuses", [[]], 2)]
        status, body, _ = await post(session, rpc, batch)
        height, statuses = body[0]["result"], body[1]["result"]
        assert status == 200 and statuses["context"]["slot"] - height == offset


async def test_reads_faults_are_seeded(cluster, admin, session):
    rpc = cluster.endpoints()["rpc"]

    async def run() -> list[int]:
        admin.put("/faults", json={"reads": {"rate_limit": 0.5}, "seed": 21}).raise_for_status()
        return [(await post(session, rpc, call("getBlockHeight")))[0] for _ in range(16)]

    first = await run()
    assert set(first) == {200, 429} and await run() == first


def test_drop_is_refused_for_reads(admin):
    answer = admin.put("/faults", json={"reads": {"drop": 0.1}})
    assert answer.status_code == 400 and "drop" in answer.json()["error"] and "reads" in answer.json()["error"]
    settings = admin.get("/faults").json()
    assert settings["reads"] == {"drop": 0.0, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0}
