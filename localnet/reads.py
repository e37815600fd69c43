"""The `reads` fault channel: the status reads a sender relies on to learn a transaction's fate.

A sender decides "landed", "expired" or "ask again" from getSignatureStatuses,
getBlockHeight and getTransaction (and a Jito sender from getBundleStatuses and
getInflightBundleStatuses). These fail in production in ways the intake channels do not
cover: a provider's 429, a node pulled out of its load balancer (503), an answer that
comes late. The verdict is per HTTP request, so a batch is refused or delayed whole and,
when answered, is answered in order by the one node.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiohttp import web

from .faults import READS, FaultPlan, Verdict
from .jsonrpc import Admission, HttpStatus

log = logging.getLogger("localnet.reads")

RPC_READ_METHODS = frozenset({"getSignatureStatuses", "getBlockHeight", "getTransaction"})
BLOCK_ENGINE_READ_METHODS = frozenset({"getBundleStatuses", "getInflightBundleStatuses"})
# What Envoy, in front of most RPC providers, answers when no node behind it is healthy.
UNAVAILABLE_BODY = "no healthy upstream"


def read_fault_gate(server: str, faults: FaultPlan, counters: Counter[str], read_methods: frozenset[str], rate_limited_body: dict) -> Admission:
    """An admission step applying the reads channel to any request that asks for one of `read_methods`.

    `rate_limited_body` is the server's own 429 body, so a client classifies the injected 429
    as it would that server's real one.
    """

    async def admit(request: web.Request, methods: list[str]) -> None:
        if not read_methods.intersection(methods):
            return
        if faults.rate_limited(READS):
            counters[f"{READS}.rate_limited"] += 1
            log.debug("read refused server=%s fault=rate_limited status=429 methods=%s", server, ",".join(methods))
            raise HttpStatus(429, rate_limited_body)
        delay_ms = faults.reads.delay_ms
        if delay_ms:
            counters[f"{READS}.delayed"] += 1
            await asyncio.sleep(delay_ms / 1000)
        if faults.decide(READS) is Verdict.reject:
            counters[f"{READS}.reject"] += 1
            log.debug("read refused server=%s fault=reject status=503 methods=%s", server, ",".join(methods))
            raise HttpStatus(503, UNAVAILABLE_BODY)

    return admit
