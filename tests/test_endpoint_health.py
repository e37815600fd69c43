"""Endpoint health (issue 23, item 3; venue/health.py): a circuit breaker whose steps are one table, a
token bucket that spreads a burst, EWMA latency, and a board that ranks endpoints. Unit tests on a
fake clock, plus the real venue/jito.py JitoClient against a local cluster with two regions, one down."""
from __future__ import annotations

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from localnet.blockengine import TIP_ACCOUNTS
from localnet.cluster import ClusterConfig, ClusterThread
from localnet.regions import RegionSettings
from settings import load
from settings.executor import EndpointHealthSettings, JitoSettings
from venue.health import (
    Breaker,
    BreakerState,
    BreakerStep,
    EndpointUnavailable,
    HealthBoard,
    IllegalBreakerStep,
    Outcome,
    TokenBucket,
    outcome_of,
)
from venue.jito import JitoAnswerUnclear, JitoClient, JitoError, JitoRateLimited, JitoUnavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)


B = BreakerState

# Every allowed step, as the module's docstring draws it; anything else must raise.
ALLOWED = {
    (B.CLOSED, BreakerStep.TRIPPED): B.OPEN,
    (B.OPEN, BreakerStep.COOLED): B.HALF_OPEN,
    (B.HALF_OPEN, BreakerStep.PROBE_SUCCEEDED): B.CLOSED,
    (B.HALF_OPEN, BreakerStep.PROBE_FAILED): B.OPEN,
}


@pytest.mark.parametrize("state", list(B))
@pytest.mark.parametrize("step", list(BreakerStep))
def test_every_breaker_step_is_the_tables_or_raises(state, step):
    expected = ALLOWED.get((state, step))
    if expected is None:
        with pytest.raises(IllegalBreakerStep):
            state.then(step)
    else:
        assert state.then(step) is expected


# --- the breaker, driven by outcomes on a fake clock ----------------------------------------------


def breaker_in(state: BreakerState, clock: FakeClock) -> Breaker:
    breaker = Breaker(failures=5, open_s=60.0, clock=clock)
    if state is not B.CLOSED:
        for _ in range(5):
            breaker.failed()
        if state is B.HALF_OPEN:
            clock.advance(60.0)
    assert breaker.state is state
    return breaker


# (state, event) -> state after; events: one success, one failure, the open time passing.
EVENTS = {
    (B.CLOSED, "success"): B.CLOSED,
    (B.CLOSED, "failure"): B.CLOSED,  # one failure of five
    (B.CLOSED, "open time"): B.CLOSED,
    (B.OPEN, "success"): B.OPEN,  # a late answer to a request sent before it opened: the probe decides
    (B.OPEN, "failure"): B.OPEN,
    (B.OPEN, "open time"): B.HALF_OPEN,
    (B.HALF_OPEN, "success"): B.CLOSED,  # the probe's success closes it
    (B.HALF_OPEN, "failure"): B.OPEN,  # the probe's failure reopens it
    (B.HALF_OPEN, "open time"): B.HALF_OPEN,
}


@pytest.mark.parametrize("state, event", list(EVENTS))
def test_every_state_and_event(state, event):
    clock = FakeClock()
    breaker = breaker_in(state, clock)
    if event == "success":
        breaker.succeeded()
    elif event == "failure":
        breaker.failed()
    else:
        clock.advance(60.0)
    assert breaker.state is EVENTS[(state, event)]


def test_it_opens_at_the_nth_consecutive_failure_only():
    clock = FakeClock()
    breaker = Breaker(failures=5, open_s=60.0, clock=clock)
    for _ in range(4):
        breaker.failed()
    breaker.succeeded()  # not consecutive: the count starts again
    for _ in range(4):
        breaker.failed()
    assert breaker.state is B.CLOSED and breaker.allow()
    breaker.failed()
    assert breaker.state is B.OPEN and not breaker.allow()
    clock.advance(59.9)
    assert breaker.state is B.OPEN and not breaker.allow()


def test_half_open_lets_one_probe_through_and_a_failed_probe_waits_a_full_open_time():
    clock = FakeClock()
    breaker = breaker_in(B.HALF_OPEN, clock)
    assert breaker.allow()  # the probe
    assert not breaker.allow() and not breaker.may_try()  # one at a time
    breaker.failed()
    assert breaker.state is B.OPEN
    clock.advance(59.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is B.CLOSED and breaker.allow() and breaker.allow()


def test_a_probe_that_never_reports_frees_its_place_after_an_open_time():
    clock = FakeClock()
    breaker = breaker_in(B.HALF_OPEN, clock)
    assert breaker.allow()
    clock.advance(30.0)
    assert not breaker.allow()
    clock.advance(30.0)
    assert breaker.allow()


def test_peek_says_what_state_says_and_steps_nothing():
    """The metrics scrape reads breakers from its own thread (worker/metrics.py): `peek` must not
    take the cooling step nor free a probe."""
    clock = FakeClock()
    for state in B:
        assert breaker_in(state, clock).peek() is state
    breaker = breaker_in(B.OPEN, clock)
    clock.advance(60.0)
    assert breaker.peek() is B.HALF_OPEN and breaker._state is B.OPEN, "peek took the cooling step"
    assert breaker.state is B.HALF_OPEN  # as `state` says, stepping
    assert breaker.allow()  # the probe
    assert breaker.peek() is B.HALF_OPEN and not breaker.may_try(), "peek freed the probe"


def test_peek_reads_a_first_opening_caught_half_written_as_open():
    breaker = Breaker(failures=1, clock=FakeClock())
    breaker._state = B.OPEN  # `_open` has stepped, `opened_at` not yet written
    assert breaker.opened_at is None and breaker.peek() is B.OPEN


# --- the limiter --------------------------------------------------------------------------------


async def test_a_burst_of_20_at_5_per_second_is_spread_over_about_4_seconds_none_refused():
    clock = FakeClock()
    bucket = TokenBucket(rate=5.0, burst=1, clock=clock)
    start = clock()
    sent_at = []
    for _ in range(20):
        await bucket.acquire(clock.sleep)
        sent_at.append(clock() - start)
    assert len(sent_at) == 20  # none refused: each waited its turn
    assert sent_at[-1] == pytest.approx(3.8)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert min(gaps) >= 0.2 - 1e-9
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in zip(sent_at, sent_at[5:])), "never 6 in one second"


def test_reservations_queue_up_and_a_burst_allowance_goes_back_to_back():
    clock = FakeClock()
    bucket = TokenBucket(rate=5.0, burst=3, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.4])
    clock.advance(10.0)  # refilled, to the burst at most
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.2])


def test_a_429_backs_the_limiter_off_for_its_retry_after_and_leaves_the_breaker_alone():
    clock = FakeClock()
    board = HealthBoard({"ams": "http://ams"}, rate=5.0, pace_share=1.0, clock=clock)
    ams = board["ams"]
    for _ in range(10):
        ams.record_failure(JitoRateLimited("rate limited", retry_after_s=2.0))
    assert ams.state is B.CLOSED and ams.counts["rate limited"] == 10
    assert ams.limiter.reserve() == pytest.approx(2.0)
    clock.advance(5.0)
    ams.record_failure(Outcome.RATE_LIMITED)  # no Retry-After: one interval
    assert ams.limiter.reserve() == pytest.approx(0.2)


@pytest.mark.parametrize(
    "error, outcome",
    [
        (JitoRateLimited("429"), Outcome.RATE_LIMITED),
        (JitoUnavailable("timeout"), Outcome.UNAVAILABLE),
        (JitoAnswerUnclear("not JSON-RPC"), Outcome.UNAVAILABLE),
        (JitoError("bundle simulation failed", -32602), Outcome.REFUSED),
        (ConnectionRefusedError(), Outcome.UNAVAILABLE),
        (TimeoutError(), Outcome.UNAVAILABLE),
    ],
)
def test_what_each_error_says_about_the_endpoint(error, outcome):
    assert outcome_of(error) is outcome


def test_a_definite_refusal_means_the_endpoint_is_up():
    clock = FakeClock()
    board = HealthBoard({"ams": "http://ams"}, failures=3, clock=clock)
    ams = board["ams"]
    for _ in range(2):
        ams.record_failure(Outcome.UNAVAILABLE)
    ams.record_failure(JitoError("bundle simulation failed"))
    for _ in range(2):
        ams.record_failure(Outcome.UNAVAILABLE)
    assert ams.state is B.CLOSED and ams.latency_ms is None


# --- latency and the board ----------------------------------------------------------------------


def test_latency_is_an_ewma():
    board = HealthBoard({"a": "http://a"}, alpha=0.5, clock=FakeClock())
    a = board["a"]
    a.record_success(100)
    assert a.latency_ms == 100
    a.record_success(20)
    assert a.latency_ms == pytest.approx(60)
    a.record_success(20)
    assert a.latency_ms == pytest.approx(40)


def test_the_board_ranks_by_latency_then_unmeasured_then_half_open_and_never_open():
    clock = FakeClock()
    board = HealthBoard({"slow": "s", "fast": "f", "new": "n", "down": "d"}, failures=2, open_s=60.0, clock=clock)
    board["slow"].record_success(80)
    board["fast"].record_success(10)
    assert [e.name for e in board.ranked()] == ["fast", "slow", "new", "down"]
    board["fast"].record_success(300)  # the EWMA (alpha 0.2) moves it: 0.2*300 + 0.8*10 = 68 < 80
    assert [e.name for e in board.ranked()][:2] == ["fast", "slow"]
    board["fast"].record_success(300)  # 114.4 > 80
    assert [e.name for e in board.ranked()][:2] == ["slow", "fast"]
    board["down"].record_failure(Outcome.UNAVAILABLE)
    board["down"].record_failure(Outcome.UNAVAILABLE)
    assert "down" not in [e.name for e in board.ranked()]
    clock.advance(60.0)
    assert [e.name for e in board.ranked()][-1] == "down"  # half-open: after every closed one
    for name in ("slow", "fast", "new"):
        for _ in range(2):
            board[name].record_failure(Outcome.UNAVAILABLE)
    assert board.take().name == "down"  # its probe
    assert board.ranked() == []
    with pytest.raises(EndpointUnavailable):
        board.take()


async def test_failover_needs_no_operator_and_the_probe_brings_the_endpoint_back():
    clock = FakeClock()
    board = HealthBoard({"ams": "a", "fra": "f"}, failures=5, open_s=60.0, clock=clock)
    ams_up = False

    async def request(endpoint):
        clock.advance(0.01)
        if endpoint.name == "ams" and not ams_up:
            raise JitoUnavailable("connection refused")
        return endpoint.name

    answers = []
    for _ in range(12):
        try:
            answers.append(await board.call(request, sleep=clock.sleep))
        except JitoUnavailable:
            answers.append("failed")
    assert answers == ["failed"] * 5 + ["fra"] * 7
    assert board["ams"].state is B.OPEN
    ams_up = True
    clock.advance(60.0)
    # fra measured and closed first, then ams half-open: its probe goes when fra is out too
    assert [e.name for e in board.ranked()] == ["fra", "ams"]
    assert board.take().name == "fra"
    for _ in range(5):
        board["fra"].record_failure(Outcome.UNAVAILABLE)
    assert await board.call(request, sleep=clock.sleep) == "ams"  # the probe
    assert board["ams"].state is B.CLOSED and [e.name for e in board.ranked()] == ["ams"]


def test_settings_declare_it_once_and_the_single_url_keeps_working():
    health = load(EndpointHealthSettings, {})
    assert (health.endpoint_breaker_failures, health.endpoint_breaker_open_s, health.latency_ewma_alpha) == (5, 60.0, 0.2)
    jito = load(JitoSettings, {"JITO_BLOCK_ENGINE_URL": "http://one:1"})
    assert jito.jito_block_engine_urls == ["http://one:1"] and jito.jito_requests_per_second == 1.0 and jito.jito_requests_burst == 1
    regional = load(JitoSettings, {"JITO_BLOCK_ENGINE_URL": "http://one:1", "JITO_BLOCK_ENGINE_URLS": "https://amsterdam.x, https://frankfurt.x"})
    assert regional.jito_block_engine_urls == ["https://amsterdam.x", "https://frankfurt.x"]
    assert regional.jito_block_engine_url == "http://one:1"  # what the executor sends to today
    from worker.config import ExecutorConfig

    board = HealthBoard.from_settings(ExecutorConfig.from_environment({"JITO_BLOCK_ENGINE_URLS": "http://a,http://b", "ENDPOINT_BREAKER_FAILURES": "3"}))
    assert list(board.endpoints) == ["http://a", "http://b"] and board["http://a"].breaker.failures == 3


# --- the real client against two regions, one down ---------------------------------------------

SOL = 1_000_000_000
TIP = Pubkey.from_string(TIP_ACCOUNTS[0])


@pytest.fixture(scope="module")
def two_regions():
    regions = {"ams": RegionSettings(rate_limit=5.0), "fra": RegionSettings(down="refuse")}
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=40, regions=regions)) as running:
        yield running


async def test_the_board_fails_over_to_the_live_region_and_paces_a_burst_under_its_limit(two_regions):
    from tests.localnet.conftest import funded_wallet, sign
    from tests.localnet.test_regions import newest_blockhash, region_counters

    urls = two_regions.endpoints()["regions"]
    payer = funded_wallet(two_regions)
    blockhash = newest_blockhash(two_regions)
    to = Keypair().pubkey()
    bundles = [
        [sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=SOL // 100 + i)),
                      transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=TIP, lamports=2000))], blockhash)]
        for i in range(8)
    ]  # fmt: skip
    board = HealthBoard({"fra": urls["fra"], "ams": urls["ams"]}, failures=5, open_s=60.0, rate=5.0)  # fra listed first: tried first
    clients = {name: JitoClient(url, timeout_s=2.0) for name, url in urls.items()}
    try:
        async def send(endpoint):
            bundle_id = await clients[endpoint.name].send_bundle(bundles[-1])
            bundles.pop()  # taken: the next call sends the next one
            return bundle_id

        failed = 0
        while board["fra"].state is not B.OPEN:
            with pytest.raises(JitoUnavailable):
                await board.call(send)
            failed += 1
        assert failed == 5 and board["fra"].counts["unavailable"] == 5
        assert [e.name for e in board.ranked()] == ["ams"]

        assert len(bundles) == 8  # fra took none
        ids = [await board.call(send) for _ in range(len(bundles))]
        reads = [await board.call(lambda e: clients[e.name].inflight_statuses(ids[:5])) for _ in range(3)]
        assert len(set(ids)) == len(ids) == 8 and all(len(r) == 5 for r in reads)
        assert board["ams"].counts == {"succeeded": 11, "unavailable": 0, "rate limited": 0, "refused": 0}
        assert region_counters(two_regions, "ams")["rate_limited"] == 0
        assert board["ams"].latency_ms is not None and board["fra"].latency_ms is None
    finally:
        for client in clients.values():
            await client.close()
