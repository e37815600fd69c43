"""Congestion and fees: full blocks, a leader that orders its queue by priority, per-account limits.

Driven through solana-py's AsyncClient (sendTransaction, getSignatureStatuses,
getRecentPrioritizationFees) and the admin endpoint, which turns the background load on and
off at run time. Slots are compared, never wall time.
"""
from __future__ import annotations

import argparse

import httpx
import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.models import TxOpts
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.command import add_arguments, config_from_args
from localnet.congestion import CongestionConfig

from .conftest import SLOT_MS, funded_wallet, latest_blockhash, sign, wait_slots, wait_status

LOAD_FEES = {"fee_min": 1_000_000, "fee_max": 2_000_000}  # micro-lamports per CU
CU_LIMIT = 200_000  # what the load requests too: a low-fee transaction cannot squeeze into the leftover
LOAD_OFF = {"load": {"fill": 0.0, "hot": []}}


@pytest.fixture(scope="module")
def congested():
    """Congestion on from the start (default scale: 6,250,000 CU blocks, 1,500,000 CU per account), no load yet."""
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, congestion=CongestionConfig(enabled=True))
    with ClusterThread(config) as running:
        yield running


@pytest.fixture
def admin(congested):
    with httpx.Client(base_url=congested.endpoints()["admin"], timeout=10) as client:
        yield client
        client.put("/congestion", json=LOAD_OFF)


@pytest.fixture
async def rpc(congested):
    async with AsyncClient(congested.endpoints()["rpc"], commitment=Confirmed) as client:
        yield client


def priced_transfer(payer: Keypair, to: Pubkey, price: int, blockhash, lamports: int = 1_000_000):
    instructions = [
        set_compute_unit_limit(CU_LIMIT),
        set_compute_unit_price(price),
        transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports)),
    ]
    return sign(payer, instructions, blockhash)


async def status_of(rpc: AsyncClient, tx):
    return (await rpc.get_signature_statuses([tx.signatures[0]])).value[0]


async def load_running(rpc: AsyncClient, admin: httpx.Client, load: dict) -> dict:
    """Turn the load on and wait until a few of its blocks are behind us; answers the admin view."""
    assert admin.put("/congestion", json={"load": {**LOAD_FEES, "seed": 7, **load}}).status_code == 200
    await wait_slots(rpc, 4)
    return admin.get("/congestion").json()


async def test_low_fee_waits_behind_full_blocks_and_lands_once_the_load_stops(congested, rpc, admin):
    payer = funded_wallet(congested)
    view = await load_running(rpc, admin, {"fill": 1.0})  # the load alone fills every block
    assert view["limits"] == {"block_units": 6_250_000, "account_units": 1_500_000}
    assert view["slots"][-1]["fill"] > 0.9

    blockhash = await latest_blockhash(rpc)
    low = priced_transfer(payer, Keypair().pubkey(), 1, blockhash)
    high = priced_transfer(payer, Keypair().pubkey(), 10_000_000, blockhash)  # 5x the load's top price
    opts = TxOpts(skip_preflight=True)
    await rpc.send_raw_transaction(bytes(low), opts)
    await rpc.send_raw_transaction(bytes(high), opts)  # sent after the low one: priority, not arrival, decides

    high_status = await wait_status(rpc, high.signatures[0], "confirmed")
    await wait_slots(rpc, 8)
    assert await status_of(rpc, low) is None, "the low-fee transaction got into a block the load keeps full"
    waited = admin.get("/congestion").json()
    assert all(s["waited"] >= 1 for s in waited["slots"][-6:])  # something waits every slot: what does not fit

    admin.put("/congestion", json=LOAD_OFF)
    low_status = await wait_status(rpc, low.signatures[0], "confirmed")  # its blockhash is still valid: it lands
    assert low_status.slot > high_status.slot + 8


async def test_recent_prioritization_fees_follow_the_load_on_the_hot_account(congested, rpc, admin):
    hot = funded_wallet(congested, 1).pubkey()
    view = await load_running(rpc, admin, {"fill": 0.5, "hot": [str(hot)], "hot_share": 0.5})
    assert view["load"]["hot"] == [str(hot)]
    since = (await rpc.get_slot()).value
    await wait_slots(rpc, 4)

    fees = (await rpc.get_recent_prioritization_fees([hot])).value
    recent = [f for f in fees if f.slot > since]
    assert len(recent) >= 3
    # agave's meaning: per block, the lowest fee among transactions that write-locked the account
    # (at least the block's minimum); every one of those here is the load's.
    assert all(LOAD_FEES["fee_min"] <= f.prioritization_fee <= LOAD_FEES["fee_max"] for f in recent)


async def test_per_account_limit_holds_while_the_block_has_room(congested, rpc, admin):
    hot = funded_wallet(congested, 1).pubkey()
    payer = funded_wallet(congested)
    # Half a block of load; each hot account gets at most its per-account limit of it.
    view = await load_running(rpc, admin, {"fill": 0.5, "hot": [str(hot)], "hot_share": 1.0})
    limit = view["limits"]["account_units"]
    assert view["slots"][-1]["hottestAccount"] == {"account": str(hot), "cu": pytest.approx(limit, rel=0.2)}

    blockhash = await latest_blockhash(rpc)
    to_hot = priced_transfer(payer, hot, 1, blockhash)
    elsewhere = priced_transfer(payer, Keypair().pubkey(), 1, blockhash)
    opts = TxOpts(skip_preflight=True)
    await rpc.send_raw_transaction(bytes(to_hot), opts)
    await rpc.send_raw_transaction(bytes(elsewhere), opts)

    elsewhere_status = await wait_status(rpc, elsewhere.signatures[0], "confirmed")  # the block had room
    await wait_slots(rpc, 6)
    assert await status_of(rpc, to_hot) is None, "the hot account took more than its per-account limit"
    view = admin.get("/congestion").json()
    assert all(s["hottestAccount"]["cu"] <= limit for s in view["slots"] if s["hottestAccount"])
    assert all(s["fill"] < 0.7 for s in view["slots"][-6:])  # the block was never the limit

    admin.put("/congestion", json=LOAD_OFF)
    hot_status = await wait_status(rpc, to_hot.signatures[0], "confirmed")
    assert hot_status.slot > elsewhere_status.slot + 6


async def test_off_by_default_and_from_the_command_line(cluster):
    """The shared cluster (no option) keeps arrival order and no CU limit; --congestion turns it on."""
    with httpx.Client(base_url=cluster.endpoints()["admin"], timeout=10) as client:
        view = client.get("/congestion").json()
    assert view["enabled"] is False and view["slots"] == [] and view["load"]["fill"] == 0.0

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--congestion", '{"scale": 0.02, "load": {"fill": 0.8, "seed": 3}}'])
    config = config_from_args(args).congestion
    assert config.enabled and config.block_limit == 1_000_000 and config.account_limit == 240_000 and config.load.fill == 0.8
    assert config_from_args(parser.parse_args([])).congestion.enabled is False
    with pytest.raises(Exception, match="--congestion"):
        config_from_args(parser.parse_args(["--congestion", '{"load": {"fill": 2}}']))


def test_the_largest_transaction_fits_an_account_at_the_default_scale():
    """Any transaction fits an empty block on mainnet (a 1.4M-CU request is far below the 12M account limit):
    the scaled limits keep that, or a transaction that would land on mainnet would wait here for ever."""
    from solders.message import MessageV0
    from solders.transaction import VersionedTransaction

    from localnet.congestion import transaction_cost
    from localnet.ledger import MAX_COMPUTE_UNIT_LIMIT, writable_keys

    payer = Keypair()
    message = MessageV0.try_compile(
        payer.pubkey(),
        [set_compute_unit_limit(MAX_COMPUTE_UNIT_LIMIT)] + [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=1)) for _ in range(20)],
        [],
        Hash.default(),
    )
    largest = VersionedTransaction(message, [payer])
    cost = transaction_cost(largest, writable_keys(largest, lambda table: None))
    config = CongestionConfig(enabled=True)
    assert cost <= config.account_limit <= config.block_limit
