"""Race mode and bundle resends, with the real clients against the local cluster's regions (issue 23).

No stand-ins: `Submitter` sends through `BlockEngines` (one real `JitoClient` per region) and the
real `SolanaRpc`; `BundleTracker` asks the regions' real getInflightBundleStatuses. The cluster's
admin view (`/transactions`, `/regions`) says where each copy went and which one landed.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import httpx
import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from executor.bundles import BundleFollow, BundleTracker
from executor.errors import GateRefusal, PlanFailure
from executor.submit import RaceSettings, Submitter
from localnet.auction import AuctionConfig
from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.regions import RegionSettings
from venue.blockengines import BlockEngines, parse_regions, region_name
from venue.health import HealthBoard
from venue.jito import JitoClient
from venue.rpc import SolanaRpc
from workflows.events import ErrorCode
from workflows.stages import SignedTransaction

SOL = 1_000_000_000
TIP = Pubkey.from_string(TIP_ACCOUNTS[0])


@pytest.fixture(scope="module")
def regions():
    """Two regions without rate limits (each test sets its own drops), prompt Failed statuses as Jito gives them."""
    config = ClusterConfig.auto_ports(
        slot_ms=40, regions={"ams": RegionSettings(rate_limit=None), "fra": RegionSettings(rate_limit=None)}, auction=AuctionConfig(enabled=True, prompt_failures=True)
    )
    with ClusterThread(config) as running:
        yield running


def admin(cluster) -> httpx.Client:
    return httpx.Client(base_url=cluster.endpoints()["admin"], timeout=10)


def set_drops(cluster, *, ams: float = 0.0, fra: float = 0.0, rpc: float = 0.0) -> None:
    with admin(cluster) as client:
        client.put("/regions/ams", json={"drop": ams}).raise_for_status()
        client.put("/regions/fra", json={"drop": fra}).raise_for_status()
        client.put("/faults", json={"rpc": {"drop": rpc}}).raise_for_status()


def landed_via(cluster, signature: str) -> dict | None:
    with admin(cluster) as client:
        [row] = client.get("/transactions", params={"signature": signature}).json()["transactions"]
    return row


def tipped(cluster) -> tuple[SignedTransaction, int]:
    from tests.localnet.conftest import funded_wallet, sign
    from tests.localnet.test_regions import newest_blockhash

    payer = funded_wallet(cluster)
    blockhash = newest_blockhash(cluster)
    tx = sign(
        payer,
        [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL // 100)),
         transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=5000))],
        blockhash,
    )  # fmt: skip
    height = httpx.post(cluster.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getBlockHeight", "params": [{"commitment": "processed"}]}).json()["result"]
    signed = SignedTransaction(
        plan_id="race-test", wallet=str(payer.pubkey()), signature=str(tx.signatures[0]), transaction=base64.b64encode(bytes(tx)).decode(),
        last_valid_block_height=height + 150, tip_lamports=5000,
    )  # fmt: skip
    return signed, height


def engines_for(cluster) -> BlockEngines:
    urls = cluster.endpoints()["regions"]
    order = {"ams": urls["ams"], "fra": urls["fra"]}  # ams first: the board tries it first while neither is measured
    return BlockEngines({name: JitoClient(url, timeout_s=2.0) for name, url in order.items()}, HealthBoard(order, rate=1000.0))


async def wait_landed(cluster, signature: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = landed_via(cluster, signature)
        if row["landedSlot"] is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{signature} did not land in {timeout_s} s: {landed_via(cluster, signature)}")


def test_regions_are_named_from_the_list():
    assert region_name("fra=http://127.0.0.1:9") == ("fra", "http://127.0.0.1:9")
    assert region_name("https://amsterdam.mainnet.block-engine.jito.wtf") == ("amsterdam", "https://amsterdam.mainnet.block-engine.jito.wtf")
    assert region_name("http://127.0.0.1:8920") == ("127.0.0.1:8920", "http://127.0.0.1:8920")
    with pytest.raises(ValueError, match="twice"):
        parse_regions(["a=http://x", "a=http://y"])


async def test_a_race_lands_through_the_region_that_did_not_drop_it(regions):
    """ams drops every bundle and the RPC node drops everything: of the race's routes, only fra's can land it."""
    set_drops(regions, ams=1.0, rpc=1.0)
    engines = engines_for(regions)
    rpc = SolanaRpc(regions.endpoints()["rpc"])
    submitter = Submitter(rpc, None, lambda: None, engines=engines, race=RaceSettings(bundle_regions=2, jito_transaction=False), slot=lambda: 7)
    try:
        signed, _ = tipped(regions)
        submission = await submitter.submit("race", signed, deadline_ms=int(time.time() * 1000) + 30_000)
        assert set(submission.routes) == {"bundle:ams", "bundle:fra", "rpc"}
        assert {region for region, _ in submission.bundles} == {"ams", "fra"} and submission.sent_slot == 7
        row = await wait_landed(regions, signed.signature)
        assert row["landedVia"]["region"] == "fra"
        assert row["droppedByFault"] or row["timesReceived"] >= 3  # every copy reached the cluster; only fra's was kept
    finally:
        set_drops(regions)
        await engines.close()
        await rpc.close()


@contextlib.asynccontextmanager
async def a_bundle_ams_drops(cluster, *, may_resend: bool):
    """ams drops every bundle; one goes there, followed by a real tracker: (follow, signed, height at signing,
    the regions the follow-up sent it to)."""
    set_drops(cluster, ams=1.0)
    engines = engines_for(cluster)
    tracker = BundleTracker(engines, poll_s=0.05)
    tracker.start()
    submitter = Submitter(None, None, lambda: None, engines=engines)
    try:
        signed, height = tipped(cluster)
        raw = base64.b64decode(signed.transaction)
        first = await submitter.send_route("bundle:ams", raw)
        assert first.region == "ams"
        resent_to: list[str] = []

        async def send(region: str) -> str:
            resent_to.append(region)
            return (await submitter.send_route(f"bundle:{region}", raw)).bundle_id

        yield BundleFollow("race-test", raw, {"ams": first.bundle_id}, tracker, send=send, may_resend=lambda: may_resend), signed, height, resent_to
    finally:
        set_drops(cluster)
        await tracker.stop()
        await engines.close()


async def test_a_bundle_a_region_says_failed_is_resent_to_another_and_lands_long_before_expiry(regions):
    """Before issue 23 a dropped bundle waited ~150 blocks for its blockhash to expire; now the Failed
    status sends it to fra, and it lands within a few slots of that."""
    async with a_bundle_ams_drops(regions, may_resend=True) as (follow, signed, height, resent_to):
        deadline = time.monotonic() + 20
        while follow.resends == 0 and time.monotonic() < deadline:
            await follow.check()
            await asyncio.sleep(0.02)
        assert follow.resends == 1 and set(follow.live) == {"fra"} and follow.tried == {"ams", "fra"}
        row = await wait_landed(regions, signed.signature)
        assert row["landedVia"]["region"] == "fra"
        landed_height = httpx.post(regions.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "getBlockHeight", "params": [{"commitment": "processed"}]}).json()["result"]
        assert landed_height - height < 75  # well before its 150 blocks were up
        for _ in range(100):  # the tracker says which region landed it
            await follow.check()
            if follow.landed_via:
                break
            await asyncio.sleep(0.05)
        assert follow.landed_via == "bundle:fra" or await follow.landed_route() == "bundle:fra"
        assert resent_to == ["fra"]
        follow.close()
        assert not any(follow.tracker.watching.values())


async def test_no_resend_when_the_plan_may_no_longer_send(regions):
    async with a_bundle_ams_drops(regions, may_resend=False) as (follow, signed, _, resent_to):
        deadline = time.monotonic() + 10
        while follow.live and time.monotonic() < deadline:
            await follow.check()
            await asyncio.sleep(0.02)
        assert not follow.live and resent_to == [] and follow.resends == 0  # ams said Failed; halted or late: nothing more goes out
        assert landed_via(regions, signed.signature)["landedSlot"] is None


async def test_a_halted_race_sends_nothing_on_any_route(regions):
    engines = engines_for(regions)
    rpc = SolanaRpc(regions.endpoints()["rpc"])
    submitter = Submitter(rpc, None, lambda: "operator halt", engines=engines)
    try:
        signed, _ = tipped(regions)
        with pytest.raises(PlanFailure) as refused:
            await submitter.submit("race", signed, deadline_ms=int(time.time() * 1000) + 30_000)
        assert refused.value.code is ErrorCode.HALTED and not refused.value.retryable
        with admin(regions) as client:
            assert client.get("/transactions", params={"signature": signed.signature}).json()["transactions"] == []
        assert submitter.in_flight == 0
    finally:
        await engines.close()
        await rpc.close()


async def test_a_race_each_of_whose_routes_refuses_says_nothing_left(regions):
    """Every route refused definitively (the gate in each route's own step): the race raises the refusal, so the
    dispatch may void the record. One route refused while another accepted is a send."""
    engines = engines_for(regions)
    rpc = SolanaRpc(regions.endpoints()["rpc"])
    submitter = Submitter(rpc, None, lambda: None, engines=engines, race=RaceSettings(jito_transaction=False))
    try:
        signed, _ = tipped(regions)
        raw = base64.b64decode(signed.transaction)
        refusals = iter([None, GateRefusal(ErrorCode.DEADLINE_EXCEEDED, "late", final=True), None, None])
        sent = await submitter._race(raw, gate=lambda: next(refusals))  # the second route is refused in its own step
        assert len(sent) == 2  # the other two went
        with pytest.raises(PlanFailure) as refused:
            await submitter._race(raw, gate=lambda: GateRefusal(ErrorCode.DEADLINE_EXCEEDED, "late", final=True))
        assert refused.value.code is ErrorCode.DEADLINE_EXCEEDED
    finally:
        await engines.close()
        await rpc.close()


async def test_a_bundle_whose_region_does_not_answer_goes_to_the_next_region(regions):
    """ams holds every request and never answers (a blackhole): the bundle may be there, so the same bytes
    go to fra too, and the plan is followed as sent (before, the plan waited for expiry with no bundle to follow)."""
    with admin(regions) as client:
        client.put("/regions/ams", json={"down": "blackhole"}).raise_for_status()
    urls = regions.endpoints()["regions"]
    order = {"ams": urls["ams"], "fra": urls["fra"]}
    engines = BlockEngines({name: JitoClient(url, timeout_s=0.5) for name, url in order.items()}, HealthBoard(order, rate=1000.0))
    submitter = Submitter(None, None, lambda: None, engines=engines)
    try:
        signed, _ = tipped(regions)
        sent = await submitter.send_route("jito_bundle", base64.b64decode(signed.transaction))
        assert sent.route == "bundle:fra" and sent.bundle_id
        assert engines.board["ams"].counts["unavailable"] == 1
        row = await wait_landed(regions, signed.signature)
        assert row["landedVia"]["region"] == "fra"
    finally:
        with admin(regions) as client:
            client.put("/regions/ams", json={"down": None}).raise_for_status()
        await engines.close()


async def test_a_bundle_a_lagging_region_refuses_goes_to_the_next_region(regions):
    """A region a slot or two behind refuses a bundle whose blockhash it has not seen yet; it took nothing,
    so the same bytes go to the next region (before, the plan ended SUBMIT_REJECTED: 1 of 60 on hostile)."""
    with admin(regions) as client:
        client.put("/regions/ams", json={"lag_slots": 50}).raise_for_status()
    engines = engines_for(regions)
    submitter = Submitter(None, None, lambda: None, engines=engines)
    try:
        signed, _ = tipped(regions)
        sent = await submitter.send_route("jito_bundle", base64.b64decode(signed.transaction))
        assert sent.route == "bundle:fra"
        assert engines.board["ams"].counts["refused"] == 1
        with admin(regions) as client:
            assert client.get("/regions").json()["ams"]["counters"]["refused_lagging"] >= 1
        assert (await wait_landed(regions, signed.signature))["landedVia"]["region"] == "fra"
    finally:
        with admin(regions) as client:
            client.put("/regions/ams", json={"lag_slots": 0}).raise_for_status()
        await engines.close()
