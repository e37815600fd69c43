"""Market profiles and landing attribution (issue 22, item 8): `--market calm|busy|hostile|FILE.json`
sets the cluster's knobs together; an RPC node can forward a slot late; the admin view names the
channel and region of the copy that landed. Driven with real clients (JSON-RPC, jito-py-rpc)."""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
from jito_py_rpc import JitoJsonRpcSDK

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.command import add_arguments, config_from_args
from localnet.market import apply_market, load_market
from localnet.regions import REGION_NAMES, RegionSettings
from settings import CommandError

from .conftest import SLOT_MS
from .test_regions import b64, tipped_transfer

DELAY_SLOTS = 12  # the RPC node holds what it accepted this many slots (0.48 s at 40 ms)


def parse(*argv: str) -> ClusterConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--ports", "auto", *argv]))


def test_hostile_starts_from_the_command_and_its_first_line_lists_every_region():
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "localnet", "--market", "hostile", "--json", "--ports", "auto"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = json.loads(process.stdout.readline())
        assert sorted(endpoints["regions"]) == sorted(REGION_NAMES)
        with httpx.Client(base_url=endpoints["admin"], timeout=10) as admin:
            assert admin.get("/landing").json()["market"] == "hostile"
            regions = admin.get("/regions").json()
            assert [name for name, row in regions.items() if not row["up"]] == ["sgp"]
            faults = admin.get("/faults").json()
            assert faults["bundle"]["drop"] == 0.3  # once, at every engine: the global blockEngine and each region
            assert faults["rpc"].items() >= {"drop": 0.3, "forward_delay_slots": 1}.items()
            auction = admin.get("/auction").json()
            assert auction["enabled"] and auction["prompt_failures"] and auction["searchers"]["rate"] == 20
            congestion = admin.get("/congestion").json()
            assert congestion["enabled"] and congestion["load"]["fill"] == 0.8
            assert admin.get("/jito-leaders").json() == {"nonJitoLeaders": [4]}
            assert len(admin.get("/stats").json()["tpu"]) == 5
            assert admin.get("/qos").json()["flood"]["connections"] == 12
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, process.stderr.read()


def test_calm_is_the_cluster_with_no_options_and_explicit_options_override_a_profile(tmp_path):
    assert parse() == parse("--market", "calm") == ClusterConfig.auto_ports()
    hostile = parse("--market", "hostile")
    assert (hostile.validators, hostile.non_jito_leaders, hostile.skip_rate) == (5, (4,), 0.05)
    overridden = parse(
        "--market", "hostile", "--validators", "6", "--non-jito-leaders", "", "--faults", '{"rpc": {"drop": 0}}', "--regions", '{"sgp": {"down": null}}'
    )
    assert (overridden.validators, overridden.non_jito_leaders) == (6, ())
    assert (overridden.faults.rpc.drop, overridden.faults.rpc.forward_delay_slots) == (0.0, 1)  # JSON options merge
    assert overridden.regions["sgp"] == RegionSettings(latency_ms=80) and len(overridden.regions) == 8
    with pytest.raises(CommandError, match="non_jito_leaders"):
        parse("--market", "hostile", "--validators", "2")
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(load_market("busy") | {"validators": 3, "non_jito_leaders": [2]}))
    assert parse("--market", str(mine)).validators == 3


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"validators": 2, "tip_auction": {}}, "unknown market key 'tip_auction'"),
        ({"congestion": 5}, "market key 'congestion': expected an object of congestion settings"),
        ({"regions": {"xyz": {}}}, "market key 'regions': unknown region 'xyz'"),
        ({"faults": {"bundle": {"forward_delay_slots": 1}}}, "bundle: unknown fault setting"),
    ],
)
def test_a_profile_key_or_value_the_cluster_does_not_take_is_named(tmp_path, profile, message):
    path = tmp_path / "market.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(CommandError, match=message):
        parse("--market", str(path))


# --- the slow RPC node and landing attribution, against one cluster with two regions ------------------


@pytest.fixture(scope="module")
def market():
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, regions={"ams": RegionSettings(rate_limit=None), "fra": RegionSettings(rate_limit=None)})
    apply_market(config, {"faults": {"seed": 22}})
    with ClusterThread(config) as running:
        endpoints = running.endpoints()
        with httpx.Client(base_url=endpoints["admin"], timeout=10) as admin:
            yield running, endpoints, admin
            admin.put("/faults", json={"rpc": {"forward_delay_slots": 0}})


def rpc(endpoints: dict, method: str, *params):
    answer = httpx.post(endpoints["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=10).json()
    return answer["result"]


def send_rpc(endpoints: dict, tx) -> str:
    return rpc(endpoints, "sendTransaction", b64(tx), {"encoding": "base64"})


def send_bundle(endpoints: dict, region: str, tx) -> str:
    answer = JitoJsonRpcSDK(endpoints["regions"][region] + "/api/v1").send_bundle([b64(tx)])
    return answer["data"]["result"]


def landed(admin: httpx.Client, signature: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [row] = admin.get("/transactions", params={"signature": signature}).json()["transactions"]
        if row["landedSlot"] is not None:
            return row
        time.sleep(0.05)
    raise TimeoutError(f"{signature} did not land")


def test_an_rpc_node_that_forwards_late_lands_its_transactions_that_many_slots_later(market):
    cluster, endpoints, admin = market
    assert admin.put("/faults", json={"rpc": {"forward_delay_slots": DELAY_SLOTS}}).json()["rpc"]["forward_delay_slots"] == DELAY_SLOTS
    try:
        tx, _ = tipped_transfer(cluster)
        before = rpc(endpoints, "getSlot", {"commitment": "processed"})
        signature = send_rpc(endpoints, tx)
        assert landed(admin, signature)["landedSlot"] >= before + DELAY_SLOTS
    finally:
        admin.put("/faults", json={"rpc": {"forward_delay_slots": 0}})


def test_the_same_transaction_sent_over_rpc_and_a_region_is_attributed_to_the_copy_that_landed(market):
    cluster, endpoints, admin = market
    start = admin.get("/landing").json()
    # RPC first, then the same signed transaction as a bundle through ams: the RPC copy is executed first.
    first, _ = tipped_transfer(cluster)
    signature = send_rpc(endpoints, first)
    send_bundle(endpoints, "ams", first)
    row = landed(admin, signature)
    assert row["landedVia"] == {"channel": "rpc", "region": None} and set(row["channels"]) == {"rpc", "bundle"}
    # The RPC node now holds what it accepts: the bundle's copy through ams lands and is named.
    admin.put("/faults", json={"rpc": {"forward_delay_slots": DELAY_SLOTS}})
    try:
        second, _ = tipped_transfer(cluster)
        signature = send_rpc(endpoints, second)
        send_bundle(endpoints, "ams", second)
        assert landed(admin, signature)["landedVia"] == {"channel": "bundle", "region": "ams"}
    finally:
        admin.put("/faults", json={"rpc": {"forward_delay_slots": 0}})
    # One bundle sent to two regions lands once, for the region whose copy was executed (ams: it arrived first).
    third, _ = tipped_transfer(cluster)
    bundle_id = send_bundle(endpoints, "ams", third)
    assert send_bundle(endpoints, "fra", third) == bundle_id
    assert landed(admin, str(third.signatures[0]))["landedVia"] == {"channel": "bundle", "region": "ams"}
    time.sleep(5 * SLOT_MS / 1000)  # fra's copy has been tried (and failed) by now
    status = JitoJsonRpcSDK(endpoints["regions"]["fra"] + "/api/v1").get_bundle_statuses([bundle_id])["data"]["result"]["value"][0]
    assert status is not None and status["bundle_id"] == bundle_id  # still reads landed
    end = admin.get("/landing").json()
    assert end["regions"]["ams"]["landed"] - start["regions"]["ams"]["landed"] == 2
    assert end["regions"]["fra"]["landed"] == start["regions"]["fra"]["landed"]
    assert end["regions"]["fra"]["accepted"] - start["regions"]["fra"]["accepted"] == 1
    assert end["regions"]["ams"]["lost_at_auction"] == 0
    assert end["channels"]["rpc"]["transactions"] - start["channels"].get("rpc", {"transactions": 0})["transactions"] >= 1
    assert admin.get("/regions").json()["ams"]["counters"]["landed"] == end["regions"]["ams"]["landed"]


async def test_dev_bench_and_chaos_pass_market_to_the_localnet_child(tmp_path):
    from bench.command import add_arguments as bench_arguments
    from chaos.command import add_arguments as chaos_arguments
    from chaos.command import settings_from
    from devtools.dev import add_arguments as dev_arguments
    from devtools.services import LocalnetServer

    for add in (dev_arguments, bench_arguments, chaos_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        assert parser.parse_args([]).market is None and parser.parse_args(["--market", "busy"]).market == "busy"
    chaos = argparse.ArgumentParser()
    chaos_arguments(chaos)
    assert settings_from(chaos.parse_args(["--market", "hostile"])).market == "hostile"
    assert "--market" not in LocalnetServer(tmp_path).command() and "--validators" in LocalnetServer(tmp_path).command()
    server = LocalnetServer(tmp_path, slot_ms=50, market="busy")
    await server.start()
    try:
        assert sorted(server.endpoints["regions"]) == sorted(REGION_NAMES)
        async with httpx.AsyncClient(base_url=server.endpoints["admin"], timeout=10) as admin:
            assert (await admin.get("/landing")).json()["market"] == "busy"
            assert len((await admin.get("/stats")).json()["tpu"]) == 10  # the profile's leaders, not LocalnetServer's 2
    finally:
        await server.stop()
