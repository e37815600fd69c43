"""The bounds of everything a plan can put on the wire, derived from the limits of what carries it.

A plan is untrusted input. Its ids become NATS subjects (execution.planned.<opportunityId>,
executed.<status>.<opportunityId>), a header (Nats-Msg-Id = planId), a Temporal workflow id
(plan-<planId>) and search attributes, and KV keys ($KV.plan_records.signed.<base64 planId>).
Each carrier has a hard limit, and overflowing one does not fail softly: a subject longer than
nats-server's control line makes the server close the whole connection (issue 19: one plan took
a worker off NATS for good). So every value derived from a plan is bounded here, in bytes on the
wire, with the carriers' limits written next to it, and `tests/test_wire_limits.py` checks that
the longest value each bound admits still fits the carrier it goes into.

Sources:
- nats-server server/const.go: MAX_CONTROL_LINE_SIZE = 4096 (bytes of a protocol line, e.g.
  ``HPUB <subject> <reply> <header bytes> <total bytes>\\r\\n``), MAX_PAYLOAD_SIZE = 1 MiB.
  Subjects are tokens split by '.', no whitespace; '*' and '>' are wildcards, not publishable.
- NATS headers (ADR-4): ``Name: value\\r\\n`` lines; a CR or LF in a value ends it.
- NATS KV keys (ADR-8): ``[-/_=.a-zA-Z0-9]+``; the key becomes the tail of a subject.
- Temporal dynamic config: ``limit.maxIDLength`` = 1000 (workflow ids), ``limit.searchAttributesSizeOfValue``
  = 2 KiB per Keyword value.
"""
from __future__ import annotations

import hashlib
import math
import re

# --- the carriers' limits ---------------------------------------------------------------

NATS_MAX_CONTROL_LINE = 4096  # bytes; nats-server const.go MAX_CONTROL_LINE_SIZE (the server's default)
NATS_MAX_PAYLOAD = 1024 * 1024  # bytes; nats-server const.go MAX_PAYLOAD_SIZE (the server's default)
TEMPORAL_MAX_ID_LENGTH = 1000  # characters; Temporal limit.maxIDLength
TEMPORAL_MAX_KEYWORD_BYTES = 2048  # bytes; Temporal limit.searchAttributesSizeOfValue

# --- the plan's bounds ------------------------------------------------------------------

# planId and opportunityId: ASCII letters, digits and `_ . : -` only (every byte one character),
# 128 at most. The longest result subject is then executed.timeout.<128> = 145 bytes, and the
# longest KV key 7 + 172 bytes of base64: a few hundred bytes of a 4,096-byte control line with
# any reply inbox a client uses (tests/test_wire_limits.py adds them up).
MAX_ID_CHARS = 128
PLAN_ID_CHARS = r"[A-Za-z0-9_.:-]+"
# The opportunity id is subject tokens: no empty token (a leading, trailing or doubled dot), which no stream takes.
SUBJECT_TOKENS = r"[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*"
# Python's `re` with fullmatch: `$` (as `re.match(r"^...$")` had it) also matches before a final
# newline, which let "opp\n" through to a subject nats-py refuses. The plan model's validators run
# in pydantic's Rust regex, where `^...$` means the whole text; these are for Python code.
PLAN_ID_PATTERN = re.compile(PLAN_ID_CHARS)
SUBJECT_TOKENS_PATTERN = re.compile(SUBJECT_TOKENS)
# What PLANNED accepts (its max_msg_size) and what the bridge parses: a plan must become one
# transaction of at most 1,232 bytes (venue.PACKET_DATA_SIZE), which bounds its instructions and
# accounts far below this. The largest plan that can still build (18 instructions of 64 accounts
# through lookup tables, about 110 KB of JSON) fits; a megabyte of JSON is refused unread.
MAX_PLAN_BYTES = 128 * 1024
# A plan's deadline may be at most this far after the moment it is received. Nothing of a plan is
# sent after its deadline, so every send of a plan id happens within this of its first receipt:
# far inside the 8 days its record lives (executor/records.py RECORD_TTL_S), so a plan id
# published again after its record expired finds its deadline long passed and sends nothing.
MAX_DEADLINE_AHEAD_MS = 3600 * 1000
# maxLatency (ms from start to confirmation) is at most this: no longer than the deadline horizon.
MAX_LATENCY_MS = 600_000
# The error text a rejection echoes back; with the bounded ids, a rejection is a few KiB at most.
MAX_ERROR_CHARS = 1000
# A header value the executor writes (Nats-Msg-Id): printable ASCII only, no CR or LF.
HEADER_VALUE_PATTERN = re.compile(r"[\x21-\x7e]{1,256}")


def is_plan_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS and PLAN_ID_PATTERN.fullmatch(value) is not None


def is_subject_tokens(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS and SUBJECT_TOKENS_PATTERN.fullmatch(value) is not None


def digest_token(value: str | bytes, prefix: str = "h-") -> str:
    """A short, publishable stand-in for a value that is not: the same value always gives the same token."""
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return prefix + hashlib.sha256(data).hexdigest()[:24]


def header_value(value: str) -> str:
    """``value`` if it is a safe header value, else its digest (a CR/LF would end the header early)."""
    return value if HEADER_VALUE_PATTERN.fullmatch(value) else digest_token(value)


def finite_number(value: object) -> float | None:
    """A JSON number as a finite float, or None (a bool, NaN, an infinity, an int past float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
