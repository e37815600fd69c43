"""The product's one Solana JSON-RPC client: every call the executor makes to a node, over one
kept-alive aiohttp connection pool per instance.

Why not solana-py's AsyncClient (httpx): measured on this machine, httpx tops out near 500
requests/s (about 2 ms of CPU each), aiohttp above 3,000; at 20 plans/s the status poller alone
makes 40 requests/s, so the difference is CPU the workflows need (docs/architecture.md section 14).
solana-py stays for the tests, which drive the local cluster with it as a user would.

Methods answer solders types or plain data. Every failure is an RpcError, in three kinds a
caller may need to tell apart (a sender does: a timeout may have delivered, a 429 did not).
"""
from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass

import aiohttp
from solders.account import Account
from solders.hash import Hash
from solders.pubkey import Pubkey

from .urls import redacted, shown_url


class RpcError(Exception):
    """A JSON-RPC call failed, one of the three ways below."""


class RpcRateLimited(RpcError):
    """HTTP 429: nothing was accepted; retry later."""


class RpcRefused(RpcError):
    """The node answered with a JSON-RPC error: a definite refusal."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


class RpcUnavailable(RpcError):
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


@dataclass(frozen=True)
class ClusterNode:
    """One getClusterNodes entry, the fields the TPU client reads ("ip:port" strings, as sent)."""

    pubkey: str | None
    tpu: str | None
    tpu_quic: str | None


def _account(item: dict | None) -> Account | None:
    """A base64-encoded account of getAccountInfo / getMultipleAccounts; None where there is none."""
    if item is None:
        return None
    data, encoding = item["data"]
    if encoding != "base64":
        raise RpcUnavailable(f"account data in {encoding}, asked for base64")
    return Account(
        lamports=int(item["lamports"]),
        data=base64.b64decode(data),
        owner=Pubkey.from_string(item["owner"]),
        executable=bool(item["executable"]),
        rent_epoch=int(item.get("rentEpoch", 0)),
    )


class SolanaRpc:
    """`transport_retries`: how often a request that got no answer at all (connection or timeout)
    is sent again. 0 for anything that sends: a send that may have arrived is followed on chain,
    never repeated blindly. Background reads use 1, as solana-py's client did."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, max_connections: int = 32, transport_retries: int = 0) -> None:
        self.url = url  # may carry an API key: shown only as `self.shown` (venue/urls.py)
        self.shown = shown_url(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._transport_retries = transport_retries
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
        data = json.dumps(body)
        retries = self._transport_retries
        while True:
            try:
                async with self._get_session().post(self.url, data=data) as response:
                    if response.status == 429:
                        raise RpcRateLimited(f"{method}: HTTP 429 from {self.shown}")
                    if response.status >= 500:
                        raise RpcUnavailable(f"{method}: HTTP {response.status} from {self.shown}")
                    return await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as error:
                if retries > 0:  # no answer at all, and the caller allows another try
                    retries -= 1
                    continue
                raise RpcUnavailable(f"{method}: {type(error).__name__}: {redacted(str(error), self.url)}") from None
            except ValueError as error:  # not JSON
                raise RpcUnavailable(f"{method}: {type(error).__name__}: {redacted(str(error), self.url)}") from None

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

    # Reads off the hot path (blockhash refresher, lookup tables, reserves, balances, leader
    # tracking). No default commitment: each caller names the one it has always read at.

    async def latest_blockhash(self, commitment: str) -> tuple[Hash, int]:
        """The latest blockhash and its lastValidBlockHeight."""
        value = (await self.call("getLatestBlockhash", [{"commitment": commitment}]))["value"]
        return Hash.from_string(value["blockhash"]), int(value["lastValidBlockHeight"])

    async def account_info(self, address: Pubkey, commitment: str) -> Account | None:
        """One account, base64; None if it does not exist."""
        answer = await self.call("getAccountInfo", [str(address), {"encoding": "base64", "commitment": commitment}])
        return _account(answer["value"])

    async def multiple_accounts(self, addresses: list[Pubkey], commitment: str) -> list[Account | None]:
        """Up to 100 accounts (the node's limit) in one request, base64, in the order asked; None where none exists."""
        answer = await self.call("getMultipleAccounts", [[str(a) for a in addresses], {"encoding": "base64", "commitment": commitment}])
        return [_account(item) for item in answer["value"]]

    async def slot(self, commitment: str) -> int:
        return int(await self.call("getSlot", [{"commitment": commitment}]))

    async def slot_leaders(self, start: int, limit: int) -> list[str]:
        """The leaders of slots start .. start + limit - 1 (limit at most 5000), as base58 identities."""
        return list(await self.call("getSlotLeaders", [start, limit]))

    async def cluster_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(node.get("pubkey"), node.get("tpu"), node.get("tpuQuic")) for node in await self.call("getClusterNodes", [])]


def _result(payload: dict) -> object:
    if "error" in payload:
        error = payload["error"] or {}
        raise RpcRefused(error.get("code"), str(error.get("message", error))[:500])
    return payload.get("result")
