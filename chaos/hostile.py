"""Hostile plans, made by a property-based generator (hypothesis), for the fuzz test and `chaos --hostile N`.

Each hostile message is built from a valid plan (so that it gets as far as it can) and broken in
one or more ways a planner gone wrong, or an attacker with the planner's credentials, could:

- sizes at and past every limit of workflows/limits.py (ids of 127, 128, 129 and 5,004 characters,
  a message past PLANNED's max_msg_size);
- unicode, control characters and newlines in every string, the subject included;
- NaN, Infinity and 1e400 written into the JSON text;
- deep nesting, duplicate keys, huge arrays, bytes that are not UTF-8, JSON cut short;
- wrong types in every field;
- valid-looking plans whose instructions move value the plan does not declare (a System transfer
  from the wallet to an outside account), name accounts the executor cannot sign for, or cannot fit
  a transaction.

Why hypothesis: it is the maintained property-based generator for Python, its strategies compose
(a field, a value, a mutation), and `derandomize` makes a run repeatable from its seed. It is used
here as the generator only: the property is checked on what the real bus and workers did with the
whole batch (tests/test_hostile_fuzz.py, chaos/checker.py `check_hostile`), which a per-example
shrink could not drive.
"""
from __future__ import annotations

import base64
import copy
import json
import struct
from dataclasses import dataclass

from venue.instructions import SystemInstruction
from workflows.events import is_valid_plan
from workflows.limits import MAX_ID_CHARS, MAX_PLAN_BYTES, is_plan_id

SYSTEM_PROGRAM = "11111111111111111111111111111111"
OUTSIDE_ACCOUNT = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"  # a key no wallet of the executor holds
STRING_FIELDS = ("planId", "opportunityId", "strategy", "executionMethod", "inputToken", "outputToken", "wallet")
NUMBER_FIELDS = (
    "inputAmount", "expectedProfit", "gasEstimate", "priorityFee", "slippage", "maxLatency", "deadline", "timestamp", "tipLamports",
    "solPriceUsd", "inputTokenPriceUsd", "outputTokenPriceUsd",
)
# Each of these must fail: the policy refuses "drain", the builder "foreign_signer", the size
# check "huge_data" and "many_accounts" (or the chain: a failed transaction may land), the chain
# "unknown_program" (not an executable account).
INSTRUCTION_ATTACKS = ("drain", "foreign_signer", "many_accounts", "huge_data", "unknown_program")
ALL_FIELDS = STRING_FIELDS + NUMBER_FIELDS + ("routes", "simulationSuccess", "flashLoan", "addressLookupTables")


@dataclass(frozen=True)
class HostilePlan:
    """One message to publish: its bytes, the subject's last tokens, what broke it, and the plan id it names."""

    data: bytes
    subject_tail: str
    kind: str
    plan_id: str  # the id the base plan had: unique per message. Its result is under this id, or under
    # invalid-PLANNED-<seq> when the message carries no usable id (a usable id is never another's)


def hostile_plans(base_plan, seed: int | None = None):
    """A hypothesis strategy of HostilePlan; ``base_plan(plan_id)`` gives a fresh valid plan (a dict)."""
    from hypothesis import assume
    from hypothesis import strategies as st

    lengths = st.sampled_from([0, 1, MAX_ID_CHARS - 1, MAX_ID_CHARS, MAX_ID_CHARS + 1, 1000, 4096, 5004])
    nasty_text = st.one_of(
        st.text(max_size=64),  # any unicode, control characters included
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=16).map(lambda s: s + "\n"),
        st.sampled_from(["\n", "\r\n", "opp\n", "a b", "*", ">", "a..b", ".", "a.", "\x00", "\u2028", "😀", "$WALLET", "$WALLET_ATA:x"]),
        lengths.map(lambda n: "a" * n),
        lengths.map(lambda n: "é" * n),
    )
    wrong_types = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(), max_size=4),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
        st.sampled_from([2**64, 2**64 - 1, -1, 10**30, 0]),
    )
    field_value = st.one_of(nasty_text, wrong_types)
    mutations = st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.sampled_from(ALL_FIELDS), field_value),
            st.tuples(st.just("drop"), st.sampled_from(ALL_FIELDS), st.none()),
            st.tuples(st.just("extra"), st.text(min_size=1, max_size=8), field_value),
            st.tuples(st.just("token"), st.sampled_from(("nan", "inf", "-inf", "1e400", "-1e400", "1" * 5000)), st.sampled_from(NUMBER_FIELDS)),
            st.tuples(st.just("instructions"), st.sampled_from(INSTRUCTION_ATTACKS), st.none()),
            st.tuples(st.just("huge_array"), st.sampled_from(("routes", "addressLookupTables", "accounts")), st.integers(min_value=9, max_value=20_000)),
        ),
        min_size=1,
        max_size=3,
    )
    raw_forms = st.sampled_from(("deep_array", "deep_object", "not_utf8", "truncated", "duplicate_keys", "oversize", "empty", "not_object", "bom"))
    tails = st.one_of(
        st.just("hostile"),
        st.text(alphabet=st.characters(blacklist_categories=("Z", "Cc", "Cs"), blacklist_characters="*>."), min_size=1, max_size=40),
        lengths.filter(lambda n: 0 < n <= 1000).map(lambda n: "t" * n),
    )
    counter = iter(range(10**9))

    @st.composite
    def one(draw) -> HostilePlan:
        plan_id = f"hostile-{seed if seed is not None else 0}-{next(counter)}"
        plan = base_plan(plan_id)
        fresh = copy.deepcopy(plan)
        tail = draw(tails)
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            form = draw(raw_forms)
            depth = draw(st.integers(min_value=10, max_value=200_000))
            return HostilePlan(_raw(form, plan, depth), tail, f"raw:{form}", plan_id)
        changes = draw(mutations)
        text_tokens: list[tuple[str, str]] = []
        attacked = False  # an instruction attack still in the routes (a later huge_array starts from fresh routes)
        for op, name, value in changes:
            if op in ("set", "extra") and name == "planId" and is_plan_id(value):
                value = plan_id  # a usable id stays this message's own, so that its one result can be found
            if op == "set":
                plan[name] = value
            elif op == "drop":
                plan.pop(name, None)
            elif op == "extra":
                plan[name] = value
            elif op == "token":
                placeholder = f"__token_{len(text_tokens)}__"
                plan[value] = placeholder
                text_tokens.append((placeholder, {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(name, name)))
            elif op == "instructions":
                plan["routes"] = copy.deepcopy(fresh["routes"])  # an earlier change may have broken them
                _hostile_instructions(plan, name)
                attacked = True
            elif op == "huge_array":
                plan["routes"] = copy.deepcopy(fresh["routes"])
                _huge_array(plan, name, value)
                attacked = False
        data = json.dumps(plan, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
        for placeholder, token in text_tokens:
            data = data.replace(f'"{placeholder}"'.encode(), token.encode())
        if not attacked:
            assume(not is_valid_plan(data))  # dropping an optional field, say, leaves a valid plan: not hostile
        return HostilePlan(data, tail, "+".join(f"{op}:{name}" for op, name, _ in changes), plan_id)

    return one()


def generate(base_plan, count: int, seed: int) -> list[HostilePlan]:
    """``count`` hostile plans, the same ones for the same seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded

    made: list[HostilePlan] = []
    strategy = hostile_plans(base_plan, seed)
    while len(made) < count:  # hypothesis may end a run early once it has seen enough: run again until there are `count`

        @seeded(seed + len(made))
        @settings(max_examples=count - len(made), database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(plan: HostilePlan) -> None:
            made.append(plan)

        collect()
    return made[:count]


def _hostile_instructions(plan: dict, kind: str) -> None:
    route = plan["routes"][0]
    if kind == "drain":  # a System transfer of 1,000 SOL from the wallet to an account outside it: value the plan does not declare
        data = base64.b64encode(struct.pack("<IQ", SystemInstruction.TRANSFER, 1_000 * 10**9)).decode()
        route["instructions"].append({
            "programId": SYSTEM_PROGRAM,
            "accounts": [{"pubkey": "$WALLET", "isSigner": True, "isWritable": True}, {"pubkey": OUTSIDE_ACCOUNT, "isSigner": False, "isWritable": True}],
            "data": data,
        })  # fmt: skip
    elif kind == "foreign_signer":  # an account only its owner could sign for
        route["instructions"][0]["accounts"].append({"pubkey": OUTSIDE_ACCOUNT, "isSigner": True, "isWritable": True})
    elif kind == "many_accounts":
        route["instructions"][0]["accounts"] = [{"pubkey": OUTSIDE_ACCOUNT, "isSigner": False, "isWritable": True}] * 64
    elif kind == "huge_data":
        route["instructions"][0]["data"] = base64.b64encode(b"\x01" * 4000).decode()
    elif kind == "unknown_program":
        route["instructions"][0]["programId"] = OUTSIDE_ACCOUNT


def _huge_array(plan: dict, name: str, size: int) -> None:
    if name == "routes":
        plan["routes"] = [copy.deepcopy(plan["routes"][0])] * min(size, 2000)
    elif name == "addressLookupTables":
        plan["addressLookupTables"] = [OUTSIDE_ACCOUNT] * size
    else:
        plan["routes"][0]["instructions"][0]["accounts"] = [{"pubkey": OUTSIDE_ACCOUNT, "isSigner": False, "isWritable": False}] * min(size, 2000)


def _raw(form: str, plan: dict, depth: int) -> bytes:
    text = json.dumps(plan).encode()
    if form == "deep_array":
        return b"[" * depth + b"]" * depth
    if form == "deep_object":
        depth = min(depth, 20_000)
        return b'{"planId":' * depth + b"1" + b"}" * depth
    if form == "not_utf8":
        return text[:40] + b"\xff\xfe\xc0\xaf" + text[40:]
    if form == "truncated":
        return text[: len(text) // 2]
    if form == "duplicate_keys":  # the planId twice: which one counts is the parser's, the result must still be one
        return text[:-1] + b', "planId": "other\\n", "planId": ' + json.dumps(plan["planId"]).encode() + b"}"
    if form == "oversize":
        return text[:-1] + b', "padding": "' + b"x" * (MAX_PLAN_BYTES + 16) + b'"}'
    if form == "empty":
        return b""
    if form == "not_object":
        return json.dumps([plan]).encode()
    return b"\xef\xbb\xbf" + text  # "bom": a byte-order mark before the JSON
