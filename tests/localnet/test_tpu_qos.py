"""Stake-weighted QoS on the TPU (localnet.qos): under an unstaked flood, an unstaked
connection is throttled while a staked identity's streams all get through.

Real QUIC on loopback: the executor's own TPU client (venue.tpu ConnectionCache, which
presents TPU_IDENTITY_KEYPAIR in its certificate) for the staked identity, an aioquic client
(the helper of test_tpu_server.py) for the unstaked one, and the cluster's UnstakedFlood.
"""
from __future__ import annotations

import argparse
import asyncio
import os

import httpx
from solders.keypair import Keypair

from localnet.cluster import LocalCluster
from localnet.command import add_arguments, config_from_args
from localnet.qos import CONNECTION_CLOSE_CODE_DROPPED_ENTRY, FloodConfig, Qos, QosConfig, QosState, UnstakedFlood
from venue.tpu import ConnectionCache

from .test_tpu_server import HOST, eventually, running_server, tpu_client

BURST = 40


async def test_flood_throttles_unstaked_while_staked_identity_gets_through() -> None:
    staked = Keypair()
    qos = Qos(QosConfig(enabled=True, stakes={str(staked.pubkey()): 5_000_000_000_000}))
    async with running_server(qos=qos, max_new_connections_per_minute=10_000) as harness:
        server = harness.server
        flood = UnstakedFlood(qos, [(HOST, server.port)], FloodConfig(connections=10, rate=150), seed=7)
        flood.start()
        try:
            # The flood fills the unstaked table (8 locally) and keeps evicting the oldest.
            await eventually(lambda: server.qos_stats()["evictions_unstaked"] > 0, timeout=10)
            cache = ConnectionCache(staked)  # the executor's client, identity = TPU_IDENTITY_KEYPAIR
            try:
                staked_connection = await cache.get((HOST, server.port))
                async with tpu_client(server) as unstaked_client:
                    staked_txs = [b"S" + os.urandom(500) for _ in range(BURST)]
                    unstaked_txs = [b"U" + os.urandom(500) for _ in range(BURST)]
                    unstaked_client.send_transactions(*unstaked_txs)
                    await asyncio.wait_for(asyncio.gather(*(staked_connection.send_transaction(raw) for raw in staked_txs)), 10)
                    await eventually(lambda: sum(raw in staked_txs for raw, _ in harness.received) == BURST, timeout=10)
                    await asyncio.sleep(0.3)
                    assert staked_connection.alive  # never evicted by unstaked churn
            finally:
                await cache.close()
            assert {peer for raw, peer in harness.received if raw in staked_txs} == {str(staked.pubkey())}
            unstaked_delivered = sum(raw in unstaked_txs for raw, _ in harness.received)
        finally:
            await flood.stop()
        stats = server.qos_stats()
    # 2 streams per 100 ms for an unstaked connection and 12 held at most (agave's 200 TPS
    # and 128 concurrent streams, scaled by 10): most of the burst never reaches the leader.
    assert unstaked_delivered < BURST * 3 // 4, unstaked_delivered
    assert stats["throttled_unstaked_streams"] > 0 and stats["dropped_unstaked_streams"] > 0
    assert stats["flood_streams"] > 0 and stats["evictions_staked"] == 0
    # Flood payloads were read through QoS but never handed to the leader's intake.
    assert all(raw[:1] in (b"S", b"U") for raw, _ in harness.received)


async def test_full_unstaked_table_evicts_the_oldest_with_code_dropped() -> None:
    qos = Qos(QosConfig(enabled=True, max_unstaked_connections=2))
    async with running_server(qos=qos, max_new_connections_per_minute=10_000) as harness:
        async with tpu_client(harness.server) as first, tpu_client(harness.server) as second:
            await eventually(lambda: harness.server.qos_stats()["unstaked_connections"] == 2)
            async with tpu_client(harness.server):
                closed = await first.wait_terminated()
                assert closed.error_code == CONNECTION_CLOSE_CODE_DROPPED_ENTRY and closed.reason_phrase == "dropped"
                assert not second.terminated.done()


async def test_qos_off_by_default_and_switchable_from_the_command_line_and_admin() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    staked = Keypair()
    args = parser.parse_args(["--ports", "auto", "--slot-ms", "50", "--stake", f"{staked.pubkey()}=1000"])
    config = config_from_args(args)
    assert config.qos.enabled and config.qos.stakes == {str(staked.pubkey()): 1000}
    assert not config_from_args(parser.parse_args(["--ports", "auto"])).qos.enabled

    async with LocalCluster(config) as cluster, httpx.AsyncClient(base_url=cluster.endpoints()["admin"], timeout=10) as admin:
        view = (await admin.post("/qos", json={"flood": {"connections": 3, "rate": 60}, "seed": 3})).json()
        assert view["enabled"] and view["flood"]["connections"] == 3
        assert view["limits"]["unstaked_streams_per_100ms"] == 2
        for _ in range(100):
            view = (await admin.get("/qos")).json()
            if view["tpu"][0]["flood_streams"] > 0:
                break
            await asyncio.sleep(0.05)
        assert view["tpu"][0]["flood_streams"] > 0 and view["flood_running"]["sent"] > 0
        view = (await admin.post("/qos", json={"enabled": False, "flood": {"connections": 0}})).json()
        assert not view["enabled"] and view["flood_running"] is None
        assert (await admin.post("/qos", json={"stakes": {"not-a-key": 1}})).status_code == 400


def test_staked_budget_follows_stake_share_under_load() -> None:
    """available_load_capacity_in_throttling_duration, scaled: whole staked budget until the
    staked load EMA passes 95 %, then budget x stake / total, never below unstaked + 1."""
    big, small = str(Keypair().pubkey()), str(Keypair().pubkey())
    qos = Qos(QosConfig(enabled=True, stakes={big: 900, small: 100}))
    state = QosState(None, qos)  # type: ignore[arg-type]
    assert state._capacity(0) == qos.max_unstaked_per_interval == 2
    assert state._capacity(900) == state._capacity(100) == qos.max_staked_per_interval == 160
    state.stats.staked_throttling = True
    assert state._capacity(900) == 144 and state._capacity(100) == 16
    assert state._capacity(1) == qos.max_unstaked_per_interval + 1
