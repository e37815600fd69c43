"""JSON-RPC 2.0 over HTTP POST, as Solana's RPC and Jito's block engine both serve it (batches too)."""
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("localnet.jsonrpc")

Handler = Callable[[list | dict, web.Request], Awaitable[Any]]
# Runs once per HTTP request, before any call in it, with the methods it asks for (none
# when the body is not JSON-RPC); it may answer the whole request instead (HttpStatus).
Admission = Callable[[web.Request, list[str]], Awaitable[None]]
# Headers a handler sets beside the JSON body (Jito's x-bundle-id).
RESPONSE_HEADERS = web.RequestKey("response_headers", dict)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class RpcError(Exception):
    """An error answered as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None, http_status: int = 200):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status

    def to_json(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class HttpStatus(Exception):
    """Answer the whole HTTP request with this status and body (e.g. Jito's 429): JSON, or plain text
    when the answer comes from something in front of the server (a load balancer's 503)."""

    def __init__(self, status: int, body: dict | str):
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(text=self.body, status=self.status, content_type="text/plain")
        return _json(self.body, status=self.status)


class JsonRpcApp:
    """Dispatches JSON-RPC calls to async handlers by method name."""

    def __init__(self, name: str, admit: Admission | None = None) -> None:
        self.name = name
        self.methods: dict[str, Handler] = {}
        self.admit = admit

    def method(self, name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.methods[name] = handler
            return handler

        return register

    async def handle_http(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            payload = _UNPARSED
        try:
            if self.admit is not None:
                await self.admit(request, _methods(payload))
        except HttpStatus as status:
            return status.response()
        if payload is _UNPARSED:
            return _json({"jsonrpc": "2.0", "error": {"code": PARSE_ERROR, "message": "Parse error"}, "id": None})
        try:
            if isinstance(payload, list):
                if not payload:
                    return _json({"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": "Invalid request"}, "id": None})
                # In order, one at a time, on the cluster's loop: read handlers never await,
                # so a batch of reads sees one ledger state, as the one node answering it would.
                answers = [await self.call(item, request) for item in payload]
                response = _json(answers)
            else:
                response = _json(await self.call(payload, request))
        except HttpStatus as status:
            return status.response()
        response.headers.update(request.get(RESPONSE_HEADERS, {}))
        return response

    async def call(self, item: Any, request: web.Request) -> dict:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or not isinstance(item.get("method"), str):
            return {"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": "Invalid request"}, "id": _id(item)}
        request_id = item.get("id")
        handler = self.methods.get(item["method"])
        if handler is None:
            return {"jsonrpc": "2.0", "error": {"code": METHOD_NOT_FOUND, "message": "Method not found"}, "id": request_id}
        params = item.get("params", [])
        if not isinstance(params, (list, dict)):
            return {"jsonrpc": "2.0", "error": {"code": INVALID_PARAMS, "message": "Invalid params"}, "id": request_id}
        try:
            result = await handler(params, request)
        except RpcError as error:
            return {"jsonrpc": "2.0", "error": error.to_json(), "id": request_id}
        except HttpStatus:
            raise
        except Exception as error:  # test equipment must answer, never crash
            log.exception("%s %s failed", self.name, item["method"])
            return {"jsonrpc": "2.0", "error": {"code": INTERNAL_ERROR, "message": f"Internal error: {error}"}, "id": request_id}
        return {"jsonrpc": "2.0", "result": result, "id": request_id}


_UNPARSED = object()


def _methods(payload: Any) -> list[str]:
    items = payload if isinstance(payload, list) else [payload]
    return [item["method"] for item in items if isinstance(item, dict) and isinstance(item.get("method"), str)]


def _id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")), status=status, content_type="application/json")


def param(params: list | dict, index: int, default: Any = None) -> Any:
    """Positional parameter `index`, or `default` when absent or null."""
    if isinstance(params, list) and index < len(params) and params[index] is not None:
        return params[index]
    return default


def config(params: list | dict, index: int) -> dict:
    value = param(params, index, {})
    if not isinstance(value, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: expected a configuration object")
    return value
