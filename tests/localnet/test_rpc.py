"""Solana JSON-RPC and PubSub fidelity: solana-py's AsyncClient (strict solders parsing) works unchanged."""
from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from solana.rpc.commitment import Confirmed, Finalized, Processed
from solana.rpc.core import RPCException
from solana.rpc.models import TokenAccountOpts, TxOpts
from solana.rpc.websocket_api import SolanaWsClient
from solders.keypair import Keypair
from solders.rpc.responses import GetTransactionResp, SignatureNotification, SlotNotification
from solders.token.associated import get_associated_token_address
from solders.transaction_status import TransactionErrorInstructionError

from localnet.fixtures import create_swap_pool

from .conftest import SOL, funded_wallet, latest_blockhash, sign, transfer_tx, wait_slots, wait_status

SKIP_PREFLIGHT = TxOpts(skip_preflight=True)


async def test_transfer_lands_and_commitment_deepens(cluster, rpc):
    payer, to = funded_wallet(cluster), Keypair()
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    signature = (await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)).value
    assert signature == tx.signatures[0]
    processed = await wait_status(rpc, signature, "processed")
    assert processed.err is None
    confirmed = await wait_status(rpc, signature, "confirmed")
    assert confirmed.slot == processed.slot
    await wait_status(rpc, signature, "finalized")
    assert (await rpc.get_balance(to.pubkey(), commitment=Finalized)).value == SOL


async def test_execution_waits_for_the_next_slot(cluster, http):
    """sendTransaction only queues: in the same batch, the status right after is still unknown."""
    payer, to = funded_wallet(cluster), Keypair()
    url = cluster.endpoints()["rpc"]
    blockhash = (await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash"})).json()["result"]["value"]["blockhash"]
    from solders.hash import Hash

    tx = transfer_tx(payer, to.pubkey(), 1000, Hash.from_string(blockhash))
    wire = base64.b64encode(bytes(tx)).decode()
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [wire, {"encoding": "base64", "skipPreflight": True}]},
        {"jsonrpc": "2.0", "id": 2, "method": "getSignatureStatuses", "params": [[str(tx.signatures[0])]]},
    ]
    answers = (await http.post(url, json=batch)).json()
    assert answers[0]["result"] == str(tx.signatures[0])
    assert answers[1]["result"]["value"] == [None]


async def test_transaction_details_match_the_transfer(cluster, rpc):
    payer, to = funded_wallet(cluster, 5), Keypair()
    tx = transfer_tx(payer, to.pubkey(), 2 * SOL, await latest_blockhash(rpc))
    signature = (await rpc.send_transaction(tx)).value  # with preflight
    await wait_status(rpc, signature, "confirmed")
    answer = await rpc.get_transaction(signature, max_supported_transaction_version=0)
    assert isinstance(answer, GetTransactionResp)
    meta = answer.value.transaction.meta
    assert meta.err is None and meta.fee == 5000
    assert meta.pre_balances[:2] == [5 * SOL, 0]
    assert meta.post_balances[:2] == [5 * SOL - 2 * SOL - 5000, 2 * SOL]
    assert meta.compute_units_consumed > 0 and any("success" in line for line in meta.log_messages)
    assert answer.value.slot == (await rpc.get_signature_statuses([signature])).value[0].slot
    # A v0 transaction needs maxSupportedTransactionVersion, as on a real node.
    with pytest.raises(RPCException, match="maxSupportedTransactionVersion"):
        await rpc.get_transaction(signature)


async def test_blockhash_expires_after_150_blocks():
    """A fast cluster of its own, so 150 blocks pass in about two seconds."""
    from solana.rpc.async_api import AsyncClient

    from localnet.cluster import ClusterConfig, ClusterThread

    with ClusterThread(ClusterConfig.auto_ports(slot_ms=10)) as fast:
        async with AsyncClient(fast.endpoints()["rpc"], commitment=Processed) as rpc:
            payer, to = funded_wallet(fast), Keypair()
            latest = (await rpc.get_latest_blockhash()).value
            height = (await rpc.get_block_height()).value
            assert 0 <= height - (latest.last_valid_block_height - 150) <= 2  # a block or two may pass between calls
            assert height != (await rpc.get_slot()).value  # block height and slot are different numbers
            while (await rpc.get_block_height()).value <= latest.last_valid_block_height:
                await asyncio.sleep(0.05)
            valid = httpx.post(fast.endpoints()["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "isBlockhashValid", "params": [str(latest.blockhash)]})
            assert valid.json()["result"]["value"] is False
            stale = transfer_tx(payer, to.pubkey(), 1000, latest.blockhash)
            with pytest.raises(RPCException, match="Blockhash not found"):
                await rpc.send_transaction(stale)
            # Without preflight the node takes it and the leader drops it: it never lands.
            assert (await rpc.send_transaction(stale, opts=SKIP_PREFLIGHT)).value == stale.signatures[0]
            await asyncio.sleep(0.3)
            assert (await rpc.get_signature_statuses([stale.signatures[0]])).value == [None]
            assert (await rpc.get_balance(to.pubkey())).value == 0


async def test_a_signature_is_processed_once(cluster, rpc):
    payer, to = funded_wallet(cluster), Keypair()
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    for _ in range(3):  # rebroadcast before and after it lands
        await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)
    await wait_status(rpc, tx.signatures[0], "confirmed")
    assert (await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)).value == tx.signatures[0]
    with pytest.raises(RPCException, match="already been processed"):
        await rpc.send_transaction(tx)
    await wait_slots(rpc, 3)
    assert (await rpc.get_balance(to.pubkey())).value == SOL


async def test_preflight_failure_carries_simulation_logs(cluster, rpc):
    payer, to = funded_wallet(cluster, 1), Keypair()
    tx = transfer_tx(payer, to.pubkey(), 5 * SOL, await latest_blockhash(rpc))
    with pytest.raises(RPCException) as failure:
        await rpc.send_transaction(tx)
    preflight = failure.value.args[0]
    assert "custom program error: 0x1" in preflight.message
    assert preflight.data.logs and isinstance(preflight.data.err, TransactionErrorInstructionError)


async def test_swap_moves_tokens_and_an_oversized_swap_fails_on_chain(cluster, rpc):
    wallet = funded_wallet(cluster)
    pool = cluster.call(lambda c: create_swap_pool(c.ledger, [wallet.pubkey()], wallet_balance=1_000_000, liquidity=5_000_000))
    ata_in = get_associated_token_address(wallet.pubkey(), pool.mint_in)
    ata_out = get_associated_token_address(wallet.pubkey(), pool.mint_out)
    swap = sign(wallet, pool.swap_instructions(wallet.pubkey(), 400_000, 420_000), await latest_blockhash(rpc))
    await rpc.send_transaction(swap, opts=SKIP_PREFLIGHT)
    await wait_status(rpc, swap.signatures[0], "confirmed")
    assert (await rpc.get_token_account_balance(ata_in)).value.amount == "600000"
    assert (await rpc.get_token_account_balance(ata_out)).value.amount == "420000"
    details = (await rpc.get_transaction(swap.signatures[0], max_supported_transaction_version=0)).value.transaction.meta
    post = {str(b.mint): b.ui_token_amount.amount for b in details.post_token_balances if b.owner == wallet.pubkey()}
    pre = {str(b.mint): b.ui_token_amount.amount for b in details.pre_token_balances if b.owner == wallet.pubkey()}
    assert pre == {str(pool.mint_in): "1000000", str(pool.mint_out): "0"}
    assert post == {str(pool.mint_in): "600000", str(pool.mint_out): "420000"}
    owned = await rpc.get_token_accounts_by_owner(wallet.pubkey(), TokenAccountOpts(mint=pool.mint_out))
    assert [a.pubkey for a in owned.value] == [ata_out]

    too_big = sign(wallet, pool.swap_instructions(wallet.pubkey(), 700_000, 1), await latest_blockhash(rpc))
    await rpc.send_transaction(too_big, opts=SKIP_PREFLIGHT)
    status = await wait_status(rpc, too_big.signatures[0], "confirmed")
    assert isinstance(status.err, TransactionErrorInstructionError)  # landed with an error: fee paid, no tokens moved
    assert (await rpc.get_token_account_balance(ata_in)).value.amount == "600000"


async def test_cluster_metadata_parses(cluster, rpc):
    nodes = (await rpc.get_cluster_nodes()).value
    assert len(nodes) == 2 and all(n.tpu_quic for n in nodes)
    slot = (await rpc.get_slot(Processed)).value
    leaders = (await rpc.get_slot_leaders(slot, 12)).value
    assert {str(n.pubkey) for n in nodes} == {str(p) for p in leaders}
    for offset, leader in enumerate(leaders):  # two leaders, alternating every 4 slots
        same_window_parity = ((slot + offset) // 4 - slot // 4) % 2 == 0
        assert (leader == leaders[0]) == same_window_parity
    assert (await rpc.get_version()).value.solana_core
    epoch = (await rpc.get_epoch_info(Processed)).value
    assert epoch.absolute_slot >= slot and epoch.block_height < epoch.absolute_slot
    assert (await rpc.get_genesis_hash()).value
    assert (await rpc.get_minimum_balance_for_rent_exemption(165)).value > 0
    fees = (await rpc.get_recent_prioritization_fees([])).value
    assert fees and all(f.slot > 0 for f in fees)


async def test_fee_for_message(cluster, rpc):
    from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
    from solders.system_program import TransferParams, transfer

    payer = funded_wallet(cluster)
    blockhash = await latest_blockhash(rpc)
    instructions = [set_compute_unit_limit(100_000), set_compute_unit_price(50_000), transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=1))]
    tx = sign(payer, instructions, blockhash)
    fee = (await rpc.get_fee_for_message(tx.message)).value
    assert fee == 5000 + 100_000 * 50_000 // 1_000_000
    await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)
    await wait_status(rpc, tx.signatures[0], "confirmed")
    landed = (await rpc.get_transaction(tx.signatures[0], max_supported_transaction_version=0)).value.transaction.meta
    assert landed.fee == fee


async def test_websocket_slot_and_signature_notifications(cluster, rpc):
    payer, to = funded_wallet(cluster), Keypair()
    async with SolanaWsClient(cluster.endpoints()["ws"]) as ws:
        slots = await ws.slot_subscribe()
        notification = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(notification, SlotNotification) and notification.result.slot > 0
        await ws.unsubscribe(slots)
        tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
        await ws.signature_subscribe(signature=tx.signatures[0], commitment=Confirmed)
        await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)
        while not isinstance(message := await asyncio.wait_for(ws.recv(), 5), SignatureNotification):
            pass  # slot notifications already queued before the unsubscribe
        assert message.result.value.err is None
    status = (await rpc.get_signature_statuses([tx.signatures[0]])).value[0]
    assert status is not None and status.confirmation_status is not None


async def test_malformed_requests_get_jsonrpc_errors(cluster, http):
    url = cluster.endpoints()["rpc"]
    garbage = {"jsonrpc": "2.0", "id": 7, "method": "sendTransaction", "params": ["AAAA", {"encoding": "base64"}]}
    answer = (await http.post(url, json=garbage)).json()
    assert answer["id"] == 7 and answer["error"]["code"] == -32602
    assert (await http.post(url, content=b"{not json")).json()["error"]["code"] == -32700
    assert (await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "noSuchMethod"})).json()["error"]["code"] == -32601
    too_big = base64.b64encode(b"\x01" * 1300).decode()
    answer = (await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [too_big, {"encoding": "base64"}]})).json()
    assert "too large" in answer["error"]["message"]
    many = {"jsonrpc": "2.0", "id": 1, "method": "getSignatureStatuses", "params": [[str(Keypair().pubkey())] * 257]}
    assert (await http.post(url, json=many)).json()["error"]["code"] == -32602
