"""How the executor says a plan cannot go on: a `PlanFailure` carrying the plan's error code.

The executor speaks the plan's language, not Temporal's: it raises `PlanFailure`, and the one
place that turns it into Temporal's ApplicationError (type = the code, non_retryable = not
retryable) is the activity edge, `activities/execution.py`, as the Temporal Python samples
translate domain errors where an activity returns. So `executor/` runs and is tested without
the Temporal SDK.

Codes that retrying cannot fix are not retryable, so the workflow fails fast; RATE_LIMITED
and NO_WALLET are retried with backoff (within the plan's deadline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from workflows.events import ErrorCode

# A busy wallet frees up within a slot or two; a rate limit passes. Everything else is final.
RETRYABLE = {ErrorCode.RATE_LIMITED, ErrorCode.NO_WALLET}


class PlanFailure(Exception):
    """The plan cannot go on now: `code` is its error code; `retryable` says whether another attempt
    (within the plan's deadline) may succeed."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"PlanFailure({self.code.value}, {self.message!r}, retryable={self.retryable})"


@dataclass(frozen=True)
class GateRefusal:
    """Why the send gate keeps a plan off the wire now (`Submitter.refusal`), and whether that is
    `final`: a halt or a passed deadline is; a kill switch this worker cannot hear is not (it may be
    heard again before the deadline)."""

    code: ErrorCode
    why: str
    final: bool

    def fail(self) -> NoReturn:
        """Raise it: nothing left, and the caller voids or withholds (final) or retries (not final)."""
        fail(self.code, self.why, final=self.final)


def fail(code: ErrorCode, message: str, *, final: bool | None = None) -> NoReturn:
    """`final` overrides the code's default (e.g. NO_WALLET for a wallet no key store holds)."""
    retryable = code in RETRYABLE if final is None else not final
    raise PlanFailure(code, message, retryable=retryable)
