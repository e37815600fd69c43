"""Block-engine regions (issue 22, item 1): several Jito block engines in front of one chain, each with
its own drops, rate limit, lagging view and up/down state, driven with the official jito-py-rpc SDK."""
from __future__ import annotations

import hashlib
import time

import httpx
import pytest
from jito_py_rpc import JitoJsonRpcSDK
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.regions import RegionSettings

from .conftest import SLOT_MS, SOL, funded_wallet, sign

TIP = Pubkey.from_string(TIP_ACCOUNTS[0])
LAG_SLOTS = 60  # 2.4 s at 40 ms slots: a brand-new blockhash stays unseen however slow the machine


@pytest.fixture(scope="module")
def regional():
    regions = {
        "ams": RegionSettings(drop=1.0),
        "fra": RegionSettings(drop=0.0),
        "nyc": RegionSettings(lag_slots=LAG_SLOTS),
        "tyo": RegionSettings(rate_limit=None),
    }
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, regions=regions)
    config.faults.seed = 22
    with ClusterThread(config) as running:
        yield running


def admin(cluster) -> httpx.Client:
    return httpx.Client(base_url=cluster.endpoints()["admin"], timeout=10)


def newest_blockhash(cluster) -> Hash:
    answer = httpx.post(
        cluster.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash", "params": [{"commitment": "processed"}]}
    ).json()
    return Hash.from_string(answer["result"]["value"]["blockhash"])


def tipped_transfer(cluster, blockhash: Hash | None = None):
    payer, to = funded_wallet(cluster), Keypair()
    ixs = [
        transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to.pubkey(), lamports=SOL)),
        transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=2000)),
    ]
    return sign(payer, ixs, blockhash or newest_blockhash(cluster)), to.pubkey()


def b64(tx) -> str:
    import base64

    return base64.b64encode(bytes(tx)).decode()


def balance(cluster, pubkey: Pubkey) -> int:
    answer = httpx.post(
        cluster.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getBalance", "params": [str(pubkey), {"commitment": "processed"}]}
    ).json()
    return answer["result"]["value"]


def sdk(cluster, region: str) -> JitoJsonRpcSDK:
    return JitoJsonRpcSDK(cluster.endpoints()["regions"][region] + "/api/v1")


def wait_landed(client: JitoJsonRpcSDK, bundle_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.get_bundle_statuses([bundle_id])["data"]["result"]["value"][0]
        if value is not None:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"bundle {bundle_id} did not land")


def region_counters(cluster, name: str) -> dict:
    with admin(cluster) as client:
        return client.get("/regions").json()[name]["counters"]


def test_endpoints_list_every_region_and_keep_the_single_block_engine(regional):
    endpoints = regional.endpoints()
    assert set(endpoints["regions"]) == {"ams", "fra", "nyc", "tyo"}
    assert endpoints["blockEngine"] not in endpoints["regions"].values()
    with admin(regional) as client:
        view = client.get("/regions").json()
    assert {name: row["url"] for name, row in view.items()} == endpoints["regions"]
    assert view["ams"]["mainnet"] == "https://amsterdam.mainnet.block-engine.jito.wtf"
    assert sdk(regional, "fra").get_tip_accounts()["data"]["result"] == TIP_ACCOUNTS


def test_a_region_that_drops_everything_lands_nothing_while_another_lands(regional):
    dropped_tx, dropped_to = tipped_transfer(regional)
    landed_tx, landed_to = tipped_transfer(regional)
    ams, fra = sdk(regional, "ams"), sdk(regional, "fra")
    dropped = ams.send_bundle([b64(dropped_tx)])
    landed = fra.send_bundle([b64(landed_tx)])
    # Both regions accept with a bundle id; only fra forwards it.
    assert dropped["data"]["result"] == hashlib.sha256(str(dropped_tx.signatures[0]).encode()).hexdigest()
    assert landed["data"]["result"] == hashlib.sha256(str(landed_tx.signatures[0]).encode()).hexdigest()
    assert wait_landed(fra, landed["data"]["result"])["slot"] > 0
    time.sleep(10 * SLOT_MS / 1000)
    assert ams.get_bundle_statuses([dropped["data"]["result"]])["data"]["result"]["value"] == [None]
    assert balance(regional, dropped_to) == 0 and balance(regional, landed_to) == SOL
    ams_counts, fra_counts = region_counters(regional, "ams"), region_counters(regional, "fra")
    assert ams_counts["dropped"] >= 1 and ams_counts["accepted"] == 0 and ams_counts["landed"] == 0
    assert fra_counts["accepted"] >= 1 and fra_counts["landed"] >= 1 and fra_counts["dropped"] == 0


def test_past_the_regions_rate_limit_jito_answers_429(regional):
    """Jito's default: 1 request per second per IP per region; a second txn request in the same second is refused."""
    url = regional.endpoints()["regions"]["fra"] + "/api/v1/bundles"
    tx, _ = tipped_transfer(regional)
    body = {"jsonrpc": "2.0", "id": 1, "method": "sendBundle", "params": [[b64(tx)], {"encoding": "base64"}]}
    answers = [httpx.post(url, json=body) for _ in range(12)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert limited[0].json() == {"jsonrpc": "2.0", "error": {"code": -32097, "message": "Rate limit exceeded. Limit: 1 per second for txn requests"}, "id": None}
    assert region_counters(regional, "fra")["rate_limited"] >= 1
    # The SDK sees the same 429; a region without a limit (tyo) is not affected by fra's.
    # A burst, not one call: a single call may fall in a fresh one-second window on a slow machine.
    client = sdk(regional, "fra")
    assert any("429" in str(client.send_bundle([b64(tx)]).get("error", "")) for _ in range(12))
    assert all(httpx.post(regional.endpoints()["regions"]["tyo"] + "/api/v1/bundles", json=body).status_code == 200 for _ in range(3))


def test_a_lagging_region_refuses_a_brand_new_blockhash_that_an_up_to_date_region_accepts(regional):
    tx, to = tipped_transfer(regional, newest_blockhash(regional))
    refused = sdk(regional, "nyc").send_bundle([b64(tx)])["data"]
    assert refused["error"] == {"code": -32602, "message": "bundle simulation failed: Blockhash not found"}
    accepted = sdk(regional, "tyo").send_bundle([b64(tx)])["data"]
    assert accepted["result"] == hashlib.sha256(str(tx.signatures[0]).encode()).hexdigest()
    wait_landed(sdk(regional, "tyo"), accepted["result"])
    assert region_counters(regional, "nyc")["refused_lagging"] >= 1


def test_a_region_taken_down_refuses_connections_and_comes_back_on_its_port(regional):
    url = regional.endpoints()["regions"]["tyo"]
    with admin(regional) as client:
        assert client.put("/regions/tyo", json={"down": "refuse"}).json()["up"] is False
        down = sdk(regional, "tyo").get_tip_accounts()
        assert down["success"] is False and "Error Connecting" in down["error"]
        with pytest.raises(httpx.ConnectError):
            httpx.post(url + "/api/v1/bundles", json={"jsonrpc": "2.0", "id": 1, "method": "getTipAccounts"})
        assert client.put("/regions/tyo", json={"down": None}).json()["up"] is True
    assert regional.endpoints()["regions"]["tyo"] == url
    tx, to = tipped_transfer(regional)
    sent = sdk(regional, "tyo").send_bundle([b64(tx)])
    wait_landed(sdk(regional, "tyo"), sent["data"]["result"])


def test_a_blackholed_region_accepts_and_never_answers_until_brought_back(regional):
    url = regional.endpoints()["regions"]["tyo"] + "/api/v1/bundles"
    call = {"jsonrpc": "2.0", "id": 1, "method": "getTipAccounts"}
    with admin(regional) as client:
        client.put("/regions/tyo", json={"down": "blackhole"})
        try:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=call, timeout=httpx.Timeout(5.0, read=0.5))
        finally:
            client.put("/regions/tyo", json={"down": None})
    assert httpx.post(url, json=call).json()["result"] == TIP_ACCOUNTS


def test_region_settings_change_at_run_time(regional):
    with admin(regional) as client:
        changed = client.put("/regions/fra", json={"latency_ms": 5, "drop": 0.25, "rate_limit": 3, "lag_slots": 1}).json()
        assert changed["settings"] == {"latency_ms": 5, "drop": 0.25, "rate_limit": 3, "lag_slots": 1, "down": None}
        assert client.put("/regions/fra", json={"drop": 2}).status_code == 400
        assert client.put("/regions/xyz", json={}).status_code == 400
        client.put("/regions/fra", json={"latency_ms": 0, "drop": 0.0, "rate_limit": 1, "lag_slots": 0})
        assert "regions" in client.get("/stats").json()


def test_the_localnet_command_lists_every_region_on_its_json_line():
    import json
    import signal
    import subprocess
    import sys

    spec = '{"ams": {"drop": 0.3}, "fra": {"down": "refuse"}, "nyc": {}}'
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--json", "--slot-ms", "50", "--regions", spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = json.loads(process.stdout.readline())
        assert set(endpoints["regions"]) == {"ams", "fra", "nyc"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "getTipAccounts"}
        assert httpx.post(endpoints["regions"]["ams"] + "/api/v1/bundles", json=call).json()["result"] == TIP_ACCOUNTS
        with pytest.raises(httpx.ConnectError):
            httpx.post(endpoints["regions"]["fra"] + "/api/v1/bundles", json=call)
        view = httpx.get(endpoints["admin"] + "/regions").json()
        assert view["ams"]["settings"]["drop"] == 0.3 and view["fra"]["up"] is False
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read()
    refused = subprocess.run(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--regions", "ams,xyz"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode != 0 and "unknown region 'xyz'" in refused.stderr
