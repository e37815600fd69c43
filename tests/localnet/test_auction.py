"""Jito's tip auction (issue 22, item 4), the background searchers and bundle statuses as Jito reports them
(item 3), driven through the block engine's JSON-RPC, a region and the admin endpoint."""
from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.auction import AuctionConfig, SearcherConfig
from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.fixtures import create_swap_pool
from localnet.regions import RegionSettings

from .conftest import SLOT_MS, SOL, funded_wallet, sign

TIP = Pubkey.from_string(TIP_ACCOUNTS[0])


@pytest.fixture(scope="module")
def market():
    """Auction on from the start; ticks as long as a slot, so two bundles sent together always meet in one."""
    config = ClusterConfig.auto_ports(
        slot_ms=SLOT_MS, regions={"fra": RegionSettings(rate_limit=None)}, auction=AuctionConfig(enabled=True, tick_ms=400)
    )
    with ClusterThread(config) as running:
        yield running


def rpc_call(url: str, method: str, params: list | None = None, path: str = ""):
    answer = httpx.post(url + path, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=10).json()
    return answer["result"]


def blockhash(cluster):
    from solders.hash import Hash

    return Hash.from_string(rpc_call(cluster.endpoints()["rpc"], "getLatestBlockhash", [{"commitment": "processed"}])["value"]["blockhash"])


def b64(tx) -> str:
    return base64.b64encode(bytes(tx)).decode()


def swap_bundle(cluster, pool, wallet: Keypair, tip: int):
    """A real swap on the fixture pool (it write-locks the pool's vault) plus a tip."""
    ixs = pool.swap_instructions(wallet.pubkey(), 1_000, 1_000) + [transfer(TransferParams(from_pubkey=wallet.pubkey(), to_pubkey=TIP, lamports=tip))]
    return sign(wallet, ixs, blockhash(cluster))


def send_together(url: str, *transactions) -> list[str]:
    """One HTTP batch of sendBundle calls: the engine takes them in one go, so they bid in the same auction."""
    batch = [{"jsonrpc": "2.0", "id": i, "method": "sendBundle", "params": [[b64(tx)], {"encoding": "base64"}]} for i, tx in enumerate(transactions)]
    answers = httpx.post(url + "/api/v1/bundles", json=batch, timeout=10).json()
    return [answer["result"] for answer in sorted(answers, key=lambda a: a["id"])]


def inflight(url: str, bundle_id: str) -> dict:
    return rpc_call(url, "getInflightBundleStatuses", [[bundle_id]], "/api/v1/getInflightBundleStatuses")["value"][0]


def settle(url: str, bundle_ids: list[str], timeout: float = 15.0) -> list[str]:
    """Poll until every bundle reads Landed or Failed; their statuses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [inflight(url, bundle_id)["status"] for bundle_id in bundle_ids]
        if all(status in ("Landed", "Failed") for status in statuses):
            return statuses
        time.sleep(0.05)
    raise TimeoutError(f"bundles still {statuses}")


def test_the_higher_tip_per_cu_wins_the_pool_and_the_outbid_bundle_reads_failed(market):
    low, high = funded_wallet(market), funded_wallet(market)
    pool = market.call(lambda c: create_swap_pool(c.ledger, [low.pubkey(), high.pubkey()]))
    region = market.endpoints()["regions"]["fra"]
    outbid, winner = send_together(region, swap_bundle(market, pool, low, 5_000), swap_bundle(market, pool, high, 50_000))
    assert settle(region, [outbid, winner]) == ["Failed", "Landed"]
    assert rpc_call(region, "getBundleStatuses", [[outbid, winner]], "/api/v1/getBundleStatuses")["value"][0] is None
    admin = httpx.Client(base_url=market.endpoints()["admin"], timeout=10)
    assert admin.get("/regions").json()["fra"]["counters"]["lost_at_auction"] == 1
    assert admin.get("/auction").json()["counters"]["lost"] >= 1
    # The loser moved nothing: not its swap, not its tip, not its fee.
    assert market.call(lambda c: c.ledger.svm.get_balance(low.pubkey())) == 10 * SOL


def test_bundles_on_disjoint_pools_both_land(market):
    first, second = funded_wallet(market), funded_wallet(market)
    pool_a = market.call(lambda c: create_swap_pool(c.ledger, [first.pubkey()]))
    pool_b = market.call(lambda c: create_swap_pool(c.ledger, [second.pubkey()]))
    url = market.endpoints()["blockEngine"]
    ids = send_together(url, swap_bundle(market, pool_a, first, 5_000), swap_bundle(market, pool_b, second, 50_000))
    assert settle(url, ids) == ["Landed", "Landed"]


def test_with_the_auction_switched_off_at_run_time_both_rivals_land(market):
    admin = httpx.Client(base_url=market.endpoints()["admin"], timeout=10)
    assert admin.put("/auction", json={"enabled": False}).json()["enabled"] is False
    try:
        low, high = funded_wallet(market), funded_wallet(market)
        pool = market.call(lambda c: create_swap_pool(c.ledger, [low.pubkey(), high.pubkey()]))
        url = market.endpoints()["blockEngine"]
        ids = send_together(url, swap_bundle(market, pool, low, 5_000), swap_bundle(market, pool, high, 50_000))
        assert settle(url, ids) == ["Landed", "Landed"]
    finally:
        admin.put("/auction", json={"enabled": True})
    assert admin.put("/auction", json={"tick_ms": -1}).status_code == 400


async def test_a_dropped_bundle_reads_failed_within_a_slot_with_prompt_failures(cluster, admin):
    """Calm (the default) keeps today's silence: Pending until the blockhash expires. With prompt_failures
    the dropped bundle reads Failed once its slot is over, while its blockhash is still valid."""
    url = cluster.endpoints()["blockEngine"]
    admin.put("/faults", json={"bundle": {"drop": 1.0}})

    def dropped_bundle() -> tuple[str, str]:
        payer = funded_wallet(cluster)
        hash_ = blockhash(cluster)
        tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=2_000))], hash_)
        return rpc_call(url, "sendBundle", [[b64(tx)], {"encoding": "base64"}], "/api/v1/bundles"), str(hash_)

    silent, _ = dropped_bundle()
    try:
        assert admin.put("/auction", json={"prompt_failures": True}).json()["prompt_failures"] is True
        prompt, its_blockhash = dropped_bundle()
        deadline = time.monotonic() + 10
        while inflight(url, prompt)["status"] == "Pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert inflight(url, prompt) == {"bundle_id": prompt, "status": "Failed", "landed_slot": None}
        assert rpc_call(cluster.endpoints()["rpc"], "isBlockhashValid", [its_blockhash, {"commitment": "processed"}])["value"] is True
    finally:
        admin.put("/auction", json={"prompt_failures": False})
    assert inflight(url, silent)["status"] == "Pending"  # the calm rule again: dropped, blockhash still valid
    assert inflight(url, "0" * 64)["status"] == "Invalid"


def test_the_searcher_load_lands_bundles_that_pay_real_tips():
    searchers = SearcherConfig(rate=40, tip_median=20_000, tip_sigma=0.5, hot_accounts=1, seed=7)
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, auction=AuctionConfig(enabled=True, searchers=searchers))
    with ClusterThread(config) as running:
        rpc, admin = running.endpoints()["rpc"], httpx.Client(base_url=running.endpoints()["admin"], timeout=10)
        tips_before = len(TIP_ACCOUNTS) * rpc_call(rpc, "getMinimumBalanceForRentExemption", [0])  # what the cluster funds them with
        deadline = time.monotonic() + 30
        stats = admin.get("/auction").json()["searcher_stats"]
        while (stats["landed"] < 5 or stats["lost_at_auction"] < 1) and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = admin.get("/auction").json()["searcher_stats"]
        assert stats["landed"] >= 5 and stats["lost_at_auction"] >= 1, stats
        stopped = admin.put("/auction", json={"searchers": {"rate": 0}}).json()
        assert stopped["searchers_running"] is False
        time.sleep(10 * SLOT_MS / 1000)  # what was queued has executed
        stats = admin.get("/auction").json()["searcher_stats"]
        tips_after = sum(rpc_call(rpc, "getBalance", [account])["value"] for account in TIP_ACCOUNTS)
        assert tips_after - tips_before == stats["tips_landed_lamports"] > 5 * 1000
        assert stats["landed"] + stats["lost_at_auction"] <= stats["sent"]


def test_searchers_on_a_fixture_pool_outbid_a_cheap_swap_and_lose_to_a_rich_one():
    """The searchers write-lock the pool's shared vault, as a plan's swap does: a swap tipping little per
    requested CU loses to them, one tipping more wins its auctions."""
    searchers = SearcherConfig(rate=100, tip_median=1_000_000, tip_sigma=0.0, seed=11)  # 20 lamports per requested CU
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS)) as running:
        trader = funded_wallet(running)
        pool = running.call(lambda c: create_swap_pool(c.ledger, [trader.pubkey()]))
        admin = httpx.Client(base_url=running.endpoints()["admin"], timeout=10)
        status = admin.put("/auction", json={"searchers": searchers.__dict__}).json()
        assert status["enabled"] is True and status["searcher_stats"]["targets"] == [str(pool.vault_in)]
        url = running.endpoints()["blockEngine"]
        outcomes = []
        for _ in range(3):  # a searcher bundle meets the swap in nearly every 40 ms block; three tries make sure
            cheap = send_together(url, swap_bundle(running, pool, trader, 2_000))[0]  # 2,000 / 600,000 CU requested
            outcomes.append(settle(url, [cheap])[0])
            if outcomes[-1] == "Failed":
                break
        assert outcomes[-1] == "Failed", outcomes
        rich = send_together(url, swap_bundle(running, pool, trader, SOL // 10))[0]  # 166 lamports per requested CU
        assert settle(url, [rich]) == ["Landed"]
        assert admin.get("/stats").json()["counters"]["bundle.lost_auction"] >= 1


def pool_bidders(count: int):
    """A bare ledger (no cluster) with `count` funded wallets on one fixture pool, and `bid(payer, tip,
    at_ms)`: that wallet's swap plus its tip as a one-transaction bundle, received at `at_ms`."""
    from localnet.ledger import Ledger, Submission
    from solders.account import Account
    from venue.programs import SYSTEM_PROGRAM

    ledger = Ledger()
    payers = [Keypair() for _ in range(count)]
    for payer in payers:
        ledger.svm.set_account(payer.pubkey(), Account(10 * SOL, b"", SYSTEM_PROGRAM))
    ledger.svm.set_account(TIP, Account(890_880, b"", SYSTEM_PROGRAM))
    pool = create_swap_pool(ledger, [p.pubkey() for p in payers])
    hash_ = ledger.latest_blockhash[0]

    def bid(payer, tip, at_ms):
        ixs = pool.swap_instructions(payer.pubkey(), 10, 10) + [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=tip))]
        tx = sign(payer, ixs, hash_)
        return Submission([tx], bundle_id=str(tx.signatures[0]), received_ns=int(at_ms * 1e6))

    return ledger, payers, bid


def test_the_auction_runs_once_per_tick_within_a_slot():
    """At 400 ms slots and 50 ms ticks, rivals that arrive in different ticks of one slot are in different
    auctions (both go to the block); rivals in one tick meet (the better tip per CU goes alone)."""
    from localnet.auction import LOST_AUCTION, Auction

    ledger, payers, bid = pool_bidders(4)
    auction = Auction(AuctionConfig(enabled=True, tick_ms=50))
    auction.last_block_ns = 0  # the previous block began at t=0
    work = [bid(payers[0], 5_000, 10), bid(payers[1], 9_000, 30), bid(payers[2], 7_000, 120), bid(payers[3], 1_000, 390)]
    kept, losers = auction.run(ledger, work, [TIP], now_ns=int(400e6))
    assert [s.bundle_id for s in kept] == [work[1].bundle_id, work[2].bundle_id, work[3].bundle_id]
    assert [(o.bundle_id, o.err) for o in losers] == [(work[0].bundle_id, LOST_AUCTION)]
    assert ledger.bundles[work[0].bundle_id].landed is False


def test_a_bundle_its_region_dropped_reads_failed_soon_with_prompt_failures(market):
    admin = httpx.Client(base_url=market.endpoints()["admin"], timeout=10)
    region = market.endpoints()["regions"]["fra"]
    admin.put("/regions/fra", json={"drop": 1.0})
    admin.put("/auction", json={"prompt_failures": True})
    try:
        payer = funded_wallet(market)
        tx = sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=2_000))], blockhash(market))
        bundle_id = send_together(region, tx)[0]
        assert settle(region, [bundle_id]) == ["Failed"]  # long before its blockhash's 150 blocks (6 s) are over
        assert rpc_call(market.endpoints()["rpc"], "isBlockhashValid", [str(tx.message.recent_blockhash), {"commitment": "processed"}])["value"]
        assert admin.get("/regions").json()["fra"]["counters"]["dropped"] == 1
    finally:
        admin.put("/regions/fra", json={"drop": 0.0})
        admin.put("/auction", json={"prompt_failures": False})


def test_a_late_copy_of_a_landed_bundle_that_loses_an_auction_still_reads_landed():
    """A bundle that landed, sent again (a resend, or a second region forwarding it late), may meet a
    richer rival and lose: the loss is the copy's, and the bundle's status stays Landed."""
    from localnet.auction import Auction
    from localnet.ledger import BundleOutcome

    ledger, payers, bid = pool_bidders(2)
    late_copy, rich = bid(payers[0], 2_000, 10), bid(payers[1], 50_000, 10)
    landed = BundleOutcome(late_copy.bundle_id, ledger.slot - 1, True, [late_copy.bundle_id])
    ledger.bundles[late_copy.bundle_id] = landed
    auction = Auction(AuctionConfig(enabled=True, tick_ms=400))
    auction.last_block_ns = 0
    _, losers = auction.run(ledger, [late_copy, rich], [TIP], now_ns=int(400e6))
    assert [o.bundle_id for o in losers] == [late_copy.bundle_id]
    assert ledger.bundles[late_copy.bundle_id] is landed
