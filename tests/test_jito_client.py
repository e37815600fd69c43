"""venue.jito.JitoClient against the local cluster's block engine: real HTTP, no mocks."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from venue.jito import (
    STATIC_TIP_ACCOUNTS,
    BundleStatus,
    InflightStatus,
    JitoAnswerUnclear,
    JitoClient,
    JitoError,
    JitoInvalidRequest,
    JitoRateLimited,
    JitoUnavailable,
    bundle_id,
)
from executor.submit import Submitter
from tests.http_endpoint import http_endpoint
from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.intake import derive_bundle_id

SOL = 1_000_000_000
SLOT_MS = 50
NO_FAULTS = {"bundle": {"drop": 0, "delay_ms": 0, "rate_limit": 0, "reject": 0}}


@pytest.fixture(scope="module")
def cluster():
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS)) as running:
        yield running


@pytest.fixture
async def jito(cluster):
    async with JitoClient(cluster.endpoints()["blockEngine"], timeout_s=2.0) as client:
        yield client


@pytest.fixture
async def faults(cluster):
    """Set block-engine faults through the admin endpoint; reset after the test."""
    url = cluster.endpoints()["admin"] + "/faults"
    async with aiohttp.ClientSession() as http:

        async def put(plan: dict) -> None:
            async with http.put(url, json=plan) as response:
                assert response.status == 200, await response.text()

        yield put
        await put(NO_FAULTS)


def funded(cluster, sol: float = 10) -> Keypair:
    wallet = Keypair()
    cluster.call(lambda c: c.fund(wallet.pubkey(), int(sol * SOL)))
    return wallet


def blockhash(cluster) -> Hash:
    return cluster.call(lambda c: c.ledger.latest_blockhash[0])


def sign(payer: Keypair, instructions: list[Instruction], recent: Hash) -> VersionedTransaction:
    return VersionedTransaction(MessageV0.try_compile(payer.pubkey(), instructions, [], recent), [payer])


def pay(payer: Keypair, to: Pubkey, lamports: int):
    return transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports))


def tipped(payer: Keypair, recent: Hash, tip: int = 5000, amount: int = 1_000_000, to: Pubkey | None = None) -> VersionedTransaction:
    tip_account = Pubkey.from_string(TIP_ACCOUNTS[tip % len(TIP_ACCOUNTS)])
    return sign(payer, [pay(payer, to or Keypair().pubkey(), amount), pay(payer, tip_account, tip)], recent)


async def wait_landed(jito: JitoClient, ids: list[str], timeout: float = 5.0) -> list[InflightStatus]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = await jito.inflight_statuses(ids)
        if all(s.status in ("Landed", "Failed", "Invalid") for s in statuses) or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(SLOT_MS / 1000)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bundle_id_is_jitos_derive_bundle_id():
    payer, recent = Keypair(), Hash.new_unique()
    txs = [tipped(payer, recent, tip=1000 + i) for i in range(3)]
    expected = hashlib.sha256(",".join(str(tx.signatures[0]) for tx in txs).encode()).hexdigest()
    assert bundle_id(txs) == bundle_id([bytes(tx) for tx in txs]) == derive_bundle_id(txs) == expected
    unsigned = VersionedTransaction.populate(txs[0].message, [Signature.default()])
    with pytest.raises(ValueError, match="not signed"):
        bundle_id([bytes(unsigned)])
    with pytest.raises(ValueError, match="no signatures"):
        bundle_id([bytes(VersionedTransaction.default())])


async def test_one_transaction_bundle_lands_on_one_kept_alive_connection(cluster, jito):
    payer = funded(cluster)
    assert await jito.tip_accounts() == TIP_ACCOUNTS
    tx = tipped(payer, blockhash(cluster))
    sent = await jito.send_bundle([bytes(tx)])
    assert sent == bundle_id([tx]) == hashlib.sha256(str(tx.signatures[0]).encode()).hexdigest()
    [inflight] = await wait_landed(jito, [sent])
    assert inflight.status == "Landed" and inflight.landed_slot > 0, inflight
    [status] = await jito.bundle_statuses([sent])
    assert status == BundleStatus(sent, inflight.landed_slot, status.confirmation_status, None, [str(tx.signatures[0])])
    assert status.confirmation_status in ("processed", "confirmed", "finalized")
    # Every request went over the one connection opened by the first.
    assert jito.stats["connections_created"] == 1
    assert jito.stats["connections_reused"] == jito.stats["requests"] - 1 >= 3


async def test_two_transaction_bundle_lands_and_confirms(cluster, jito):
    payer, to = funded(cluster), Keypair()
    recent = blockhash(cluster)
    first = sign(payer, [pay(payer, to.pubkey(), SOL)], recent)
    second = tipped(payer, recent, tip=2000, amount=SOL, to=to.pubkey())
    sent = await jito.send_bundle([bytes(first), bytes(second)])
    assert sent == bundle_id([first, second])
    [inflight] = await wait_landed(jito, [sent])
    assert inflight.status == "Landed", inflight
    deadline = time.monotonic() + 3
    while (status := (await jito.bundle_statuses([sent]))[0]) is None or status.confirmation_status == "processed":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(SLOT_MS / 1000)
    assert status.err is None and status.slot == inflight.landed_slot
    assert status.confirmation_status in ("confirmed", "finalized")
    assert status.transactions == [str(first.signatures[0]), str(second.signatures[0])]
    balance = cluster.call(lambda c: c.ledger.svm.get_balance(to.pubkey()))
    assert balance == 2 * SOL


async def test_send_transaction_bundle_only_returns_the_header_bundle_id(cluster, jito):
    payer = funded(cluster)
    recent = blockhash(cluster)
    tx = tipped(payer, recent, tip=3000)
    signature, header_id = await jito.send_transaction(bytes(tx), bundle_only=True)
    assert signature == str(tx.signatures[0])
    assert header_id == bundle_id([tx])
    assert (await wait_landed(jito, [header_id]))[0].status == "Landed"
    plain = sign(payer, [pay(payer, Keypair().pubkey(), 5000)], recent)
    assert await jito.send_transaction(bytes(plain)) == (str(plain.signatures[0]), None)


async def test_statuses_are_asked_five_ids_at_a_time(cluster, jito):
    ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(12)]
    before = jito.stats["requests"]
    assert await jito.bundle_statuses(ids) == [None] * 12
    assert [s.status for s in await jito.inflight_statuses(ids)] == ["Invalid"] * 12
    assert [s.bundle_id for s in await jito.inflight_statuses(ids)] == ids
    assert jito.stats["requests"] - before == 3 * 3
    assert await jito.bundle_statuses([]) == []
    with pytest.raises(ValueError, match="not a bundle id"):
        await jito.bundle_statuses(["not-hex"])


async def test_rate_limit_raises_jito_rate_limited(cluster, jito, faults):
    payer = funded(cluster)
    tx = tipped(payer, blockhash(cluster))
    await faults({"bundle": {"rate_limit": 1.0}})
    with pytest.raises(JitoRateLimited) as raised:
        await jito.send_bundle([bytes(tx)])
    assert raised.value.code == -32097 and "Rate limit" in raised.value.message
    assert raised.value.http_status == 429 and raised.value.retry_after_s is None
    with pytest.raises(JitoRateLimited):
        await jito.inflight_statuses([bundle_id([tx])])
    await faults(NO_FAULTS)
    # Nothing was accepted while limited: the same bytes are new to the engine.
    assert (await jito.inflight_statuses([bundle_id([tx])]))[0].status == "Invalid"


async def test_engine_refusals_raise_jito_error_with_the_engines_message(cluster, jito):
    payer = funded(cluster)
    recent = blockhash(cluster)
    untipped = sign(payer, [pay(payer, Keypair().pubkey(), SOL)], recent)
    with pytest.raises(JitoError) as raised:
        await jito.send_bundle([bytes(untipped)])
    assert type(raised.value) is JitoError and raised.value.code == -32602
    assert "Bundles must write lock at least one tip account" in raised.value.message
    stingy = sign(payer, [pay(payer, Pubkey.from_string(TIP_ACCOUNTS[0]), 999)], recent)
    with pytest.raises(JitoError, match="minimum of 1000"):
        await jito.send_bundle([bytes(stingy)])


async def test_bundle_size_is_checked_before_anything_is_sent(cluster, jito):
    payer, recent = Keypair(), Hash.new_unique()
    six = [bytes(tipped(payer, recent, tip=1000 + i)) for i in range(6)]
    with pytest.raises(JitoInvalidRequest, match="1 to 5 transactions, got 6") as raised:
        await jito.send_bundle(six)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, JitoError) and raised.value.code is None
    with pytest.raises(JitoInvalidRequest, match="got 0"):
        await jito.send_bundle([])
    with pytest.raises(ValueError, match="same transaction twice"):
        await jito.send_bundle([six[0], six[0]])
    with pytest.raises(ValueError, match="packet limit"):
        await jito.send_bundle([bytes(1300)])
    with pytest.raises(TypeError):
        await jito.send_bundle(six[0])
    assert jito.stats["requests"] == 0


async def test_tip_accounts_fall_back_to_the_static_list_when_unreachable(caplog):
    caplog.set_level(logging.WARNING, logger="venue.jito")
    async with JitoClient(f"http://127.0.0.1:{closed_port()}", timeout_s=0.5, tip_retry_s=0) as jito:
        assert await jito.tip_accounts() == list(STATIC_TIP_ACCOUNTS) == TIP_ACCOUNTS
        assert await jito.random_tip_account() in STATIC_TIP_ACCOUNTS
        assert jito.stats["requests"] == 2  # retried after tip_retry_s, failed again
        with pytest.raises(JitoUnavailable):
            await jito.send_bundle([bytes(tipped(Keypair(), Hash.new_unique()))])
    warnings = [r for r in caplog.records if "getTipAccounts failed" in r.getMessage()]
    assert len(warnings) == 1


async def test_tip_accounts_are_cached(cluster, jito):
    assert await jito.tip_accounts() == TIP_ACCOUNTS
    for _ in range(5):
        assert await jito.random_tip_account() in TIP_ACCOUNTS
    assert jito.stats["requests"] == 1


async def test_a_slow_engine_raises_jito_unavailable(cluster, faults):
    await faults({"bundle": {"delay_ms": 500}})
    async with JitoClient(cluster.endpoints()["blockEngine"], timeout_s=0.1) as jito:
        started = time.monotonic()
        with pytest.raises(JitoUnavailable, match="within 0.1 s"):
            await jito.bundle_statuses([hashlib.sha256(b"x").hexdigest()])
        assert time.monotonic() - started < 0.4


async def test_a_non_jito_answer_is_unclear_not_a_refusal(cluster):
    # The Solana RPC server has no /api/v1 paths: a 404 with a non-JSON body. Not the engine's own
    # JSON-RPC error, so not a definite refusal: whatever was sent may be in flight (issue 20).
    async with JitoClient(cluster.endpoints()["rpc"]) as jito:
        with pytest.raises(JitoAnswerUnclear, match="HTTP 404") as raised:
            await jito.inflight_statuses([hashlib.sha256(b"x").hexdigest()])
        assert raised.value.http_status == 404 and isinstance(raised.value, JitoUnavailable)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda request_id, bundle: {"jsonrpc": "2.0", "id": request_id + 1, "result": bundle}, id="another id"),
        pytest.param(lambda request_id, bundle: {"jsonrpc": "2.0", "id": request_id, "result": "f" * 64}, id="another bundle id"),
        pytest.param(lambda request_id, bundle: "<html>ok</html>", id="a 200 that is not JSON"),
    ],
)
async def test_an_unclear_answer_to_send_bundle_leaves_the_bundle_in_flight(answer):
    """Before issue 20 each of these raised a plain JitoError, which the submitter turned into
    SUBMIT_REJECTED ("nothing sent", the record voided) while the bundle could land."""
    tx = tipped(Keypair(), Hash.new_unique())

    async def engine(request: web.Request) -> web.Response:
        body = await request.json()
        made = answer(body["id"], bundle_id([tx]))
        return web.json_response(made) if isinstance(made, dict) else web.Response(text=made)

    async with http_endpoint("/api/v1/bundles", engine) as url, JitoClient(url) as jito:
        with pytest.raises(JitoAnswerUnclear) as raised:
            await jito.send_bundle([bytes(tx)])
        assert isinstance(raised.value, JitoUnavailable)
        submitter = Submitter(rpc=None, jito=jito, halted=lambda: None)
        with pytest.raises(JitoUnavailable):  # not an ApplicationError: dispatch follows the signature on chain
            await submitter.send("jito_bundle", bytes(tx))


async def test_uuid_is_sent_in_x_jito_auth_on_a_callers_session(cluster):
    seen: list[str | None] = []

    async def on_request_start(session, context, params):
        seen.append(params.headers.get("x-jito-auth"))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    payer = funded(cluster)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        jito = JitoClient(cluster.endpoints()["blockEngine"] + "/api/v1/", uuid="0b7a3f9e-uuid", session=session)
        sent = await jito.send_bundle([bytes(tipped(payer, blockhash(cluster)))])
        assert (await wait_landed(jito, [sent]))[0].status == "Landed"
        await jito.close()
        assert not session.closed  # a caller's session is the caller's to close
    assert seen and all(value == "0b7a3f9e-uuid" for value in seen)
