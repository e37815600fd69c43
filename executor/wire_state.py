"""Where a plan's transaction stands on its way to the wire, in this process: one state and the steps
between states, in one table. A step the table does not list raises `IllegalStep`.

Written the way agave's tpu-client-next keeps a connection's `ConnectionState` (an enum, and one
place that knows which change is allowed), so that "has this plan's transaction left, and who may
still send it?" has one answer per state (`WireState.left`, `WireState.sender`) instead of a string
and three flags read in three files.

    state       has it left?   who may still send it
    PREPARING   not known      not known yet: the record is being read, or the transaction built and recorded
    UNSENT      no             this dispatch (it recorded it; a refusal now voids the record)
    FOUND       maybe          this dispatch once it claims the record (another run recorded it)
    SENDING     maybe          this dispatch's send, under way (of an UNSENT transaction)
    RESENDING   maybe          this dispatch's send, under way (of a transaction that may be out)
    MAYBE_OUT   maybe          this dispatch, again (the same bytes: a signature lands at most once)
    WITHHELD    maybe          a run that claims the record; this one only follows it on chain
    VOID        no, never      nobody: the record is void

The steps (`Step`), each from the states it may leave:

    RECORDED_HERE  PREPARING -> UNSENT       this dispatch created the record (or, with no record
                                             at all, as bench's direct path runs, signed it)
    FOUND_RECORD   PREPARING -> FOUND        the plan's record was there already, or another run
                                             created it first
    VOIDED         PREPARING, UNSENT, FOUND -> VOID
                                             the record is void: found so, or voided by this
                                             dispatch's refusal of its own unsent transaction
    CLAIMED        FOUND -> MAYBE_OUT        the record's revision bumped before a resend, so its
                                             writer can no longer void it
    SEND           UNSENT -> SENDING, MAYBE_OUT -> RESENDING
    NOTHING_LEFT   SENDING -> UNSENT, RESENDING -> MAYBE_OUT
                                             the venue took nothing (a definite refusal, a rate limit)
    MAY_BE_OUT     SENDING, RESENDING -> MAYBE_OUT
                                             accepted, or the answer was lost, or the send was cancelled
    WITHHELD       UNSENT, FOUND, MAYBE_OUT -> WITHHELD
                                             refused now and not provably unsent (or its void lost to
                                             another run's claim): confirm follows the record on chain

FOUND has no SEND step: someone else's record is claimed before this dispatch resends it. Only
UNSENT may be voided: only what this dispatch recorded and never sent is provably not out.

Whether a dispatch is still held in this process (until the workflow's `execute` claims it, or
nobody will and it is abandoned) is not a state here but the dispatcher's map of open dispatches:
an abandoned dispatch's send ahead may still be under way, and its steps still apply (the plan's
run, wherever it runs, finds the record and follows it).
"""
from __future__ import annotations

import enum


class Left(enum.Enum):
    """Has the plan's transaction left for the wire?"""

    NO = "no"  # provably not: only this dispatch holds it, or the record is void
    MAYBE = "maybe"  # it may be on the wire: only the chain can tell (confirm follows its signature)
    NOT_KNOWN = "not known"  # the record is still being read


class Sender(enum.Enum):
    """Who may still put the plan's transaction on the wire."""

    THIS_DISPATCH = "this dispatch"
    THIS_DISPATCH_ONCE_CLAIMED = "this dispatch, once it claims the record"
    SENDING_NOW = "this dispatch's send, under way"
    A_RUN_THAT_CLAIMS_IT = "a run that claims the record"
    NOBODY = "nobody"
    NOT_KNOWN = "not known yet"


class IllegalStep(RuntimeError):
    """A step the state table does not allow: a bug in the dispatch, never a plan's fault."""


class WireState(enum.Enum):
    PREPARING = "preparing"
    UNSENT = "unsent"
    FOUND = "found"
    SENDING = "sending"
    RESENDING = "resending"
    MAYBE_OUT = "maybe out"
    WITHHELD = "withheld"
    VOID = "void"

    def then(self, step: "Step") -> "WireState":
        """The state after `step`; `IllegalStep` where the table has no such step from this state."""
        after = _STEPS[step].get(self)
        if after is None:
            raise IllegalStep(f"{step.name} is not a step from {self.name}")
        return after

    @property
    def left(self) -> Left:
        """Has this plan's transaction left for the wire? (The table in this module's docstring.)"""
        return _ANSWERS[self][0]

    @property
    def sender(self) -> Sender:
        """Who may still send it? (The table in this module's docstring.)"""
        return _ANSWERS[self][1]

    @property
    def prepared(self) -> bool:
        """Prepared and not yet sent by this dispatch (a send ahead may start)."""
        return self in (WireState.UNSENT, WireState.FOUND)


class Step(enum.Enum):
    RECORDED_HERE = "recorded here"
    FOUND_RECORD = "found a record"
    VOIDED = "voided"
    CLAIMED = "claimed the record"
    SEND = "send"
    NOTHING_LEFT = "nothing left"
    MAY_BE_OUT = "may be out"
    WITHHELD = "withheld"


_S = WireState
_STEPS: dict[Step, dict[WireState, WireState]] = {
    Step.RECORDED_HERE: {_S.PREPARING: _S.UNSENT},
    Step.FOUND_RECORD: {_S.PREPARING: _S.FOUND},
    Step.VOIDED: {_S.PREPARING: _S.VOID, _S.UNSENT: _S.VOID, _S.FOUND: _S.VOID},
    Step.CLAIMED: {_S.FOUND: _S.MAYBE_OUT},
    Step.SEND: {_S.UNSENT: _S.SENDING, _S.MAYBE_OUT: _S.RESENDING},
    Step.NOTHING_LEFT: {_S.SENDING: _S.UNSENT, _S.RESENDING: _S.MAYBE_OUT},
    Step.MAY_BE_OUT: {_S.SENDING: _S.MAYBE_OUT, _S.RESENDING: _S.MAYBE_OUT},
    Step.WITHHELD: {_S.UNSENT: _S.WITHHELD, _S.FOUND: _S.WITHHELD, _S.MAYBE_OUT: _S.WITHHELD},
}

_ANSWERS: dict[WireState, tuple[Left, Sender]] = {
    _S.PREPARING: (Left.NOT_KNOWN, Sender.NOT_KNOWN),
    _S.UNSENT: (Left.NO, Sender.THIS_DISPATCH),
    _S.FOUND: (Left.MAYBE, Sender.THIS_DISPATCH_ONCE_CLAIMED),
    _S.SENDING: (Left.MAYBE, Sender.SENDING_NOW),
    _S.RESENDING: (Left.MAYBE, Sender.SENDING_NOW),
    _S.MAYBE_OUT: (Left.MAYBE, Sender.THIS_DISPATCH),
    _S.WITHHELD: (Left.MAYBE, Sender.A_RUN_THAT_CLAIMS_IT),
    _S.VOID: (Left.NO, Sender.NOBODY),
}

