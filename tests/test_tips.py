"""Tips from the market (issue 23, item 4): executor.tips.price_tip and the tip-floor parser, no network.

The floor is read on a fake clock: `now` is passed in, so staleness is exact on any machine."""
from __future__ import annotations

import json

import pytest
from solders.keypair import Keypair

from devtools.demo import DemoPool, validate
from executor.build import BuildSettings, tip_lamports
from executor.tips import TipPrice, TipSettings, price_tip, profit_cap
from settings.base import SettingsError, load
from settings.executor import JitoSettings
from settings.policy import PolicySettings
from venue.jito import JitoError, JitoMalformedTipFloor, TipFloor, parse_tip_floor

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


def plan(expected_profit: float = 1.0, tip: int | None = None, sol_price: float | None = None):
    wallet = str(Keypair().pubkey())
    pool = DemoPool(*(str(Keypair().pubkey()) for _ in range(2)), 6, str(Keypair().pubkey()), {wallet: str(Keypair().pubkey())})
    data = pool.plan("tip-plan", wallet, "jito_bundle", expected_profit=expected_profit)
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
