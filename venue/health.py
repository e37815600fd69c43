"""Endpoint health: which block-engine regions (or RPC nodes) to use now, best first (issue 23, item 3).

The send path reads it through venue/blockengines.py. Per endpoint (a name and its URL):

* latency as an EWMA in milliseconds, `ewma = alpha * sample + (1 - alpha) * ewma` (the first sample
  sets it; `LATENCY_EWMA_ALPHA`, 0.2 by default: the last ~5 samples carry most of the weight);
* a circuit breaker, `Breaker`, whose states and steps are one table (as executor/wire_state.py keeps
  a plan's way to the wire; a step the table does not list raises `IllegalBreakerStep`):

      state       requests
      CLOSED      all
      OPEN        none, until `ENDPOINT_BREAKER_OPEN_S` (60 s) have passed since it opened
      HALF_OPEN   one probe at a time

      TRIPPED         CLOSED -> OPEN        the N-th consecutive failure (`ENDPOINT_BREAKER_FAILURES`, 5)
      COOLED          OPEN -> HALF_OPEN     the open time has passed (seen at the next look)
      PROBE_SUCCEEDED HALF_OPEN -> CLOSED   the probe's answer came back
      PROBE_FAILED    HALF_OPEN -> OPEN     the probe failed: open for another full open time

* a client-side token bucket, `TokenBucket`, at the endpoint's published limit: Jito's default is "1 request
  per second per IP per region" (5 before 2025-02-22; a sender with an approved limit sets its own), answered
  429 past it (jito-labs/jito-docs lowlatencytxnsend.md, "Rate Limits"; the local cluster's regions enforce it the same way, localnet/regions.py). A request past
  the limit waits its turn (`reserve` gives the wait) instead of being refused. The burst is 1 by
  default: the local engine counts its limit over a sliding second (localnet/blockengine.py
  `RateLimiter`), where 5 back-to-back requests and a 6th 0.2 s later meet a 429, so every request
  is spaced by 1/rate. And the board paces at `PACE_SHARE` (80%) of the published limit: requests
  spaced exactly 1/limit apart meet a 429 whenever one arrives a millisecond later than the one five
  before it (a sliding second counts arrivals, and the way there jitters), so 0.25 s apart at 5/s
  leaves 50 ms of jitter before a region refuses.

What counts (`Outcome`):

* `SUCCEEDED`: an answer; its latency feeds the EWMA and it resets the failure count.
* `UNAVAILABLE`: timeout, refused or broken connection, a gateway's 5xx, an answer that cannot be
  trusted (venue/jito.py `JitoUnavailable` and `JitoAnswerUnclear`): counts towards the breaker.
* `RATE_LIMITED`: a 429 says the endpoint is up and answering; it is the limiter's business, not the
  breaker's. The limiter backs off (no request before `Retry-After`, or one interval of its pace) and
  the breaker is untouched. Counting it as a failure would open a healthy region for a minute because
  the client itself sent too fast.
* `REFUSED`: the engine's own JSON-RPC error (a definite refusal of this request, `JitoError`): the
  endpoint answered, so it is healthy; the failure count resets, no latency sample is taken (a
  refusal may be answered faster than an acceptance).

All time comes from an injectable clock (`time.monotonic` by default), so tests drive a fake one.
"""
from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from venue.jito import JitoError, JitoRateLimited, JitoUnavailable

Clock = Callable[[], float]

DEFAULT_FAILURES = 5  # consecutive failures that open a breaker (issue 23's seed)
DEFAULT_OPEN_S = 60.0  # how long a breaker stays open before one probe (issue 23's seed)
DEFAULT_ALPHA = 0.2
JITO_REQUESTS_PER_SECOND = 1.0  # jito-labs/jito-docs lowlatencytxnsend.md, Rate Limits (b5ef793): 1 per IP per region; 5 before fa0e59a
PACE_SHARE = 0.8  # the board paces at this share of the published limit (jitter room; module docstring)


class IllegalBreakerStep(RuntimeError):
    """A step the breaker's table does not allow: a bug in whoever drives it."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def then(self, step: "BreakerStep") -> "BreakerState":
        """The state after `step`; `IllegalBreakerStep` where the table has no such step from this state."""
        after = _STEPS[step].get(self)
        if after is None:
            raise IllegalBreakerStep(f"{step.name} is not a step from {self.name}")
        return after


class BreakerStep(enum.Enum):
    TRIPPED = "tripped"
    COOLED = "cooled"
    PROBE_SUCCEEDED = "probe succeeded"
    PROBE_FAILED = "probe failed"


_B = BreakerState
_STEPS: dict[BreakerStep, dict[BreakerState, BreakerState]] = {
    BreakerStep.TRIPPED: {_B.CLOSED: _B.OPEN},
    BreakerStep.COOLED: {_B.OPEN: _B.HALF_OPEN},
    BreakerStep.PROBE_SUCCEEDED: {_B.HALF_OPEN: _B.CLOSED},
    BreakerStep.PROBE_FAILED: {_B.HALF_OPEN: _B.OPEN},
}


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    UNAVAILABLE = "unavailable"  # counts towards the breaker
    RATE_LIMITED = "rate limited"  # the limiter backs off; the breaker does not count it
    REFUSED = "refused"  # a definite answer: the endpoint is up


def outcome_of(error: BaseException) -> Outcome:
    """What a venue/jito.py error says about the endpoint's health (see the module docstring)."""
    if isinstance(error, JitoRateLimited):
        return Outcome.RATE_LIMITED
    if isinstance(error, JitoUnavailable):  # includes JitoAnswerUnclear
        return Outcome.UNAVAILABLE
    if isinstance(error, JitoError):
        return Outcome.REFUSED
    if isinstance(error, (TimeoutError, ConnectionError, OSError)):
        return Outcome.UNAVAILABLE
    raise TypeError(f"{type(error).__name__} says nothing about an endpoint's health")


class Breaker:
    """One endpoint's circuit breaker (the table above). `allow()` takes the half-open probe."""

    def __init__(self, failures: int = DEFAULT_FAILURES, open_s: float = DEFAULT_OPEN_S, clock: Clock = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("failures must be 1 or more")
        if open_s <= 0:
            raise ValueError("open_s must be positive")
        self.failures = failures
        self.open_s = open_s
        self.clock = clock
        self._state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probe_since: float | None = None  # when the half-open probe was let through

    def _step(self, step: BreakerStep) -> None:
        self._state = self._state.then(step)

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose open time has passed is half-open."""
        if self._state is BreakerState.OPEN and self.clock() - self.opened_at >= self.open_s:
            self._step(BreakerStep.COOLED)
            self._probe_since = None
        return self._state

    def peek(self) -> BreakerState:
        """The state `state` would give now, without taking the cooling step: for readers on another
        thread (the metrics scrape, worker/metrics.py), which must not step the breaker or free its
        probe under the event loop's feet. (Read between `_open`'s two writes, a first opening has no
        `opened_at` yet: it reads as open.)"""
        state, opened_at = self._state, self.opened_at
        if state is BreakerState.OPEN and opened_at is not None and self.clock() - opened_at >= self.open_s:
            return BreakerState.HALF_OPEN
        return state

    def may_try(self) -> bool:
        """Would `allow()` let a request through now? (Takes nothing.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            # A probe whose outcome never came (cancelled) frees its place after another open time.
            return self._probe_since is None or self.clock() - self._probe_since >= self.open_s
        return False

    def allow(self) -> bool:
        """May a request go now? In half-open, True once: that request is the probe."""
        if not self.may_try():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probe_since = self.clock()
        return True

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._step(BreakerStep.PROBE_SUCCEEDED)
            self._probe_since = None
        # OPEN: a late answer to a request sent before it opened; the probe decides, not it.

    def failed(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failures:
                self._open(BreakerStep.TRIPPED)
        elif state is BreakerState.HALF_OPEN:
            self._open(BreakerStep.PROBE_FAILED)

    def _open(self, step: BreakerStep) -> None:
        self._step(step)
        self.opened_at = self.clock()
        self._probe_since = None
        self.consecutive_failures = 0


class TokenBucket:
    """`rate` requests per second, `burst` back to back. `reserve()` takes a place and says how long to
    wait for it (0: now): a burst is spread over time, never refused."""

    def __init__(self, rate: float = JITO_REQUESTS_PER_SECOND, burst: int = 1, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be 1 or more")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._not_before = self._at  # a 429's back-off: no request before this

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait_now(self) -> float:
        """How long a request would wait if it took the next place now (takes nothing)."""
        now = self.clock()
        self._refill(now)
        wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
        return max(wait, self._not_before - now)

    def reserve(self) -> float:
        """Take the next place; the seconds to wait before sending (the tokens may go below zero: a queue)."""
        now = self.clock()
        self._refill(now)
        self._tokens -= 1.0
        wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        return max(wait, self._not_before - now)

    async def acquire(self, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> float:
        """Wait for the next place; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            await sleep(wait)
        return wait

    def back_off(self, seconds: float | None = None) -> None:
        """After a 429: no request for `seconds` (its Retry-After), or one interval; the bucket empties."""
        now = self.clock()
        self._refill(now)
        pause = 1.0 / self.rate if seconds is None else max(0.0, seconds)
        self._not_before = max(self._not_before, now + pause)
        self._tokens = min(self._tokens, 0.0)


@dataclass
class Endpoint:
    """One endpoint's health: its breaker, its limiter, its latency."""

    name: str
    url: str
    breaker: Breaker
    limiter: TokenBucket
    alpha: float = DEFAULT_ALPHA
    latency_ms: float | None = None  # EWMA; None until the first answer
    counts: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def record_success(self, latency_ms: float) -> None:
        self.counts[Outcome.SUCCEEDED.value] += 1
        sample = max(0.0, float(latency_ms))
        self.latency_ms = sample if self.latency_ms is None else self.alpha * sample + (1 - self.alpha) * self.latency_ms
        self.breaker.succeeded()

    def record_failure(self, outcome: Outcome | BaseException, retry_after_s: float | None = None) -> None:
        """`outcome` or the error itself (venue/jito.py's); a `JitoRateLimited`'s Retry-After is used."""
        if isinstance(outcome, BaseException):
            if isinstance(outcome, JitoRateLimited) and retry_after_s is None:
                retry_after_s = outcome.retry_after_s
            outcome = outcome_of(outcome)
        self.counts[outcome.value] += 1
        if outcome is Outcome.UNAVAILABLE:
            self.breaker.failed()
        elif outcome is Outcome.RATE_LIMITED:
            self.limiter.back_off(retry_after_s)
        elif outcome is Outcome.REFUSED:
            self.breaker.succeeded()  # it answered: up
        else:
            raise ValueError("a success is recorded with record_success(latency_ms)")


class EndpointUnavailable(RuntimeError):
    """No endpoint may take a request now: every breaker is open (or its probe is out)."""


class HealthBoard:
    """Several endpoints; `ranked()` answers "which to use now, best first", so failover needs no operator.

    Closed breakers first, by EWMA latency (an endpoint not yet measured after the measured ones, in
    the order given); then half-open ones whose probe is free; open ones never."""

    def __init__(
        self,
        endpoints: Mapping[str, str] | Iterable[str],
        *,
        failures: int = DEFAULT_FAILURES,
        open_s: float = DEFAULT_OPEN_S,
        rate: float = JITO_REQUESTS_PER_SECOND,
        burst: int = 1,
        alpha: float = DEFAULT_ALPHA,
        pace_share: float = PACE_SHARE,
        clock: Clock = time.monotonic,
    ) -> None:
        """`rate`: the endpoints' published limit (requests per second); each is paced at `rate * pace_share`."""
        if not 0 < pace_share <= 1:
            raise ValueError("pace_share must be in (0, 1]")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        pairs = endpoints.items() if isinstance(endpoints, Mapping) else ((url, url) for url in endpoints)
        self.clock = clock
        self.endpoints: dict[str, Endpoint] = {
            name: Endpoint(name, url, Breaker(failures, open_s, clock), TokenBucket(rate * pace_share, burst, clock), alpha) for name, url in pairs
        }
        if not self.endpoints:
            raise ValueError("a health board needs at least one endpoint")

    @classmethod
    def from_settings(cls, settings, endpoints: Mapping[str, str] | Iterable[str] | None = None, clock: Clock = time.monotonic) -> HealthBoard:
        """From the executor's settings (settings/executor.py `JitoSettings` and `EndpointHealthSettings`);
        the endpoints default to `jito_block_engine_urls`."""
        return cls(
            settings.jito_block_engine_urls if endpoints is None else endpoints,
            failures=settings.endpoint_breaker_failures,
            open_s=settings.endpoint_breaker_open_s,
            rate=settings.jito_requests_per_second,
            burst=settings.jito_requests_burst,
            alpha=settings.latency_ewma_alpha,
            clock=clock,
        )

    def __getitem__(self, name: str) -> Endpoint:
        return self.endpoints[name]

    def ranked(self) -> list[Endpoint]:
        """The endpoints to use now, best first (takes nothing: `take` lets the probe through)."""
        order = {name: i for i, name in enumerate(self.endpoints)}
        closed = [e for e in self.endpoints.values() if e.state is BreakerState.CLOSED]
        closed.sort(key=lambda e: (e.latency_ms is None, e.latency_ms or 0.0, order[e.name]))
        probing = [e for e in self.endpoints.values() if e.state is BreakerState.HALF_OPEN and e.breaker.may_try()]
        return closed + probing

    def take(self) -> Endpoint:
        """The best endpoint that lets a request through now (a half-open one's probe is taken)."""
        for endpoint in self.ranked():
            if endpoint.breaker.allow():
                return endpoint
        raise EndpointUnavailable("every endpoint's breaker is open")

    async def call(self, request: Callable[[Endpoint], Awaitable[object]], *, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> object:
        """One request to the best endpoint, paced by its limiter and recorded: its answer, or its error raised.

        No retry here: whoever calls decides whether to resend (venue/jito.py's rules)."""
        endpoint = self.take()
        await endpoint.limiter.acquire(sleep)
        started = self.clock()
        try:
            answer = await request(endpoint)
        except (JitoError, TimeoutError, OSError) as error:
            endpoint.record_failure(error)
            raise
        endpoint.record_success((self.clock() - started) * 1000.0)
        return answer


__all__ = [
    "Breaker",
    "BreakerState",
    "BreakerStep",
    "Endpoint",
    "EndpointUnavailable",
    "HealthBoard",
    "IllegalBreakerStep",
    "Outcome",
    "TokenBucket",
    "outcome_of",
]
