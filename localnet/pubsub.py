"""Solana's websocket PubSub: slotSubscribe and signatureSubscribe, as agave's rpc/src/rpc_pubsub.rs serves them."""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass

from aiohttp import WSMsgType, web
from solders.signature import Signature

from .ledger import Commitment, Ledger, error_json

log = logging.getLogger("localnet.pubsub")


@dataclass
class Subscription:
    id: int
    socket: web.WebSocketResponse
    kind: str  # "slot" | "signature"
    signature: Signature | None = None
    commitment: Commitment = Commitment.finalized


class PubSub:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await socket.prepare(request)
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    payload = json.loads(message.data)
                except ValueError:
                    await socket.send_str(json.dumps({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}))
                    continue
                for item in payload if isinstance(payload, list) else [payload]:
                    await self._call(socket, item)
        finally:
            for sub_id in [s.id for s in self.subscriptions.values() if s.socket is socket]:
                self.subscriptions.pop(sub_id, None)
        return socket

    async def _call(self, socket: web.WebSocketResponse, item: dict) -> None:
        request_id = item.get("id") if isinstance(item, dict) else None
        method = item.get("method") if isinstance(item, dict) else None
        params = item.get("params") or [] if isinstance(item, dict) else []

        async def answer(result=None, error=None) -> None:
            body = {"jsonrpc": "2.0", "id": request_id}
            body.update({"error": error} if error else {"result": result})
            await socket.send_str(json.dumps(body))

        if method == "slotSubscribe":
            sub = Subscription(next(self._ids), socket, "slot")
            self.subscriptions[sub.id] = sub
            await answer(sub.id)
        elif method == "signatureSubscribe":
            try:
                signature = Signature.from_string(params[0])
                cfg = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
                commitment = Commitment(cfg.get("commitment", "finalized"))
            except (IndexError, ValueError, TypeError):
                await answer(error={"code": -32602, "message": "Invalid params"})
                return
            sub = Subscription(next(self._ids), socket, "signature", signature, commitment)
            self.subscriptions[sub.id] = sub
            await answer(sub.id)
            await self._notify_signature(sub)  # already at that commitment: notify at once, as agave does
        elif method in ("slotUnsubscribe", "signatureUnsubscribe"):
            sub_id = params[0] if params else None
            existed = self.subscriptions.pop(sub_id, None) is not None
            if existed:
                await answer(True)
            else:
                await answer(error={"code": -32602, "message": "Invalid subscription id."})
        else:
            await answer(error={"code": -32601, "message": "Method not found"})

    async def after_block(self, completed_slot: int) -> None:
        """Called by the slot clock after each block: slot notifications, then signatures that reached their level."""
        for sub in list(self.subscriptions.values()):
            try:
                if sub.kind == "slot":
                    root = self.ledger.slot_at(Commitment.finalized)
                    await self._send(sub, "slotNotification", {"parent": completed_slot - 1, "root": root, "slot": completed_slot})
                else:
                    await self._notify_signature(sub)
            except ConnectionError:
                self.subscriptions.pop(sub.id, None)

    async def _notify_signature(self, sub: Subscription) -> None:
        record = self.ledger.records.get(sub.signature)
        if record is None or not self.ledger.reaches(record.slot, sub.commitment):
            return
        self.subscriptions.pop(sub.id, None)  # signature subscriptions end after one notification
        result = {"context": {"slot": self.ledger.slot_at(sub.commitment)}, "value": {"err": error_json(record.err)}}
        await self._send(sub, "signatureNotification", result)

    async def _send(self, sub: Subscription, method: str, result: dict) -> None:
        if sub.socket.closed:
            self.subscriptions.pop(sub.id, None)
            return
        await sub.socket.send_str(
            json.dumps({"jsonrpc": "2.0", "method": method, "params": {"result": result, "subscription": sub.id}})
        )
