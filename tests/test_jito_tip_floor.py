"""JitoClient.tip_floor against the local cluster's block engine (issue 23, item 4): bundles with known tips
land, the real client reads the floor in lamports, and a plan priced at the 75th percentile pays it.
Real HTTP, no mocks; the malformed answers come from a one-route endpoint of this test's own."""
from __future__ import annotations

import asyncio
import base64
import json
import struct
import time

import httpx
import pytest
from aiohttp import web
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Processed
from solders.keypair import Keypair
from solders.message import from_bytes_versioned
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from executor.build import BuildSettings, tip_lamports
from executor.tips import TipPrice, TipSettings, price_tip
from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from tests.http_endpoint import http_endpoint
from tests.localnet.conftest import SOL, funded_wallet, latest_blockhash, sign
from settings.policy import PolicySettings
from tests.test_tips import JITO_EXAMPLE, plan
from venue.chain import BlockhashCache
from venue.rpc import SolanaRpc
from worker.config import ExecutorConfig
from worker.main import transaction_builder
from venue.jito import PATH_TIP_FLOOR, JitoClient, JitoError, JitoMalformedTipFloor, JitoRateLimited, JitoUnavailable, TipFloor, TipStream

SLOT_MS = 40
LANDED_TIPS = [2000, 5000, 10_000, 50_000, 100_000]  # lamports, one bundle each
# Linear interpolation between the closest ranks (localnet/tipfloor.py; numpy's default) over LANDED_TIPS.
EXPECTED = {"p25": 5000, "p50": 10_000, "p75": 50_000, "p95": 90_000, "p99": 98_000}


@pytest.fixture(scope="module")
def market():
    """A cluster of its own, so the floor holds only this module's bundles; a window no slow machine outlives."""
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS, tip_floor_window_slots=1_000_000)) as running:
        yield running


async def tipping_bundle(market, chain, lamports: int, index: int):
    payer = funded_wallet(market, 2)
    tip = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Pubkey.from_string(TIP_ACCOUNTS[index % 8]), lamports=lamports))
    pay = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL // 10))
    return [sign(payer, [pay, tip], await latest_blockhash(chain))]


async def land(jito: JitoClient, bundle) -> None:
    bundle_id = await jito.send_bundle(bundle)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (status,) = await jito.inflight_statuses([bundle_id])
        if status.status in {"Landed", "Failed"}:
            assert status.status == "Landed"
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"bundle {bundle_id} did not land")


async def test_the_client_reads_the_floor_of_the_tips_that_landed_and_a_plan_pays_its_75th(market):
    async with JitoClient(market.endpoints()["blockEngine"], timeout_s=5.0) as jito, AsyncClient(market.endpoints()["rpc"], commitment=Processed) as chain:
        before = await jito.tip_floor()
        assert (before.p25, before.p50, before.p75, before.p95, before.p99, before.ema50) == (1000,) * 6  # Jito's minimum tip before any landing
        bundles = [await tipping_bundle(market, chain, tip, index) for index, tip in enumerate(LANDED_TIPS)]
        await asyncio.gather(*(land(jito, bundle) for bundle in bundles))
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(600):  # the floor is recomputed once the block is complete, soon after the statuses read Landed
                if (await http.get(market.endpoints()["admin"] + "/tip-floor")).json()["bundles"] == len(LANDED_TIPS):
                    break
                await asyncio.sleep(0.05)
        started = time.monotonic()
        floor = await jito.tip_floor()
    assert isinstance(floor, TipFloor)
    assert {name: getattr(floor, name) for name in EXPECTED} == EXPECTED  # lamports, from the SOL Jito's shape carries
    assert 2000 <= floor.ema50 <= 100_000
    assert started <= floor.fetched_at <= time.monotonic()
    priced = price_tip(plan(expected_profit=1.0), floor, floor.fetched_at, TipSettings(percentile="75"))
    assert priced == TipPrice(floor.p75, "floor") and priced.lamports == 50_000


def floor_endpoint(status: int, body: str, headers: dict | None = None):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)

    return http_endpoint(PATH_TIP_FLOOR, handler, method="GET")


@pytest.mark.parametrize("body", ['{"time": "now"}', "[]", "not json", '[{"time": "2026-12-08T01:00:00Z", "landed_tips_50th_percentile": 1e-05}]'])
async def test_a_malformed_answer_raises_the_clients_error(body):
    async with floor_endpoint(200, body) as base, JitoClient(base) as jito:
        with pytest.raises(JitoMalformedTipFloor) as raised:
            await jito.tip_floor()
    assert isinstance(raised.value, JitoError)


async def test_refusals_and_outages_keep_the_clients_meaning():
    async with floor_endpoint(200, json.dumps(JITO_EXAMPLE)) as base, JitoClient(base) as jito:
        assert (await jito.tip_floor()).p75 == 36_197
    # Mainnet serves the floor from bundles.jito.wtf, not the block engine: a URL of its own.
    async with floor_endpoint(200, json.dumps(JITO_EXAMPLE)) as base, JitoClient("http://127.0.0.1:9/api/v1", tip_floor_url=base + "/api/v1/") as jito:
        assert (await jito.tip_floor()).p99 == 10_007_999
    async with floor_endpoint(429, "{}", {"Retry-After": "2"}) as base, JitoClient(base) as jito:
        with pytest.raises(JitoRateLimited) as limited:
            await jito.tip_floor()
    assert limited.value.retry_after_s == 2.0
    async with floor_endpoint(503, "down") as base, JitoClient(base) as jito:
        with pytest.raises(JitoUnavailable):
            await jito.tip_floor()
    async with floor_endpoint(404, "no such path") as base, JitoClient(base) as jito:
        with pytest.raises(JitoMalformedTipFloor):
            await jito.tip_floor()


# --- the tip stream ------------------------------------------------------------------------------------


async def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def values(floor: TipFloor) -> tuple:
    return (floor.time, floor.p25, floor.p50, floor.p75, floor.p95, floor.p99, floor.ema50)


async def test_the_stream_keeps_the_latest_floor_pushed_after_a_bundle_lands(market):
    async with JitoClient(market.endpoints()["blockEngine"], timeout_s=5.0) as jito, AsyncClient(market.endpoints()["rpc"], commitment=Processed) as chain:
        async with TipStream(jito, quiet_s=0.3) as stream:
            assert stream.floor is None  # nothing yet, and reading never waits
            await wait_for(lambda: stream.floor is not None and stream.streaming)
            first = stream.floor
            assert values(first) == values(await jito.tip_floor())  # the floor on connect is the REST floor
            # Quiet (nothing lands): the open connection keeps the same floor current.
            await wait_for(lambda: stream.floor.fetched_at > first.fetched_at)
            assert values(stream.floor) == values(first)
            await land(jito, await tipping_bundle(market, chain, SOL // 100, 3))  # 0.01 SOL: a new 99th percentile
            await wait_for(lambda: stream.floor.p99 != first.p99)
            pushed = stream.floor
            assert first.p99 < pushed.p99 <= SOL // 100  # lamports, not SOL
            assert values(pushed) == values(await jito.tip_floor())
            assert stream.stats["polled"] == 0 and stream.stats["pushed"] >= 2


async def test_without_a_stream_the_floor_is_read_over_rest():
    async with floor_endpoint(200, json.dumps(JITO_EXAMPLE)) as base, JitoClient(base) as jito:  # no websocket route: 404
        async with TipStream(jito, quiet_s=0.2, reconnect_s=0.05) as stream:
            await wait_for(lambda: stream.stats["polled"] >= 2)
            assert not stream.streaming and stream.stats["connects"] == 0
            assert stream.floor.p75 == 36_197


async def test_a_malformed_pushed_message_is_skipped_and_the_last_floor_stands():
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str(json.dumps(JITO_EXAMPLE))
        await socket.send_str('[{"time": "later", "landed_tips_75th_percentile": "lots"}]')
        sent.set()
        async for _ in socket:
            pass
        return socket

    async with http_endpoint("/api/v1/bundles/tip_stream", handler, method="GET") as base, JitoClient(base) as jito:
        async with TipStream(jito) as stream:
            await wait_for(lambda: stream.stats["malformed"] == 1)
            assert stream.streaming and stream.stats["pushed"] == 1
            assert stream.floor.time == "2024-09-01T12:58:00Z" and stream.floor.p75 == 36_197


# --- the worker's builder, priced from the cluster's floor -----------------------------------------------


async def test_a_jito_bundle_plan_built_by_the_worker_builder_pays_the_floors_75th_capped_by_the_policy(market):
    """Issue 23: "A tip comes from the tip floor and is capped by the policy". The builder is the one the
    worker runs (worker.main.transaction_builder), reading the latest floor from a TipStream on the
    cluster's block engine, building against the cluster's RPC; the policy's max tip is the cap."""
    endpoints = market.endpoints()
    config = ExecutorConfig.from_environment({"RPC_ENDPOINT": endpoints["rpc"], "JITO_BLOCK_ENGINE_URL": endpoints["blockEngine"]})
    assert config.jito_tip_percentile == "75", "the default"
    rpc = SolanaRpc(endpoints["rpc"])
    async with JitoClient(endpoints["blockEngine"], timeout_s=5.0) as jito, AsyncClient(endpoints["rpc"], commitment=Processed) as chain:
        async with httpx.AsyncClient(timeout=10) as http:
            if (await http.get(endpoints["admin"] + "/tip-floor")).json()["bundles"] == 0:  # this test alone: land the module's tips
                await asyncio.gather(*[land(jito, await tipping_bundle(market, chain, tip, i)) for i, tip in enumerate(LANDED_TIPS)])
        try:
            async with TipStream(jito, quiet_s=0.3) as stream:
                await wait_for(lambda: stream.floor is not None and stream.floor.p75 > 10_000)  # landed tips, above JITO_TIP_BASE
                p75 = stream.floor.p75
                blockhashes = BlockhashCache(rpc)
                event = plan(expected_profit=1.0)  # today's rule: 333,333 lamports; the profit cap: 3,333,333
                today = tip_lamports(event, BuildSettings())
                assert today not in (p75, p75 - 1)
                for policy, expected, capped in ((PolicySettings(), p75, None), (PolicySettings(max_tip_lamports=p75 - 1), p75 - 1, "policy")):
                    builder = transaction_builder(config, rpc, rpc, blockhashes, jito.tip_accounts, tip_floor=lambda: stream.floor, policy=policy)
                    built = await builder.build(event, event.wallet)
                    assert (built.tip_lamports, built.tip_source, built.tip_capped_by, built.tip_escalation) == (expected, "floor:p75", capped, 0)
                    message = from_bytes_versioned(base64.b64decode(built.message))
                    keys = [str(key) for key in message.account_keys]
                    tip = message.instructions[-1]  # the tip goes last, in the same transaction
                    assert keys[tip.program_id_index] == "11111111111111111111111111111111"
                    assert keys[tip.accounts[1]] == built.tip_account in TIP_ACCOUNTS
                    assert struct.unpack("<IQ", bytes(tip.data)) == (2, expected)  # SystemInstruction::Transfer { lamports }
                # A plan's own tip still wins, and `off` keeps today's rule.
                own = plan(expected_profit=1.0, tip=4_000)
                assert (await builder.build(own, own.wallet)).tip_lamports == 4_000
                off = ExecutorConfig.from_environment({"RPC_ENDPOINT": endpoints["rpc"], "JITO_TIP_PERCENTILE": "off"})
                builder = transaction_builder(off, rpc, rpc, blockhashes, jito.tip_accounts, tip_floor=lambda: stream.floor)
                built = await builder.build(event, event.wallet)
                assert (built.tip_lamports, built.tip_source) == (today, "rule")
        finally:
            await rpc.close()
