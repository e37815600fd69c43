"""The bounds of workflows/limits.py hold against the limits of what carries them (no server needed).

Every value derived from a plan (subject, header, workflow id, search attribute, KV key) must be
publishable and storable whatever the plan holds; the parse and the rejection must be total."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.publish import RESULT_SUBJECT, result_subject
from workflows.events import ErrorCode, ExecutionStatus, InvalidPlan, parse_plan, rejection
from workflows.limits import (
    MAX_DEADLINE_AHEAD_MS,
    MAX_ID_CHARS,
    MAX_PLAN_BYTES,
    NATS_MAX_CONTROL_LINE,
    NATS_MAX_PAYLOAD,
    TEMPORAL_MAX_ID_LENGTH,
    TEMPORAL_MAX_KEYWORD_BYTES,
    header_value,
    is_plan_id,
    is_subject_tokens,
)

# The longest reply subject a client of the executor uses: nats-py's new-style request inbox is
# <prefix>.<22 chars>.<token>, with the per-role prefix of worker/nats_security.py (_INBOX.worker).
LONGEST_INBOX = "_INBOX.operator." + "x" * 22 + "." + "x" * 22


def control_line(subject: str, reply: str = LONGEST_INBOX) -> int:
    """Bytes of `HPUB <subject> <reply> <header bytes> <total bytes>\\r\\n`, with 7-digit sizes (a 1 MiB payload)."""
    return len(f"HPUB {subject} {reply} 1048576 1048576\r\n".encode())


def test_the_longest_ids_fit_every_carrier():
    plan_id = "p" * MAX_ID_CHARS
    opportunity = "o" * MAX_ID_CHARS
    assert is_plan_id(plan_id) and is_subject_tokens(opportunity)
    subjects = [
        f"execution.planned.{opportunity}",
        RESULT_SUBJECT.format(status=max((s.value for s in ExecutionStatus), key=len), opportunity=opportunity),
        # KV keys (executor/records.py): base64 of the plan id, as the tail of $KV.<bucket>.<key>, and of a direct get
        "$KV.plan_records.result." + base64.urlsafe_b64encode(plan_id.encode()).decode(),
        "$JS.API.DIRECT.GET.KV_plan_records.$KV.plan_records.signed." + base64.urlsafe_b64encode(plan_id.encode()).decode(),
    ]
    for subject in subjects:
        assert control_line(subject) < NATS_MAX_CONTROL_LINE // 4, subject  # a wide margin, not a near miss
    assert len(f"plan-{plan_id}") < TEMPORAL_MAX_ID_LENGTH
    assert len(opportunity.encode()) < TEMPORAL_MAX_KEYWORD_BYTES


@pytest.mark.parametrize("value", ["opp\n", "opp\r\n", "\nopp", "a" * (MAX_ID_CHARS + 1), "a..b", ".a", "a.", "", "a b", "é", "a*", "a>"])
def test_what_is_not_an_id_is_refused(value):
    assert not is_subject_tokens(value)
    assert not is_plan_id(value) or value in ("a..b", ".a", "a.")  # dots are fine in a plan id, not empty subject tokens


def test_header_values_never_carry_a_line_break():
    assert header_value("rejected-PLANNED-7") == "rejected-PLANNED-7"
    for value in ("a\r\nNats-Expected-Stream: X", "a\n", "é", "x" * 300, ""):
        safe = header_value(value)
        assert safe.isascii() and "\r" not in safe and "\n" not in safe and 0 < len(safe) <= 256


def test_a_plan_past_the_size_limit_is_refused_unread():
    with pytest.raises(InvalidPlan, match="over the"):
        parse_plan(b"{" + b" " * MAX_PLAN_BYTES + b"}")


def test_numbers_must_be_finite(valid_plan):
    for token in (b"1e400", b"NaN", b"Infinity", b"-Infinity"):
        data = json.dumps({**valid_plan, "solPriceUsd": 0}).encode().replace(b'"solPriceUsd": 0', b'"solPriceUsd": ' + token)
        with pytest.raises(InvalidPlan, match="solPriceUsd"):
            parse_plan(data)


def test_the_deadline_is_held_to_the_horizon(valid_plan):
    now = valid_plan["timestamp"]
    ok = {**valid_plan, "deadline": now + MAX_DEADLINE_AHEAD_MS}
    assert parse_plan(json.dumps(ok).encode(), now_ms=now).deadline == ok["deadline"]
    far = {**valid_plan, "deadline": now + MAX_DEADLINE_AHEAD_MS + 1}
    with pytest.raises(InvalidPlan, match="deadline"):
        parse_plan(json.dumps(far).encode(), now_ms=now)
    # the same bytes days later (a redelivery after the record's TTL): accepted, and the send gate refuses the passed deadline
    assert parse_plan(json.dumps(ok).encode(), now_ms=now + 8 * 86_400_000).deadline == ok["deadline"]


def test_a_key_twice_in_one_object_is_refused(valid_plan):
    data = json.dumps(valid_plan).encode()[:-1] + b', "planId": "other"}'
    with pytest.raises(InvalidPlan, match="twice"):
        parse_plan(data)


@pytest.fixture
def valid_plan() -> dict:
    key = "So11111111111111111111111111111111111111112"
    return {
        "planId": "p-1", "opportunityId": "o-1", "strategy": "arbitrage", "executionMethod": "rpc",
        "routes": [{"dex": "d", "inputMint": key, "outputMint": key, "inAmount": 1, "outAmount": 1,
                    "instructions": [{"programId": key, "accounts": [], "data": ""}]}],
        "inputToken": key, "outputToken": key, "inputAmount": 1, "expectedProfit": 1.0, "simulationSuccess": True,
        "slippage": 1, "maxLatency": 1000, "deadline": 1_700_000_060_000, "timestamp": 1_700_000_000_000,
    }  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
id_like = st.one_of(st.text(max_size=300), st.sampled_from(["opp\n", "a" * 5004, "ok-1", "a..b", "\u2028"]), json_values)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=512),
        st.fixed_dictionaries({"planId": id_like, "opportunityId": id_like, "executionMethod": id_like, "expectedProfit": json_values}).map(
            lambda d: json.dumps(d, allow_nan=True).encode()
        ),
        st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=300, max_value=5000).map(lambda n: b'{"planId": ' + b"1" * n + b"}"),
    ),
    tail=st.text(max_size=300),
    fallback=st.text(max_size=300),
)
def test_parse_and_rejection_are_total_and_always_publishable(body, tail, fallback):
    """Whatever arrives: the parser raises only InvalidPlan, and the rejection is small, with ids that
    fit every carrier and a method label from the known set."""
    try:
        parse_plan(body, now_ms=0)
    except InvalidPlan as invalid:
        error = invalid
    else:
        return  # a valid plan: not what this property is about (these strategies do not make one)
    result = rejection(body, error, fallback_plan_id=fallback, fallback_opportunity=tail, execution_id=None, now_ms=0)
    assert result.error_code in set(ErrorCode)
    assert is_plan_id(result.plan_id), result.plan_id
    assert is_subject_tokens(result.opportunity_id) or result.opportunity_id == "unknown"
    assert control_line(result_subject(result)) < NATS_MAX_CONTROL_LINE
    assert len(result.to_wire()) < min(NATS_MAX_PAYLOAD, 8192)
    assert result.execution_method in ("rpc", "jito_bundle", "tpu_direct", "unknown")
