"""Tips from the market (issue 23, item 4): executor.tips.price_tip, the escalation across plans, the
builder's pricing, and the tip-floor parser, no network.

The floor is read on a fake clock: `now` is passed in, so staleness is exact on any machine; the
escalation is fed outcomes, not time."""
from __future__ import annotations

import json
import random
import struct

import pytest
from solders.keypair import Keypair
from solders.hash import Hash
from solders.pubkey import Pubkey

from devtools.demo import DemoPool, validate
from executor.build import BuildSettings, TransactionBuilder, compile_message, tip_lamports
from executor.tips import EscalationSettings, TipEscalation, TipPrice, TipPricer, TipSettings, price_tip, profit_cap, tip_label
from settings.base import SettingsError, load
from settings.executor import JitoSettings
from settings.policy import PolicySettings
from venue.instructions import SystemInstruction
from venue.jito import STATIC_TIP_ACCOUNTS, JitoError, JitoMalformedTipFloor, TipFloor, parse_tip_floor
from workflows.events import ErrorCode, ExecutionCost, ExecutionResultEvent, ExecutionStatus

# Jito's own example answer (jito-labs/jito-docs lowlatencytxnsend.md, "Get Tip Information"), in SOL.
JITO_EXAMPLE = [
    {
        "time": "2024-09-01T12:58:00Z",
        "landed_tips_25th_percentile": 6.001000000000001e-06,
        "landed_tips_50th_percentile": 1e-05,
        "landed_tips_75th_percentile": 3.6196500000000005e-05,
        "landed_tips_95th_percentile": 0.0014479055000000002,
        "landed_tips_99th_percentile": 0.010007999,
        "ema_landed_tips_50th_percentile": 9.836078125000002e-06,
    }
]
FETCHED = 1_000.0  # the fake monotonic clock when the floor was read
SETTINGS = TipSettings()  # the defaults: 75th, half the profit, 30 s, POLICY_MAX_TIP_LAMPORTS 0.01 SOL


def plan(expected_profit: float = 1.0, tip: int | None = None, sol_price: float | None = None, method: str = "jito_bundle"):
    wallet = str(Keypair().pubkey())
    pool = DemoPool(*(str(Keypair().pubkey()) for _ in range(2)), 6, str(Keypair().pubkey()), {wallet: str(Keypair().pubkey())})
    data = pool.plan("tip-plan", wallet, method, expected_profit=expected_profit)
    if tip is not None:
        data["tipLamports"] = tip
    if sol_price is not None:
        data["solPriceUsd"] = sol_price
    return validate(data)


def floor(p25=20_000, p50=40_000, p75=60_000, p95=80_000, p99=100_000, ema50=45_000, fetched_at=FETCHED) -> TipFloor:
    return TipFloor(time="2026-12-08T01:00:00Z", p25=p25, p50=p50, p75=p75, p95=p95, p99=p99, ema50=ema50, fetched_at=fetched_at)


# --- the floor in lamports ------------------------------------------------------------------------------


def test_jitos_example_answer_reads_in_lamports():
    read = parse_tip_floor(json.loads(json.dumps(JITO_EXAMPLE)), FETCHED)
    assert read == TipFloor(time="2024-09-01T12:58:00Z", p25=6001, p50=10_000, p75=36_197, p95=1_447_906, p99=10_007_999, ema50=9836, fetched_at=FETCHED)
    assert all(isinstance(getattr(read, name), int) for name in ("p25", "p50", "p75", "p95", "p99", "ema50"))
    assert [read.percentile(name) for name in ("25", "50", "75", "95", "99", "ema50")] == [6001, 10_000, 36_197, 1_447_906, 10_007_999, 9836]
    with pytest.raises(AttributeError):
        read.p75 = 1  # frozen
    with pytest.raises(ValueError):
        read.percentile("90")


@pytest.mark.parametrize(
    "answer",
    [
        [],
        JITO_EXAMPLE * 2,
        "tip floor",
        [{k: v for k, v in JITO_EXAMPLE[0].items() if k != "landed_tips_75th_percentile"}],
        [{k: v for k, v in JITO_EXAMPLE[0].items() if k != "time"}],
        [JITO_EXAMPLE[0] | {"landed_tips_50th_percentile": "0.00001"}],
        [JITO_EXAMPLE[0] | {"landed_tips_95th_percentile": -1e-05}],
        [JITO_EXAMPLE[0] | {"landed_tips_99th_percentile": float("nan")}],
        [JITO_EXAMPLE[0] | {"landed_tips_99th_percentile": 1e9}],  # a billion SOL: not a tip
        [JITO_EXAMPLE[0] | {"ema_landed_tips_50th_percentile": True}],
    ],
)
def test_a_malformed_floor_raises_the_clients_error(answer):
    with pytest.raises(JitoMalformedTipFloor) as raised:
        parse_tip_floor(answer, FETCHED)
    assert isinstance(raised.value, JitoError)


# --- the price -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("percentile", "expected"), [("25", 20_000), ("50", 40_000), ("75", 60_000), ("95", 80_000), ("99", 100_000), ("ema50", 45_000)])
def test_each_percentile_prices_the_tip(percentile, expected):
    settings = TipSettings(percentile=percentile)
    assert price_tip(plan(), floor(), FETCHED + 1, settings) == TipPrice(expected, "floor")


def test_never_below_jitos_minimum_nor_jito_tip_base():
    quiet = floor(p25=1000, p50=1000, p75=1000, p95=1000, p99=1000, ema50=1000)
    assert price_tip(plan(), quiet, FETCHED, SETTINGS) == TipPrice(10_000, "floor")  # JITO_TIP_BASE
    no_base = TipSettings(build=BuildSettings(jito_tip_base=0))
    assert price_tip(plan(), floor(p75=0), FETCHED, no_base) == TipPrice(1000, "floor")  # Jito's minimum
    assert price_tip(plan(), floor(p75=3000), FETCHED, no_base) == TipPrice(3000, "floor")


def test_capped_by_a_share_of_the_expected_profit():
    # $0.01 at $150/SOL, half of it: 33,333 lamports, under the 75th's 60,000.
    assert profit_cap(plan(0.01), SETTINGS) == 33_333
    assert price_tip(plan(0.01), floor(), FETCHED, SETTINGS) == TipPrice(33_333, "floor", "profit")
    # The plan's own SOL price converts it: at $300/SOL the same profit is half the lamports.
    assert price_tip(plan(0.01, sol_price=300.0), floor(), FETCHED, SETTINGS) == TipPrice(16_666, "floor", "profit")
    # The cap yields to the floors: no profit still pays JITO_TIP_BASE, as today.
    assert price_tip(plan(0.0), floor(), FETCHED, SETTINGS) == TipPrice(10_000, "floor")
    assert price_tip(plan(0.001), floor(), FETCHED, SETTINGS) == TipPrice(10_000, "floor")


def test_capped_by_the_policys_max_tip():
    policy = PolicySettings()
    settings = TipSettings.from_settings(load(JitoSettings, {"JITO_TIP_PERCENTILE": "99"}), policy, BuildSettings())
    assert settings.policy_max_tip == policy.max_tip_lamports == 10_000_000
    rich = plan(100.0)  # a cap of 333,333,333 lamports from the profit
    assert price_tip(rich, floor(p99=25_000_000), FETCHED, settings) == TipPrice(10_000_000, "floor", "policy")
    tight = TipSettings(percentile="99", policy_max_tip=70_000)
    assert price_tip(rich, floor(), FETCHED, tight) == TipPrice(70_000, "floor", "policy")


def test_a_plans_own_tip_keeps_winning():
    assert price_tip(plan(tip=5_000_000), floor(), FETCHED, SETTINGS) == TipPrice(5_000_000, "plan")
    assert price_tip(plan(tip=500), floor(), FETCHED, SETTINGS) == TipPrice(1000, "plan")  # Jito's minimum, as today
    assert price_tip(plan(tip=5_000_000), None, FETCHED, SETTINGS).lamports == tip_lamports(plan(tip=5_000_000), BuildSettings())


@pytest.mark.parametrize("profit", [0.0, 0.01, 1.0, 100.0])
def test_a_missing_stale_or_switched_off_floor_falls_back_to_todays_rule(profit):
    today = tip_lamports(plan(profit), BuildSettings())
    assert price_tip(plan(profit), None, FETCHED, SETTINGS) == TipPrice(today, "fallback")
    assert price_tip(plan(profit), floor(), FETCHED + 30.0, SETTINGS).source == "floor"  # exactly the max age: still fresh
    assert price_tip(plan(profit), floor(), FETCHED + 30.001, SETTINGS) == TipPrice(today, "fallback")  # stale
    assert price_tip(plan(profit), floor(), FETCHED - 1.0, SETTINGS) == TipPrice(today, "fallback")  # read on another clock
    assert price_tip(plan(profit), floor(), FETCHED, TipSettings(percentile="off")) == TipPrice(today, "fallback")


def test_the_worked_example_of_the_module_doc():
    jito = parse_tip_floor(JITO_EXAMPLE, FETCHED)
    assert price_tip(plan(1.0), jito, FETCHED, SETTINGS) == TipPrice(36_197, "floor")
    assert price_tip(plan(0.01), jito, FETCHED, SETTINGS) == TipPrice(33_333, "floor", "profit")
    assert price_tip(plan(0.001), jito, FETCHED, SETTINGS) == TipPrice(10_000, "floor")
    assert price_tip(plan(1.0), jito, FETCHED, TipSettings(percentile="95")) == TipPrice(1_447_906, "floor")
    assert price_tip(plan(100.0), jito, FETCHED, TipSettings(percentile="99")) == TipPrice(10_000_000, "floor", "policy")
    assert price_tip(plan(1.0), jito, FETCHED + 40.0, SETTINGS) == TipPrice(333_333, "fallback")


def test_the_settings_are_declared_with_their_grammar():
    read = load(JitoSettings, {"JITO_TIP_PERCENTILE": "ema50", "JITO_TIP_MAX_PROFIT_SHARE": "0.25", "JITO_TIP_FLOOR_MAX_AGE_MS": "5000"})
    settings = TipSettings.from_settings(read, PolicySettings(max_tip_lamports=123_456), BuildSettings())
    assert settings == TipSettings(percentile="ema50", max_profit_share=0.25, floor_max_age_s=5.0, policy_max_tip=123_456)
    assert load(JitoSettings, {}).jito_tip_percentile == "75"
    for bad in ({"JITO_TIP_PERCENTILE": "90"}, {"JITO_TIP_MAX_PROFIT_SHARE": "1.5"}, {"JITO_TIP_FLOOR_MAX_AGE_MS": "0"}):
        with pytest.raises(SettingsError):
            load(JitoSettings, bad)


# --- escalation across plans (the seed's jitoTipBase/jitoTipStep) ---------------------------------------------

ESCALATION = EscalationSettings(step=5_000, land_rate=0.9, window=20, max_steps=3)


def window(escalation: TipEscalation, landed: int, of: int = 20) -> None:
    """One window of outcomes, `landed` of them landed, in a shuffled order (order never matters)."""
    outcomes = [True] * landed + [False] * (of - landed)
    random.Random(landed).shuffle(outcomes)
    for outcome in outcomes:
        escalation.record(outcome)


def test_the_level_rises_one_step_per_window_below_the_land_rate_and_falls_one_per_window_at_or_above():
    escalation = TipEscalation(ESCALATION)
    assert (escalation.level, escalation.lamports, escalation.land_rate) == (0, 0, None)
    for outcome in [False] * 19:
        escalation.record(outcome)
    assert escalation.level == 0, "nothing moves before a window is complete"
    escalation.record(True)
    assert (escalation.level, escalation.lamports, escalation.land_rate) == (1, 5_000, 0.05)
    window(escalation, 17)  # 0.85 < 0.9: one more
    assert (escalation.level, escalation.lamports) == (2, 10_000)
    window(escalation, 18)  # exactly 0.9: at the threshold, one less
    assert (escalation.level, escalation.lamports, escalation.land_rate) == (1, 5_000, 0.9)
    window(escalation, 20)
    window(escalation, 20)
    assert escalation.level == 0, "never below 0"
    for _ in range(6):
        window(escalation, 0)
    assert (escalation.level, escalation.lamports) == (3, 15_000), "at most JITO_TIP_ESCALATION_MAX_STEPS"
    assert escalation.counted == 20 * 11


def test_windows_do_not_overlap():
    escalation = TipEscalation(EscalationSettings(step=1_000, land_rate=0.5, window=4, max_steps=10))
    for outcome in [False, False, False, False, True, True, True]:
        escalation.record(outcome)
    assert escalation.level == 1, "the second window is not complete yet, though the last 4 land 3 of 4"
    escalation.record(True)
    assert escalation.level == 0


def result(method: str = "jito_bundle", *, slot: int | None = None, code: ErrorCode | None = None, tip: int | None = 10_000) -> ExecutionResultEvent:
    status = ExecutionStatus.success if slot is not None else ExecutionStatus.failed
    return ExecutionResultEvent(
        execution_id="e", plan_id="p", opportunity_id="o", status=status, block_slot=slot, expected_profit=1.0,
        execution_cost=ExecutionCost(), latency=1.0, execution_method=method, error_code=code, timestamp=0, tip_lamports=tip,
    )  # fmt: skip


def test_only_a_tipped_plans_landing_or_expiry_counts():
    escalation = TipEscalation(EscalationSettings(step=5_000, land_rate=0.9, window=2, max_steps=10))
    ignored = [
        result("rpc", code=ErrorCode.BLOCKHASH_EXPIRED, tip=0),  # no tip to blame
        result("tpu_direct", code=ErrorCode.BLOCKHASH_EXPIRED, tip=0),
        result("jito_bundle", code=ErrorCode.POLICY_VIOLATION, tip=None),  # refused before signing: never sent
        result("jito_bundle", code=ErrorCode.HALTED, tip=None),
        result("jito_bundle", code=ErrorCode.DEADLINE_EXCEEDED, tip=None),
        result("jito_bundle", code=ErrorCode.SUBMIT_REJECTED),  # refused by the engine: not the auction's verdict
        result("jito_bundle", code=ErrorCode.BUNDLE_FAILED),
    ]
    for each in ignored:
        escalation.observe(each)
    assert escalation.counted == 0
    escalation.observe(result("jito_bundle", code=ErrorCode.BLOCKHASH_EXPIRED))
    escalation.observe(result("race", code=ErrorCode.BLOCKHASH_EXPIRED))
    assert (escalation.counted, escalation.level) == (2, 1)
    escalation.observe(result("race", slot=42))
    escalation.observe(result("jito_bundle", slot=43, code=ErrorCode.TX_FAILED))  # landed (and failed on chain): it landed
    assert (escalation.counted, escalation.level, escalation.land_rate) == (4, 0, 1.0)


def test_out_of_range_escalation_settings_are_refused():
    for bad in (EscalationSettings(window=0), EscalationSettings(land_rate=1.5), EscalationSettings(step=-1), EscalationSettings(max_steps=-1)):
        with pytest.raises(ValueError):
            TipEscalation(bad)


def test_the_escalation_is_added_before_the_caps():
    # The floor's 75th (60,000) plus two steps, well under every cap.
    assert price_tip(plan(1.0), floor(), FETCHED, SETTINGS, 10_000) == TipPrice(70_000, "floor", None, 10_000)
    # The profit share still caps: $0.01 -> 33,333, whatever the escalation.
    assert price_tip(plan(0.01), floor(p75=30_000), FETCHED, SETTINGS, 10_000) == TipPrice(33_333, "floor", "profit", 10_000)
    # And the policy's max tip.
    assert price_tip(plan(100.0), floor(), FETCHED, TipSettings(policy_max_tip=65_000), 10_000) == TipPrice(65_000, "floor", "policy", 10_000)
    # The floors still floor: no profit pays JITO_TIP_BASE, escalated or not.
    assert price_tip(plan(0.0), floor(), FETCHED, SETTINGS, 10_000) == TipPrice(10_000, "floor", None, 10_000)


def test_a_plans_own_tip_is_never_escalated():
    assert price_tip(plan(1.0, tip=20_000), floor(), FETCHED, SETTINGS, 50_000) == TipPrice(20_000, "plan")
    assert price_tip(plan(1.0, tip=20_000), None, FETCHED, SETTINGS, 50_000) == TipPrice(20_000, "plan")


def test_without_a_floor_todays_rule_is_escalated_and_the_caps_take_back_only_the_escalation():
    today = tip_lamports(plan(1.0), BuildSettings())  # 333,333: 5% of $1 at $150/SOL
    assert price_tip(plan(1.0), None, FETCHED, SETTINGS, 10_000) == TipPrice(today + 10_000, "fallback", None, 10_000)
    assert price_tip(plan(1.0), None, FETCHED, SETTINGS, 0) == TipPrice(today, "fallback")
    # The policy caps the escalated tip...
    assert price_tip(plan(1.0), None, FETCHED, TipSettings(policy_max_tip=340_000), 10_000) == TipPrice(340_000, "fallback", "policy", 10_000)
    # ...but never takes today's rule below itself: the policy refuses that as it does today.
    assert price_tip(plan(1.0), None, FETCHED, TipSettings(policy_max_tip=300_000), 10_000) == TipPrice(today, "fallback", "policy", 10_000)
    # $0.001: a profit cap of 3,333 under today's 10,000: the escalation is capped away, today's rule stands.
    assert price_tip(plan(0.001), None, FETCHED, SETTINGS, 10_000) == TipPrice(10_000, "fallback", "profit", 10_000)
    assert price_tip(plan(1.0), floor(), FETCHED, TipSettings(percentile="off"), 10_000).lamports == today + 10_000


def test_the_escalated_worked_example_of_the_module_doc():
    jito, two = parse_tip_floor(JITO_EXAMPLE, FETCHED), 10_000
    assert price_tip(plan(1.0), jito, FETCHED, SETTINGS, two).lamports == 46_197
    assert price_tip(plan(0.01), jito, FETCHED, SETTINGS, two).lamports == 33_333
    assert price_tip(plan(0.001), jito, FETCHED, SETTINGS, two).lamports == 10_000
    assert price_tip(plan(1.0), jito, FETCHED + 40.0, SETTINGS, two).lamports == 343_333
    assert price_tip(plan(0.001), jito, FETCHED + 40.0, SETTINGS, two).lamports == 10_000


def test_the_pricer_reads_the_latest_floor_on_its_clock_and_names_the_source():
    latest = {"floor": None}
    now = {"t": FETCHED}
    escalation = TipEscalation(EscalationSettings(step=5_000, land_rate=0.9, window=1, max_steps=10))
    pricer = TipPricer(SETTINGS, lambda: latest["floor"], escalation, clock=lambda: now["t"])
    today = tip_lamports(plan(1.0), BuildSettings())
    assert pricer.price(plan(1.0)) == TipPrice(today, "fallback") and pricer.label(pricer.price(plan(1.0))) == "rule"
    latest["floor"] = floor()
    assert pricer.price(plan(1.0)) == TipPrice(60_000, "floor") and pricer.label(pricer.price(plan(1.0))) == "floor:p75"
    escalation.record(False)
    assert pricer.price(plan(1.0)) == TipPrice(65_000, "floor", None, 5_000)
    now["t"] = FETCHED + 31.0  # the floor aged past JITO_TIP_FLOOR_MAX_AGE_MS
    assert pricer.price(plan(1.0)) == TipPrice(today + 5_000, "fallback", None, 5_000)
    assert pricer.label(pricer.price(plan(1.0, tip=2_000))) == "plan"
    assert tip_label(TipPrice(45_000, "floor"), TipSettings(percentile="ema50")) == "floor:ema50"


async def test_the_builder_pays_the_priced_tip_in_the_transaction():
    """compose() with a pricer: the tip transfer carries the priced lamports and says where they came from;
    without one (and for a plan's own tip), today's rule."""

    async def tip_accounts() -> list[str]:
        return list(STATIC_TIP_ACCOUNTS)

    async def transfer_to_tip_account(builder, event) -> tuple[int, object]:
        composed = await builder.compose(event, event.wallet)
        message = compile_message(Pubkey.from_string(event.wallet), composed, Hash.default())
        keys = [str(k) for k in message.account_keys]
        tip_ix = message.instructions[-1]
        assert keys[tip_ix.accounts[1]] == composed.tip_account in STATIC_TIP_ACCOUNTS
        assert struct.unpack("<IQ", bytes(tip_ix.data)) == (SystemInstruction.TRANSFER, composed.tip_lamports)
        return composed.tip_lamports, composed

    priced = TransactionBuilder(None, None, BuildSettings(), tip_accounts, tips=TipPricer(SETTINGS, lambda: floor(), clock=lambda: FETCHED))
    for method in ("jito_bundle", "race"):
        lamports, composed = await transfer_to_tip_account(priced, plan(1.0, method=method))
        assert (lamports, composed.tip_source, composed.tip_capped_by) == (60_000, "floor:p75", None)
    lamports, composed = await transfer_to_tip_account(priced, plan(0.01))
    assert (lamports, composed.tip_source, composed.tip_capped_by) == (33_333, "floor:p75", "profit")
    lamports, composed = await transfer_to_tip_account(priced, plan(1.0, tip=2_000))
    assert (lamports, composed.tip_source) == (2_000, "plan")
    today = TransactionBuilder(None, None, BuildSettings(), tip_accounts)
    lamports, composed = await transfer_to_tip_account(today, plan(1.0))
    assert (lamports, composed.tip_source) == (tip_lamports(plan(1.0), BuildSettings()), "rule")
    untipped = await priced.compose(plan(1.0, method="rpc"), plan(1.0, method="rpc").wallet)
    assert (untipped.tip_lamports, untipped.tip_account, untipped.tip_source) == (0, None, None)


def test_the_escalation_settings_are_declared_with_their_grammar():
    read = load(JitoSettings, {"JITO_TIP_STEP": "2500", "JITO_TIP_ESCALATION_LAND_RATE": "0.75", "JITO_TIP_ESCALATION_WINDOW": "50", "JITO_TIP_ESCALATION_MAX_STEPS": "4"})
    assert EscalationSettings.from_settings(read) == EscalationSettings(step=2_500, land_rate=0.75, window=50, max_steps=4)
    assert EscalationSettings.from_settings(load(JitoSettings, {})) == EscalationSettings(step=5_000, land_rate=0.9, window=20, max_steps=10)
    for bad in ({"JITO_TIP_STEP": "-1"}, {"JITO_TIP_ESCALATION_LAND_RATE": "1.1"}, {"JITO_TIP_ESCALATION_WINDOW": "0"}, {"JITO_TIP_ESCALATION_MAX_STEPS": "-1"}):
        with pytest.raises(SettingsError):
            load(JitoSettings, bad)
