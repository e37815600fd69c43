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
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        try:
            async with self._get_session().post(self.url, data=body) as response:
                if response.status == 429:
                    raise RpcRateLimited(f"{method}: HTTP 429 from {self.url}")
                if response.status >= 500:
                    raise RpcUnavailable(f"{method}: HTTP {response.status} from {self.url}")
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:  # ValueError: not JSON
            raise RpcUnavailable(f"{method}: {type(error).__name__}: {error}") from None
        if not isinstance(payload, dict):
            raise RpcUnavailable(f"{method}: unexpected answer {str(payload)[:200]}")
        if "error" in payload:
            error = payload["error"] or {}
            raise RpcRefused(error.get("code"), str(error.get("message", error))[:500])
        return payload.get("result")

    async def send_transaction(self, raw: bytes) -> str:
        """sendTransaction, base64, skipPreflight (the planner simulated), maxRetries 0 (we rebroadcast)."""
        options = {"encoding": "base64", "skipPreflight": True, "maxRetries": 0}
        return await self.call("sendTransaction", [base64.b64encode(raw).decode(), options])

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        result = await self.call("getSignatureStatuses", [signatures])
        return [None if item is None else _status(item) for item in result["value"]]

    async def block_height(self, commitment: str = "confirmed") -> int:
        return int(await self.call("getBlockHeight", [{"commitment": commitment}]))
