"""`hft-executor chaos`: its parts (the cuttable proxy, the fault schedule) and a short campaign.

The short campaign is the real thing at a small scale: every server and worker its own
process, 40 plans, 3 worker SIGKILLs, one nats-server kill -9 whose outage outlasts every
plan's maxLatency, the local cluster's faults, and a halt while one worker is cut off from
NATS; then the invariants, checked from outside.
When it fails, the assertion names the invariants and the report file with each failing
plan's story.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chaos.proxy import CuttableProxy
from chaos.schedule import default_worker_kills, draw_schedule

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {
    "plans", "results", "lost", "duplicate_publishes", "contradicting_publishes", "temporal_mismatch",
    "double_landed", "multiple_signatures", "disagree_with_chain", "sent_after_halt", "leases_left",
    "running_left", "pending_left", "hostile", "takeover_ms", "success", "kills", "faults", "error_codes", "seed", "ok",
}  # fmt: skip


# --- the proxy ----------------------------------------------------------------------------


async def echo_server():
    async def echo(reader, writer):
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def roundtrip(port: int, payload: bytes = b"ping") -> tuple:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.read(1024), 2)


async def test_a_cut_closes_live_connections_refuses_new_ones_and_a_restore_lets_them_through():
    server, upstream = await echo_server()
    proxy = CuttableProxy(lambda: [("127.0.0.1", upstream)], name="test")
    await proxy.start()
    try:
        reader, writer, answer = await roundtrip(proxy.port)
        assert answer == b"ping"
        assert proxy.cut() == 1
        assert await asyncio.wait_for(reader.read(1024), 2) == b"", "the live connection was closed"
        writer.close()
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(late_reader.read(1024), 2) == b"", "a new connection ends at once while cut"
        late_writer.close()
        proxy.restore()
        _, again, answer = await roundtrip(proxy.port, b"pong")
        assert answer == b"pong"
        again.close()
        assert proxy.port == proxy.port and proxy.refused == 1
    finally:
        await proxy.stop()
        server.close()


async def test_the_proxy_skips_a_dead_upstream_and_closes_when_none_answers():
    server, upstream = await echo_server()
    dead = CuttableProxy(list, name="placeholder")  # a port nobody listens on once stopped
    await dead.start()
    dead_port = dead.port
    await dead.stop()
    proxy = CuttableProxy(lambda: [("127.0.0.1", dead_port), ("127.0.0.1", upstream)], name="test")
    await proxy.start()
    try:
        for _ in range(2):  # whichever upstream the rotation starts with
            _, writer, answer = await roundtrip(proxy.port)
            assert answer == b"ping"
            writer.close()
        server.close()
        await server.wait_closed()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(1024), 3) == b"", "no upstream: the client sees its connection end"
        writer.close()
    finally:
        await proxy.stop()


# --- the schedule ---------------------------------------------------------------------------


def schedule(seed: int, **overrides):
    settings = {"publish_s": 30.0, "workers": 2, "nats_nodes": 1, "max_latency_s": 8.0, "worker_kills": default_worker_kills(300),
                "nats_kills": 2, "temporal_kills": 1, "halts": 1, "cluster_faults": True}  # fmt: skip
    return draw_schedule(random.Random(seed), **{**settings, **overrides})


def test_a_300_plan_schedule_has_what_the_issue_asks_for():
    faults, window = schedule(7)
    kinds = [f.kind for f in faults]
    assert kinds.count("worker_kill") >= 10
    assert kinds.count("nats_kill") == 2 and kinds.count("temporal_kill") == 1 and kinds.count("halt") == 1
    assert max(f.params["down_s"] for f in faults if f.kind == "nats_kill") > 8.0, "one NATS outage outlasts every maxLatency"
    assert all(0.5 <= f.params["restart_after_s"] <= 3.0 for f in faults if f.kind == "worker_kill")
    assert all(f.at_s <= window for f in faults) and window >= 30.0
    on = [f for f in faults if f.kind == "cluster_faults" and f.params["on"]]
    assert on and all(f.params["drop"] == 0.2 and f.params["rate_limit"] == 0.1 for f in on)


def test_the_schedule_is_the_seed_s_and_the_seed_s_alone():
    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_server_kills_and_halts_never_overlap():
    for seed in range(20):
        faults, _ = schedule(seed)
        spans = []
        for fault in faults:
            if fault.kind in ("nats_kill", "temporal_kill"):
                spans.append((fault.at_s, fault.at_s + fault.params["down_s"]))
            elif fault.kind == "halt":
                spans.append((fault.at_s, fault.at_s + 0.5 + fault.params["restore_after_s"] + 1.5 + fault.params["resume_after_s"]))
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), (seed, spans)


def test_no_cluster_faults_means_none():
    faults, _ = schedule(3, cluster_faults=False)
    assert not [f for f in faults if f.kind == "cluster_faults"]


# --- the short campaign ---------------------------------------------------------------------

SHORT_CAMPAIGN = [
    "--plans", "40", "--rate", "3", "--workers", "2", "--seed", "4242",
    "--worker-kills", "3", "--nats-kills", "1", "--temporal-kills", "0", "--halts", "1",
    "--results-timeout", "45", "--hostile", "60", "--json",
]  # fmt: skip


@pytest.mark.timeout(300)
def test_a_short_campaign_keeps_every_promise():
    data_dir = Path(tempfile.mkdtemp(prefix="hft-chaos-"))
    run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "chaos", *SHORT_CAMPAIGN, "--data-dir", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    lines = run.stdout.strip().splitlines()
    assert lines, f"no verdict (exit {run.returncode}):\n{run.stderr[-4000:]}"
    summary = json.loads(lines[-1])
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["takeover_ms"]) == {"p50", "p99", "max"}
    assert summary["plans"] == 40 and summary["seed"] == 4242
    assert summary["kills"] == {"worker": 3, "nats": 1, "temporal": 0}
    assert summary["hostile"]["published"] == 60 and summary["hostile"]["refused_at_publish"] < 60
    assert any(f["kind"] == "nats_kill" and f["down_s"] > 8.0 for f in summary["faults"])
    kinds = [f["kind"] for f in summary["faults"]]
    assert kinds.index("cut") < kinds.index("halt_issued") < kinds.index("cut_restored") < kinds.index("resume")
    assert run.returncode == (0 if summary["ok"] else 1)
    report = next((line for line in run.stderr.splitlines() if "event=report" in line), "no report line")
    invariants = ("lost", "contradicting_publishes", "temporal_mismatch", "double_landed", "multiple_signatures",
                  "disagree_with_chain", "sent_after_halt", "leases_left", "running_left", "pending_left")  # fmt: skip
    broken = {key: summary[key] for key in invariants if summary[key]} | ({"hostile": summary["hostile"]} if summary["hostile"]["not_answered_once"] else {}) | ({"results": summary["results"]} if summary["results"] != 40 else {})
    assert summary["ok"], f"invariants broken: {broken}; {report}"  # the data stays for the story
    shutil.rmtree(data_dir, ignore_errors=True)


def test_cluster_faults_sit_on_top_of_the_markets_own_and_give_them_back_when_off():
    """`chaos --market hostile`: the campaign's cluster faults must not erase the market's (30% bundle
    and RPC drops), neither while they are on nor when they are turned off."""
    from chaos.operator import cluster_faults

    market = {
        "rpc": {"drop": 0.3, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0, "forward_delay_slots": 1},
        "bundle": {"drop": 0.3, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0},
        "tpu": {"drop": 0.0, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0},
        "reads": {"drop": 0.0, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0},
        "seed": 22,
    }
    on = cluster_faults(drop=0.2, rate_limit=0.1, delay_ms=50.0, market=market)
    assert on["bundle"] == {"drop": 0.3, "rate_limit": 0.1, "delay_ms": 50.0, "reject": 0.0}
    assert on["tpu"] == {"drop": 0.2, "rate_limit": 0.1, "delay_ms": 50.0, "reject": 0.0}
    off = cluster_faults(drop=0.0, rate_limit=0.0, delay_ms=0.0, market=market)
    assert off["rpc"]["drop"] == off["bundle"]["drop"] == 0.3 and off["tpu"]["drop"] == 0.0
    assert "forward_delay_slots" not in off["rpc"]  # not the campaign's to set: PUT /faults keeps it
    assert cluster_faults(drop=0.0, rate_limit=0.0, delay_ms=0.0)["bundle"]["drop"] == 0.0  # calm: off is off
