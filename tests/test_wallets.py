"""WalletPool against a real nats-server with JetStream: leases, health, round robin, two workers racing."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import statistics
import time
from collections import Counter
from types import SimpleNamespace

import nats
import pytest
from solders.keypair import Keypair

from executor.wallets import Lease, NoWalletAvailable, WalletPool
from devtools.services import NatsServer

TTL = 60_000
_buckets = itertools.count()


@pytest.fixture(scope="module")
async def nats_url(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats"), port=0)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


@pytest.fixture
async def connect(nats_url):
    """Opens NATS connections (one per simulated worker), all closed after the test."""
    connections = []

    async def open_connection():
        nc = await nats.connect(nats_url)
        connections.append(nc)
        return nc

    yield open_connection
    for nc in connections:
        await nc.close()


@pytest.fixture
def bucket():
    return f"wallet_leases_{next(_buckets)}"  # each test its own bucket: no state leaks between tests


def wallets(n: int) -> list[str]:
    return [str(Keypair().pubkey()) for _ in range(n)]


async def open_pool(connect, bucket, pool_wallets, **options) -> WalletPool:
    nc = await connect()
    return await WalletPool.open(nc.jetstream(), pool_wallets, bucket=bucket, **options)


def by_wallet(rows: list[dict]) -> dict[str, dict]:
    return {row["wallet"]: row for row in rows}


async def test_open_creates_bucket_and_entries(connect, bucket):
    w = wallets(2)
    pool = await open_pool(connect, bucket, w)
    entry = await pool.kv.get(f"wallet.{w[0]}")
    assert json.loads(entry.value) == {"balance": None, "balanceAtMs": 0, "errors": 0, "leases": {}}
    info = await pool.kv.status()
    assert info.history == 1
    rows = await pool.snapshot()
    assert rows == [
        {"wallet": wallet, "balance": None, "errors": 0, "inFlight": 0, "healthy": True, "reason": None} for wallet in w
    ]
    again = await open_pool(connect, bucket, w)  # a second worker binds the same bucket and entries
    assert (await again.snapshot()) == rows


async def test_round_robin_across_three_wallets(connect, bucket):
    w = wallets(3)
    pool = await open_pool(connect, bucket, w)
    leases = [await pool.acquire(f"plan-{i}", None, TTL) for i in range(6)]
    assert [lease.wallet for lease in leases] == w + w
    assert all(isinstance(lease, Lease) and lease.lease_id == f"plan-{i}" for i, lease in enumerate(leases))


async def test_in_flight_cap_then_no_wallet_with_reasons(connect, bucket):
    w = wallets(3)
    pool = await open_pool(connect, bucket, w)
    leases = [await pool.acquire(f"plan:{i}", None, TTL) for i in range(9)]
    assert Counter(lease.wallet for lease in leases) == {wallet: 3 for wallet in w}
    with pytest.raises(NoWalletAvailable) as error:
        await pool.acquire("plan:9", None, TTL)
    assert str(error.value) == "no healthy wallet: " + ", ".join(f"{wallet} in-flight 3/3" for wallet in w)

    await pool.release("plan:4", leases[4].wallet, "none")
    assert (await pool.acquire("plan:9", None, TTL)).wallet == leases[4].wallet


async def test_acquire_is_idempotent_per_lease_id(connect, bucket):
    w = wallets(2)
    pool = await open_pool(connect, bucket, w)
    first = await pool.acquire("plan-A:attempt", None, TTL)
    again = await pool.acquire("plan-A:attempt", None, TTL)
    assert again == first
    assert first.taken and not again.taken, "only the call that created the lease may give it back"
    assert by_wallet(await pool.snapshot())[first.wallet]["inFlight"] == 1

    # another worker (its own cache) re-running the same local activity after reading the entry
    other = await open_pool(connect, bucket, w)
    found = await other.acquire("plan-A:attempt", None, TTL)
    assert found == first and not found.taken
    assert sum(row["inFlight"] for row in await other.snapshot()) == 1


async def test_release_success_failure_and_unhealthy_after_five_failures(connect, bucket):
    w = wallets(2)
    pool = await open_pool(connect, bucket, w, max_in_flight=10)
    for i in range(4):
        lease = await pool.acquire(f"bad-{i}", w[0], TTL)
        await pool.release(lease.lease_id, lease.wallet, "failure")
    await pool.release("bad-3", w[0], "failure")  # a re-run release counts once
    assert by_wallet(await pool.snapshot())[w[0]]["errors"] == 4

    lease = await pool.acquire("good", w[0], TTL)
    await pool.release(lease.lease_id, w[0], "success")
    row = by_wallet(await pool.snapshot())[w[0]]
    assert (row["errors"], row["inFlight"]) == (0, 0)

    for i in range(5):
        lease = await pool.acquire(f"worse-{i}", w[0], TTL)
        await pool.release(lease.lease_id, w[0], "failure")
    row = by_wallet(await pool.snapshot())[w[0]]
    assert (row["errors"], row["healthy"], row["reason"]) == (5, False, "errors 5/5")
    assert {(await pool.acquire(f"next-{i}", None, TTL)).wallet for i in range(4)} == {w[1]}
    with pytest.raises(NoWalletAvailable, match="errors 5/5"):
        await pool.acquire("pinned-sick", w[0], TTL)

    await pool.release("already-gone", w[1], "none")  # unknown lease: fine, nothing changes
    await pool.release("next-0", w[1], "none")
    await pool.release("next-0", w[1], "none")
    assert by_wallet(await pool.snapshot())[w[1]]["inFlight"] == 3


async def test_low_balance_is_skipped_and_unknown_balance_is_healthy(connect, bucket):
    w = wallets(2)
    pool = await open_pool(connect, bucket, w)
    await pool.set_balance(w[0], 50_000_000)
    await pool.set_balance(w[1], 100_000_000)
    assert {(await pool.acquire(f"p{i}", None, TTL)).wallet for i in range(3)} == {w[1]}
    row = by_wallet(await pool.snapshot())[w[0]]
    assert (row["balance"], row["healthy"], row["reason"]) == (50_000_000, False, "balance 0.05 SOL < 0.1")

    with pytest.raises(NoWalletAvailable) as error:
        await pool.acquire("p3", None, TTL)
    assert str(error.value) == f"no healthy wallet: {w[0]} balance 0.05 SOL < 0.1, {w[1]} in-flight 3/3"


async def test_pinned_wallet(connect, bucket):
    w = wallets(3)
    pool = await open_pool(connect, bucket, w)
    assert [(await pool.acquire(f"pin-{i}", w[2], TTL)).wallet for i in range(3)] == [w[2]] * 3
    with pytest.raises(NoWalletAvailable) as error:
        await pool.acquire("pin-3", w[2], TTL)
    assert str(error.value) == f"pinned wallet {w[2]} unavailable: in-flight 3/3"
    assert (await pool.acquire("free", None, TTL)).wallet in w[:2]

    stranger = str(Keypair().pubkey())
    with pytest.raises(NoWalletAvailable) as error:
        await pool.acquire("pin-x", stranger, TTL)
    assert str(error.value) == f"wallet {stranger} is not in this worker's key store"


async def test_expired_leases_stop_counting(connect, bucket):
    w = wallets(1)
    pool = await open_pool(connect, bucket, w)
    for i in range(3):
        await pool.acquire(f"short-{i}", None, ttl_ms=80)
    with pytest.raises(NoWalletAvailable):
        await pool.acquire("blocked", None, TTL)
    await asyncio.sleep(0.12)
    assert (await pool.snapshot())[0]["inFlight"] == 0
    lease = await pool.acquire("after", None, TTL)
    stored = json.loads((await pool.kv.get(f"wallet.{w[0]}")).value)
    assert list(stored["leases"]) == ["after"]  # the expired ones were dropped by that write
    assert lease.expires_at_ms == stored["leases"]["after"]
    await pool.release("short-0", w[0], "failure")  # an expired, dropped lease: nothing to count
    assert (await pool.snapshot())[0]["errors"] == 0


async def test_stale_cache_sees_another_workers_release(connect, bucket):
    w = wallets(1)
    a = await open_pool(connect, bucket, w)
    b = await open_pool(connect, bucket, w)
    for i in range(3):
        await a.acquire(f"a{i}", None, TTL)
    with pytest.raises(NoWalletAvailable):
        await b.acquire("b0", None, TTL)  # b's cache now says full
    await a.release("a0", w[0], "none")
    assert (await b.acquire("b0", None, TTL)).wallet == w[0]


async def test_release_by_another_worker_with_a_stale_cache(connect, bucket):
    w = wallets(2)
    a = await open_pool(connect, bucket, w)
    b = await open_pool(connect, bucket, w)  # b read the entries before a's lease existed
    lease = await a.acquire("cross", w[1], TTL)
    await b.release("cross", lease.wallet, "failure")
    row = by_wallet(await a.snapshot())[w[1]]
    assert (row["inFlight"], row["errors"]) == (0, 1)

    only_first = await open_pool(connect, bucket, w[:1])  # a worker without w[1]'s key can still release it
    lease = await a.acquire("cross-2", w[1], TTL)
    await only_first.release("cross-2", w[1], "success")
    row = by_wallet(await a.snapshot())[w[1]]
    assert (row["inFlight"], row["errors"]) == (0, 0)
    stranger = str(Keypair().pubkey())
    await only_first.release("nope", stranger, "failure")  # no entry: nothing to release, none created
    assert f"wallet.{stranger}" not in await a.kv.keys()


async def test_two_workers_racing_never_exceed_the_cap(connect, bucket):
    w = wallets(2)
    first = await open_pool(connect, bucket, w)
    second = await open_pool(connect, bucket, w)

    async def attempt(pool: WalletPool, i: int) -> Lease | None:
        try:
            return await pool.acquire(f"race-{i}", None, TTL)
        except NoWalletAvailable:
            return None

    results = await asyncio.gather(*(attempt(first if i % 2 else second, i) for i in range(30)))
    won = [lease for lease in results if lease is not None]
    assert len(won) == 6
    assert Counter(lease.wallet for lease in won) == {w[0]: 3, w[1]: 3}
    assert [row["inFlight"] for row in await first.snapshot()] == [3, 3]
    stored = [json.loads((await first.kv.get(f"wallet.{wallet}")).value)["leases"] for wallet in w]
    assert sorted(itertools.chain(*stored)) == sorted(lease.lease_id for lease in won)


class FakeRpc:
    """Stands in for venue.rpc.SolanaRpc: only multiple_accounts, which refresh_balances calls."""

    def __init__(self, lamports: dict[str, int | None], failures: int = 0) -> None:
        self.lamports = lamports
        self.failures = failures
        self.calls = 0

    async def multiple_accounts(self, pubkeys, commitment):
        assert commitment == "confirmed"
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("rpc down")
        return [None if self.lamports[str(p)] is None else SimpleNamespace(lamports=self.lamports[str(p)]) for p in pubkeys]


async def test_refresh_balances(connect, bucket):
    w = wallets(3)
    pool = await open_pool(connect, bucket, w)
    rpc = FakeRpc({w[0]: 2_000_000_000, w[1]: 10_000, w[2]: None})
    assert await pool.refresh_balances(rpc) == {w[0]: 2_000_000_000, w[1]: 10_000, w[2]: 0}
    rows = by_wallet(await pool.snapshot())
    assert [rows[wallet]["balance"] for wallet in w] == [2_000_000_000, 10_000, 0]
    assert [rows[wallet]["healthy"] for wallet in w] == [True, False, False]
    assert {(await pool.acquire(f"r{i}", None, TTL)).wallet for i in range(3)} == {w[0]}


async def test_run_balance_refresh_survives_errors_and_cancels(connect, bucket, caplog):
    w = wallets(1)
    pool = await open_pool(connect, bucket, w)
    rpc = FakeRpc({w[0]: 5_000_000_000}, failures=2)
    with caplog.at_level(logging.WARNING, logger="hft.wallets"):
        task = asyncio.create_task(pool.run_balance_refresh(rpc, interval_s=0.01))
        deadline = time.monotonic() + 3
        while (await pool.snapshot())[0]["balance"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await pool.snapshot())[0]["balance"] == 5_000_000_000
    assert sum("event=balance_refresh_failed" in r.getMessage() for r in caplog.records) == 2


async def test_acquire_plus_release_latency(connect, bucket):
    w = wallets(3)
    pool = await open_pool(connect, bucket, w)
    samples = []
    for i in range(200):
        started = time.perf_counter()
        lease = await pool.acquire(f"lat-{i}", None, TTL)
        await pool.release(lease.lease_id, lease.wallet, "success")
        samples.append((time.perf_counter() - started) * 1000)
    median = statistics.median(samples)
    logging.getLogger("hft.wallets").info("acquire+release median_ms=%.3f p99_ms=%.3f", median, sorted(samples)[197])
    assert median < 5.0  # docs/architecture.md section 6: wallet selection < 5 ms
