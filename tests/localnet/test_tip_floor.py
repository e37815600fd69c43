"""Jito's tip floor (issue 22, item 4): GET /api/v1/bundles/tip_floor and the tip_stream websocket, on the
block engine and on a region, answer Jito's shape in SOL from the tips of the bundles that really landed."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime

import aiohttp
import httpx
import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Processed
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.regions import RegionSettings

from .conftest import SLOT_MS, SOL, funded_wallet, latest_blockhash, sign
from .test_block_engine import b64, jito, wait_bundle

FIELDS = {
    "time",
    "landed_tips_25th_percentile",
    "landed_tips_50th_percentile",
    "landed_tips_75th_percentile",
    "landed_tips_95th_percentile",
    "landed_tips_99th_percentile",
    "ema_landed_tips_50th_percentile",
}
PERCENTILES = ["landed_tips_25th_percentile", "landed_tips_50th_percentile", "landed_tips_75th_percentile", "landed_tips_95th_percentile", "landed_tips_99th_percentile"]
FLOOR = "/api/v1/bundles/tip_floor"
STREAM = "/api/v1/bundles/tip_stream"
LANDED_TIPS = [2000, 5000, 10_000, 50_000, 100_000]  # lamports


@pytest.fixture(scope="module")
def market():
    """A cluster of its own, so the floor holds only this module's bundles; a window no slow machine outlives."""
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, regions={"ams": RegionSettings(rate_limit=None)}, tip_floor_window_slots=1_000_000)
    with ClusterThread(config) as running:
        yield running


@pytest.fixture
async def chain(market):
    async with AsyncClient(market.endpoints()["rpc"], commitment=Processed) as client:
        yield client


def tip_to(payer: Keypair, lamports: int, index: int = 0):
    return transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Pubkey.from_string(TIP_ACCOUNTS[index % 8]), lamports=lamports))


async def land(http, market, chain, transactions) -> None:
    bundle_id = (await jito(http, market, "sendBundle", [[b64(tx) for tx in transactions], {"encoding": "base64"}])).json()["result"]
    assert (await wait_bundle(http, market, bundle_id, {"Landed", "Failed"}, timeout=30))["status"] == "Landed"


async def tipping_bundle(market, chain, lamports: int, index: int):
    payer = funded_wallet(market, 2)
    return [sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL // 10)), tip_to(payer, lamports, index)], await latest_blockhash(chain))]


def floor_of(answer) -> dict:
    assert isinstance(answer, list) and len(answer) == 1  # Jito answers a list holding one object
    floor = answer[0]
    assert set(floor) == FIELDS
    datetime.fromisoformat(floor["time"].replace("Z", "+00:00"))  # RFC 3339
    assert all(isinstance(floor[name], float) for name in FIELDS - {"time"})
    return floor


def test_before_any_landing_the_floor_is_jitos_minimum_tip_in_sol(market):
    for base in (market.endpoints()["blockEngine"], market.endpoints()["regions"]["ams"]):
        response = httpx.get(base + FLOOR, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        floor = floor_of(response.json())
        assert all(floor[name] == pytest.approx(1e-6) for name in FIELDS - {"time"})  # 1000 lamports


async def test_the_floor_follows_the_tips_that_landed(market, chain, http):
    bundles = [await tipping_bundle(market, chain, tip, index) for index, tip in enumerate(LANDED_TIPS[:-1])]
    # The last bundle tips from two transactions to two tip accounts: its tip is the sum.
    payer = funded_wallet(market, 2)
    blockhash = await latest_blockhash(chain)
    bundles.append([sign(payer, [tip_to(payer, 60_000, 5)], blockhash), sign(payer, [tip_to(payer, 40_000, 6)], blockhash)])
    await asyncio.gather(*(land(http, market, chain, bundle) for bundle in bundles))
    for _ in range(600):  # the floor is recomputed once the block is complete, soon after the statuses read Landed
        if (await http.get(market.endpoints()["admin"] + "/tip-floor")).json()["bundles"] == len(LANDED_TIPS):
            break
        await asyncio.sleep(0.05)
    for base in (market.endpoints()["blockEngine"], market.endpoints()["regions"]["ams"]):
        floor = floor_of((await http.get(base + FLOOR)).json())
        values = [floor[name] for name in PERCENTILES]
        assert values == sorted(values)
        # Linear interpolation over 2000, 5000, 10000, 50000, 100000 lamports, answered in SOL.
        assert values == pytest.approx([5e-6, 1e-5, 5e-5, 9e-5, 9.8e-5])
        assert 2e-6 <= floor["ema_landed_tips_50th_percentile"] <= 1e-4
    view = (await http.get(market.endpoints()["admin"] + "/tip-floor")).json()
    assert view["bundles"] == len(LANDED_TIPS) and view["lamports"]["landed_tips_50th_percentile"] == 10_000


async def test_the_stream_pushes_the_floor_after_a_bundle_lands(market, chain, http):
    async with aiohttp.ClientSession() as session, session.ws_connect(market.endpoints()["regions"]["ams"] + STREAM) as stream:
        first = floor_of(json.loads((await stream.receive(timeout=10)).data))  # the current floor, on connect
        await land(http, market, chain, await tipping_bundle(market, chain, 10 * SOL // 1000, 3))  # 0.01 SOL
        pushed = floor_of(json.loads((await stream.receive(timeout=30)).data))
    assert pushed["landed_tips_99th_percentile"] > first["landed_tips_99th_percentile"]
    assert pushed["landed_tips_99th_percentile"] <= 0.01 and pushed["landed_tips_99th_percentile"] > 0.005  # SOL, not lamports
    rest = floor_of((await http.get(market.endpoints()["blockEngine"] + FLOOR)).json())
    assert rest == pushed  # the stream and the REST path answer the same floor


async def test_tips_age_out_of_the_window_set_at_run_time(market, http):
    admin = market.endpoints()["admin"] + "/tip-floor"
    assert (await http.put(admin, json={"windowSlots": 0})).status_code == 400
    view = (await http.put(admin, json={"windowSlots": 5})).json()
    assert view["windowSlots"] == 5 and view["bundles"] > 0
    for _ in range(600):  # 5 slots of 40 ms, however slow the machine
        floor = floor_of((await http.get(market.endpoints()["blockEngine"] + FLOOR)).json())
        if floor["landed_tips_50th_percentile"] == pytest.approx(1e-6):
            break
        await asyncio.sleep(0.05)
    assert all(floor[name] == pytest.approx(1e-6) for name in PERCENTILES)  # back to the minimum tip
    assert floor["ema_landed_tips_50th_percentile"] > 1e-6  # the EMA remembers what landed
    assert (await http.get(admin)).json()["bundles"] == 0
