"""The Solana JSON-RPC calls on the hot path and in the status poller, over one kept-alive
aiohttp connection pool.

solana-py's AsyncClient (httpx) stays for everything else (balances, lookup tables,
getTransaction for settle). Measured on this machine: httpx tops out near 500 requests/s
(about 2 ms of CPU each), aiohttp above 3,000; at 20 plans/s the poller alone makes 40
requests/s, so the difference is CPU the workflows need.
"""
from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass

import aiohttp


class RpcRateLimited(Exception):
    """HTTP 429: nothing was accepted; retry later."""


class RpcRefused(Exception):
    """The node answered with a JSON-RPC error: a definite refusal."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


class RpcUnavailable(Exception):
    """No answer (connection, timeout, 5xx): it may or may not have arrived."""


@dataclass(frozen=True)
class SignatureStatus:
    slot: int
    confirmation_status: str | None  # processed | confirmed | finalized
    err: object


def _status(item: dict) -> SignatureStatus:
    level = item.get("confirmationStatus")
    if level is None:  # nodes before confirmationStatus existed: no confirmations count means rooted
        level = "finalized" if item.get("confirmations") is None else "processed"
    return SignatureStatus(item["slot"], level, item.get("err"))


class SolanaRpc:
    def __init__(self, url: str, *, timeout_s: float = 2.0, max_connections: int = 32) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30),
                timeout=self._timeout,
                headers={"Content-Type": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, params: list) -> object:
        payload = await self._post(method, {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        if not isinstance(payload, dict):
            raise RpcUnavailable(f"{method}: unexpected answer {str(payload)[:200]}")
        return _result(payload)

    async def batch(self, calls: list[tuple[str, list]]) -> list[object]:
        """Several calls in one HTTP request: one node answers them in order, so together they are
        one view of the chain (a load balancer may send separate requests to nodes that disagree)."""
        first = next(self._ids)
        body = [{"jsonrpc": "2.0", "id": first + i, "method": method, "params": params} for i, (method, params) in enumerate(calls)]
        for _ in calls[1:]:
            next(self._ids)
        names = "+".join(method for method, _ in calls)
        payload = await self._post(names, body)
        if not isinstance(payload, list) or len(payload) != len(calls):
            raise RpcUnavailable(f"{names}: unexpected answer {str(payload)[:200]}")
        by_id = {item.get("id"): item for item in payload if isinstance(item, dict)}
        if set(by_id) != {first + i for i in range(len(calls))}:
            raise RpcUnavailable(f"{names}: answers do not match the calls")
        return [_result(by_id[first + i]) for i in range(len(calls))]

    async def _post(self, method: str, body: object) -> object:
        try:
            async with self._get_session().post(self.url, data=json.dumps(body)) as response:
                if response.status == 429:
                    raise RpcRateLimited(f"{method}: HTTP 429 from {self.url}")
                if response.status >= 500:
                    raise RpcUnavailable(f"{method}: HTTP {response.status} from {self.url}")
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:  # ValueError: not JSON
            raise RpcUnavailable(f"{method}: {type(error).__name__}: {error}") from None

    async def send_transaction(self, raw: bytes) -> str:
        """sendTransaction, base64, skipPreflight (the planner simulated), maxRetries 0 (we rebroadcast)."""
        options = {"encoding": "base64", "skipPreflight": True, "maxRetries": 0}
        return await self.call("sendTransaction", [base64.b64encode(raw).decode(), options])

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        """From the node's recent status cache (about 300 slots): cheap, for polling what is in flight."""
        result = await self.call("getSignatureStatuses", [signatures])
        return [None if item is None else _status(item) for item in result["value"]]

    async def block_height(self, commitment: str = "confirmed") -> int:
        return int(await self.call("getBlockHeight", [{"commitment": commitment}]))

    async def landed_or_expired(self, signature: str, commitment: str) -> tuple[int, SignatureStatus | None]:
        """The block height, then the signature's status searched through the node's whole history,
        in one request: if the status is None and the height is past the transaction's
        lastValidBlockHeight, the chain says it never landed and never will."""
        height, statuses = await self.batch(
            [
                ("getBlockHeight", [{"commitment": commitment}]),
                ("getSignatureStatuses", [[signature], {"searchTransactionHistory": True}]),
            ]
        )
        item = statuses["value"][0]
        return int(height), None if item is None else _status(item)


def _result(payload: dict) -> object:
    if "error" in payload:
        error = payload["error"] or {}
        raise RpcRefused(error.get("code"), str(error.get("message", error))[:500])
    return payload.get("result")
