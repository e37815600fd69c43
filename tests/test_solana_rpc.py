"""venue.rpc.SolanaRpc, the product's one JSON-RPC client: its reads against solana-py's AsyncClient
(which parses every answer with solders) on the local cluster, and its one retry for reads."""
from __future__ import annotations

import asyncio
import json

import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.account import Account
from solders.hash import Hash
from solders.keypair import Keypair

from localnet.cluster import ClusterConfig, ClusterThread
from venue.klend import KLEND_PROGRAM_ID
from venue.rpc import RpcError, RpcUnavailable, SolanaRpc

SOL = 1_000_000_000


@pytest.fixture(scope="module")
def cluster():
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=40, validators=3)) as running:
        yield running


@pytest.fixture
async def clients(cluster):
    url = cluster.endpoints()["rpc"]
    ours = SolanaRpc(url, timeout_s=10.0, transport_retries=1)
    async with AsyncClient(url, commitment=Confirmed) as theirs:
        try:
            yield ours, theirs
        finally:
            await ours.close()


async def test_accounts_read_as_solana_py_reads_them(cluster, clients):
    rpc, reference = clients
    wallet, holder, missing = Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey()
    cluster.call(lambda c: c.fund(wallet, 3 * SOL))
    stored = Account(lamports=SOL // 10, data=bytes(range(256)) * 3, owner=KLEND_PROGRAM_ID, executable=False, rent_epoch=2**64 - 1)
    cluster.call(lambda c: c.ledger.svm.set_account(holder, stored))

    ours = await rpc.multiple_accounts([wallet, holder, missing], "confirmed")
    theirs = (await reference.get_multiple_accounts([wallet, holder, missing], Confirmed)).value
    assert ours == list(theirs)
    assert ours[0].lamports == 3 * SOL and ours[1] == stored and ours[2] is None
    assert await rpc.account_info(holder, "confirmed") == (await reference.get_account_info(holder, Confirmed, encoding="base64")).value == stored
    assert await rpc.account_info(missing, "confirmed") is None


async def test_blockhash_slot_leaders_and_nodes_as_solana_py_reads_them(cluster, clients):
    rpc, reference = clients
    blockhash, last_valid = await rpc.latest_blockhash("confirmed")
    theirs = (await reference.get_latest_blockhash(Confirmed)).value
    assert isinstance(blockhash, Hash) and blockhash != Hash.default()
    assert 0 <= theirs.last_valid_block_height - last_valid < 50  # a few slots apart at most

    slot = await rpc.slot("processed")
    assert slot > 0
    leaders = await rpc.slot_leaders(slot, 16)
    assert leaders == [str(p) for p in (await reference.get_slot_leaders(slot, 16)).value]
    assert leaders == cluster.call(lambda c: [str(c.leader_for(s)) for s in range(slot, slot + 16)])

    nodes = await rpc.cluster_nodes()
    theirs = (await reference.get_cluster_nodes()).value
    assert [(n.pubkey, n.tpu, n.tpu_quic) for n in nodes] == [(str(n.pubkey), n.tpu, n.tpu_quic) for n in theirs]
    assert all(n.tpu_quic for n in nodes)


class DroppingNode:
    """A node that closes the first `drops` connections without a word, then answers every call with 42."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                if self.requests <= self.drops:
                    return
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": 42}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_read_is_tried_again_once_when_no_answer_came_and_a_send_never():
    async with DroppingNode(drops=1) as url:
        reads = SolanaRpc(url, transport_retries=1)
        try:
            assert await reads.slot("processed") == 42
        finally:
            await reads.close()
    async with DroppingNode(drops=2) as url:
        reads = SolanaRpc(url, transport_retries=1)
        try:
            with pytest.raises(RpcUnavailable):
                await reads.slot("processed")
        finally:
            await reads.close()
    node = DroppingNode(drops=1)
    async with node as url:
        hot = SolanaRpc(url)
        try:
            with pytest.raises(RpcError):  # RpcUnavailable: it may have arrived; the caller follows the chain
                await hot.send_transaction(b"\x00" * 64)
        finally:
            await hot.close()
    assert node.requests == 1
