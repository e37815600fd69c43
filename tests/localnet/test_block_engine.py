"""Jito block engine fidelity: bundle ids, atomicity, tips, statuses, rate limits, the official Python SDK."""
from __future__ import annotations

import asyncio
import base64
import hashlib

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.blockengine import TIP_ACCOUNTS

from .conftest import SOL, funded_wallet, latest_blockhash, sign, transfer_tx, wait_slots

TIP = Pubkey.from_string(TIP_ACCOUNTS[0])


def tip_ix(payer: Keypair, lamports: int):
    return transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=lamports))


async def jito(http, cluster, method: str, params: list, path: str = "/api/v1/bundles"):
    response = await http.post(cluster.endpoints()["blockEngine"] + path, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return response


def b64(tx) -> str:
    return base64.b64encode(bytes(tx)).decode()


async def wait_bundle(http, cluster, bundle_id: str, want: set[str], timeout: float = 5.0) -> dict:
    for _ in range(int(timeout / 0.05)):
        status = (await jito(http, cluster, "getInflightBundleStatuses", [[bundle_id]], "/api/v1/getInflightBundleStatuses")).json()["result"]["value"][0]
        if status["status"] in want:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"bundle {bundle_id} stayed {status['status']}")


async def test_bundle_lands_atomically_with_jito_shapes(cluster, rpc, http):
    payer, to = funded_wallet(cluster), Keypair()
    blockhash = await latest_blockhash(rpc)
    first = transfer_tx(payer, to.pubkey(), SOL, blockhash)
    second = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 5000)], blockhash)
    answer = (await jito(http, cluster, "sendBundle", [[b64(first), b64(second)], {"encoding": "base64"}])).json()
    expected_id = hashlib.sha256(f"{first.signatures[0]},{second.signatures[0]}".encode()).hexdigest()
    assert answer["result"] == expected_id
    landed = await wait_bundle(http, cluster, expected_id, {"Landed", "Failed"})
    assert landed["status"] == "Landed" and landed["landed_slot"] > 0
    await wait_slots(rpc, 2)
    statuses = (await jito(http, cluster, "getBundleStatuses", [[expected_id]], "/api/v1/getBundleStatuses")).json()["result"]
    value = statuses["value"][0]
    assert value["bundle_id"] == expected_id
    assert value["transactions"] == [str(first.signatures[0]), str(second.signatures[0])]
    assert value["slot"] == landed["landed_slot"] and value["err"] == {"Ok": None}
    assert value["confirmation_status"] in ("confirmed", "finalized")
    assert (await rpc.get_balance(to.pubkey())).value == 2 * SOL


async def test_a_failing_transaction_reverts_the_whole_bundle(cluster, rpc, http):
    payer, to = funded_wallet(cluster, 3), Keypair()
    blockhash = await latest_blockhash(rpc)
    pays = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 5000)], blockhash)
    overdraws = transfer_tx(payer, to.pubkey(), 50 * SOL, blockhash)
    before = (await rpc.get_balance(payer.pubkey())).value
    bundle_id = (await jito(http, cluster, "sendBundle", [[b64(pays), b64(overdraws)], {"encoding": "base64"}])).json()["result"]
    assert (await wait_bundle(http, cluster, bundle_id, {"Landed", "Failed"}))["status"] == "Failed"
    statuses = (await jito(http, cluster, "getBundleStatuses", [[bundle_id]])).json()["result"]["value"]
    assert statuses == [None]
    await wait_slots(rpc, 2)
    assert (await rpc.get_balance(payer.pubkey())).value == before  # not even the fee of the first
    assert (await rpc.get_balance(to.pubkey())).value == 0
    assert (await rpc.get_signature_statuses([pays.signatures[0]])).value == [None]


async def test_bundles_must_pay_a_tip_account(cluster, rpc, http):
    payer, to = funded_wallet(cluster), Keypair()
    blockhash = await latest_blockhash(rpc)
    untipped = transfer_tx(payer, to.pubkey(), SOL, blockhash)
    error = (await jito(http, cluster, "sendBundle", [[b64(untipped)], {"encoding": "base64"}])).json()["error"]
    assert "tip account" in error["message"]
    stingy = sign(payer, [tip_ix(payer, 999)], blockhash)
    error = (await jito(http, cluster, "sendBundle", [[b64(stingy)], {"encoding": "base64"}])).json()["error"]
    assert "minimum of 1000" in error["message"]
    six = [b64(sign(payer, [tip_ix(payer, 1000 + i)], blockhash)) for i in range(6)]
    assert "between 1 and 5" in (await jito(http, cluster, "sendBundle", [six, {"encoding": "base64"}])).json()["error"]["message"]
    assert (await jito(http, cluster, "getTipAccounts", [])).json()["result"] == TIP_ACCOUNTS


async def test_send_transaction_bundle_only_returns_the_bundle_id_header(cluster, rpc, http):
    payer, to = funded_wallet(cluster), Keypair()
    tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 2000)], await latest_blockhash(rpc))
    url = cluster.endpoints()["blockEngine"] + "/api/v1/transactions?bundleOnly=true"
    response = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [b64(tx), {"encoding": "base64"}]}, headers={"x-jito-auth": "test-uuid"})
    assert response.json()["result"] == str(tx.signatures[0])
    bundle_id = response.headers["x-bundle-id"]
    assert bundle_id == hashlib.sha256(str(tx.signatures[0]).encode()).hexdigest()
    assert (await wait_bundle(http, cluster, bundle_id, {"Landed", "Failed"}))["status"] == "Landed"


async def test_rate_limit_answers_429_with_jito_body(cluster, http, admin):
    admin.put("/faults", json={"bundle": {"rate_limit": 1.0}})
    response = await jito(http, cluster, "getTipAccounts", [])
    assert response.status_code == 429
    assert response.json()["error"]["code"] == -32097 and "Rate limit" in response.json()["error"]["message"]


async def test_a_dropped_bundle_is_silent_until_its_blockhash_expires(cluster, rpc, http, admin):
    payer, to = funded_wallet(cluster), Keypair()
    admin.put("/faults", json={"bundle": {"drop": 1.0}})
    tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 2000)], await latest_blockhash(rpc))
    bundle_id = (await jito(http, cluster, "sendBundle", [[b64(tx)], {"encoding": "base64"}])).json()["result"]
    await wait_slots(rpc, 4)
    status = (await jito(http, cluster, "getInflightBundleStatuses", [[bundle_id]])).json()["result"]["value"][0]
    assert status == {"bundle_id": bundle_id, "status": "Pending", "landed_slot": None}
    assert (await rpc.get_balance(to.pubkey())).value == 0
    wire = admin.get("/transactions", params={"signature": str(tx.signatures[0])}).json()["transactions"][0]
    assert wire["bundleIds"] == [bundle_id] and wire["droppedByFault"] == 1 and wire["landedSlot"] is None


def test_the_official_jito_python_sdk_works_unchanged(cluster):
    """jito-py-rpc (synchronous, requests-based) against the local block engine."""
    import httpx
    from jito_py_rpc import JitoJsonRpcSDK
    from solders.hash import Hash

    sdk = JitoJsonRpcSDK(cluster.endpoints()["blockEngine"] + "/api/v1")
    assert sdk.get_tip_accounts()["data"]["result"] == TIP_ACCOUNTS
    payer, to = funded_wallet(cluster), Keypair()
    latest = httpx.post(cluster.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash"}).json()
    blockhash = Hash.from_string(latest["result"]["value"]["blockhash"])
    tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 1000)], blockhash)
    sent = sdk.send_bundle([b64(tx)])
    assert sent["success"], sent
    bundle_id = sent["data"]["result"]
    assert bundle_id == hashlib.sha256(str(tx.signatures[0]).encode()).hexdigest()
    import time

    for _ in range(100):
        statuses = sdk.get_bundle_statuses([bundle_id])["data"]["result"]["value"]
        if statuses[0] is not None:
            break
        time.sleep(0.05)
    assert statuses[0]["bundle_id"] == bundle_id


async def test_a_bundle_sent_twice_lands_once_and_keeps_reading_landed(cluster, rpc, http):
    """Two copies of one bundle (a sender resending it, or two regions forwarding it) share its id: the
    second copy finds the signatures already processed, and must not turn the first copy's Landed into Failed."""
    payer, to = funded_wallet(cluster), Keypair()
    tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)), tip_ix(payer, 2000)], await latest_blockhash(rpc))
    ids = [(await jito(http, cluster, "sendBundle", [[b64(tx)], {"encoding": "base64"}])).json()["result"] for _ in range(2)]
    assert ids[0] == ids[1]
    landed = await wait_bundle(http, cluster, ids[0], {"Landed", "Failed"})
    assert landed["status"] == "Landed"
    await wait_slots(rpc, 2)
    assert (await wait_bundle(http, cluster, ids[0], {"Landed", "Failed"}))["status"] == "Landed"
    value = (await jito(http, cluster, "getBundleStatuses", [[ids[0]]], "/api/v1/getBundleStatuses")).json()["result"]["value"][0]
    assert value is not None and value["slot"] == landed["landed_slot"]
    assert (await rpc.get_balance(to.pubkey())).value == SOL
