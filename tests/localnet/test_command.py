"""`hft-executor localnet` as a user runs it: one JSON line when ready, real services, clean stop on SIGTERM."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
from solders.keypair import Keypair

from localnet import throughput


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
        assert set(endpoints) == {"rpc", "ws", "blockEngine", "tpuQuic", "admin"}
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


def test_throughput_probe_confirms_every_transfer(capsys):
    assert throughput.main(["--transactions", "400", "--payers", "20", "--slot-ms", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["transactions"] == 400 and result["confirmed_per_s"] > 0
