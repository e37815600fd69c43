"""How an activity reports a plan-level failure: an ApplicationError whose type is the error code.

Codes that retrying cannot fix are non-retryable, so the workflow fails fast; RATE_LIMITED
and NO_WALLET are retried with backoff (within the plan's deadline).
"""
from __future__ import annotations

from typing import NoReturn

from temporalio.exceptions import ApplicationError

from workflows.events import ErrorCode

# A busy wallet frees up within a slot or two; a rate limit passes. Everything else is final.
RETRYABLE = {ErrorCode.RATE_LIMITED, ErrorCode.NO_WALLET}


def fail(code: ErrorCode, message: str, *, final: bool | None = None) -> NoReturn:
    """`final` overrides the code's default (e.g. NO_WALLET for a wallet no key store holds)."""
    non_retryable = code not in RETRYABLE if final is None else final
    raise ApplicationError(message, type=code.value, non_retryable=non_retryable)
