"""`hft-executor localnet` as a user runs it: one JSON line when ready, real services, clean stop on SIGTERM."""
from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time

import aiohttp
import httpx
from solders.hash import Hash
from solders.keypair import Keypair

from localnet import throughput
from devtools.services import LocalnetServer

from .conftest import SOL, transfer_tx


def test_localnet_command_serves_and_stops_cleanly():
    wallet = Keypair().pubkey()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--json", "--slot-ms", "50", "--fund", f"{wallet}:7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = json.loads(process.stdout.readline())
        assert set(endpoints) == {"rpc", "ws", "blockEngine", "tpuQuic", "admin", "jitoRequestsPerSecond"}
        assert endpoints.pop("jitoRequestsPerSecond") is None  # the calm engine sets no limit (dev paces a worker at 1000/s)
        assert all("127.0.0.1:" in url for url in endpoints.values())
        balance = httpx.post(endpoints["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getBalance", "params": [str(wallet)]}).json()
        assert balance["result"]["value"] == 7_000_000_000
        tips = httpx.post(endpoints["blockEngine"] + "/api/v1/bundles", json={"jsonrpc": "2.0", "id": 1, "method": "getTipAccounts", "params": []})
        assert len(tips.json()["result"]) == 8
        assert httpx.get(endpoints["admin"] + "/stats").json()["tpu"][0]["open"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read()
    assert process.stdout.read() == ""  # exactly one line


def test_bad_fault_settings_are_refused_at_start():
    process = subprocess.run(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--faults", '{"rpc": {"drop": 2}}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode != 0 and "drop=2" in process.stderr


def test_a_drop_fault_on_reads_is_refused_at_start():
    process = subprocess.run(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--faults", '{"reads": {"drop": 0.1}}'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert process.returncode != 0 and "reads: drop=0.1 does not apply to a read" in process.stderr


async def test_status_cache_slots_reaches_the_command_through_localnet_server(tmp_path):
    """The cache size set on LocalnetServer is the one the child's getSignatureStatuses honours."""
    cache_slots, finalized_depth = 2, 32
    server = LocalnetServer(tmp_path, slot_ms=20, status_cache_slots=cache_slots)
    await server.start()
    try:
        rpc, admin = server.endpoints["rpc"], server.endpoints["admin"]
        async with aiohttp.ClientSession() as http:

            async def call(method: str, *params) -> dict:
                async with http.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) as response:
                    return (await response.json())["result"]

            payer = Keypair()
            async with http.post(admin + "/fund", json={"pubkey": str(payer.pubkey()), "lamports": 10 * SOL}) as response:
                assert response.status == 200
            blockhash = Hash.from_string((await call("getLatestBlockhash"))["value"]["blockhash"])
            tx = transfer_tx(payer, Keypair().pubkey(), SOL, blockhash)
            signature = await call("sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})

            observations = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                answer = await call("getSignatureStatuses", [signature])
                observations.append((answer["context"]["slot"], answer["value"][0]))
                if len(observations) > 1 and observations[-1][1] is None and observations[-2][1] is not None:
                    break
                await asyncio.sleep(0.005)
            landed = [status for _, status in observations if status is not None]
            assert landed, "the transaction never landed"
            evicted_at = landed[0]["slot"] + finalized_depth + cache_slots
            assert all((status is None) == (slot >= evicted_at) for slot, status in observations if slot >= landed[0]["slot"])
            found = (await call("getSignatureStatuses", [signature], {"searchTransactionHistory": True}))["value"][0]
            assert found["slot"] == landed[0]["slot"] and found["confirmationStatus"] == "finalized"
    finally:
        await server.stop()


def test_throughput_probe_confirms_every_transfer(capsys):
    assert throughput.main(["--transactions", "400", "--payers", "20", "--slot-ms", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["transactions"] == 400 and result["confirmed_per_s"] > 0


def test_offline_and_non_jito_leaders_at_start_and_refused_when_out_of_range():
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--json", "--slot-ms", "50", "--validators", "2", "--offline-leaders", "1", "--non-jito-leaders", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = json.loads(process.stdout.readline())
        assert httpx.get(endpoints["admin"] + "/skips").json() == {"offlineLeaders": [1], "skipRate": 0.0, "seed": 0}
        assert httpx.get(endpoints["admin"] + "/jito-leaders").json() == {"nonJitoLeaders": [0]}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read()
    refused = subprocess.run(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--validators", "2", "--offline-leaders", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "--offline-leaders 2" in refused.stderr


def test_the_auction_and_searchers_at_start_and_refused_when_malformed():
    process = subprocess.Popen(
        [
            sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--json", "--slot-ms", "50",
            "--auction", '{"prompt_failures": true, "tick_ms": 100}', "--searchers", '{"rate": 5, "tip_median": 30000, "seed": 3}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = json.loads(process.stdout.readline())
        auction = httpx.get(endpoints["admin"] + "/auction").json()
        assert auction["enabled"] is True and auction["prompt_failures"] is True and auction["tick_ms"] == 100
        assert auction["searchers"]["rate"] == 5 and auction["searchers"]["tip_median"] == 30000 and auction["searchers_running"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.stderr.read()
    refused = subprocess.run(
        [sys.executable, "-m", "worker.cli", "localnet", "--ports", "auto", "--searchers", '{"tip_median": 10}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "--auction/--searchers" in refused.stderr
