"""JitoClient.tip_floor against the local cluster's block engine (issue 23, item 4): bundles with known tips
land, the real client reads the floor in lamports, and a plan priced at the 75th percentile pays it.
Real HTTP, no mocks; the malformed answers come from a one-route endpoint of this test's own."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from aiohttp import web
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Processed
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from executor.tips import TipPrice, TipSettings, price_tip
from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from tests.http_endpoint import http_endpoint
from tests.localnet.conftest import SOL, funded_wallet, latest_blockhash, sign
from tests.test_tips import JITO_EXAMPLE, plan
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
