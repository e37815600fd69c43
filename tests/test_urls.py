"""Endpoint URLs that carry an API key are never shown whole (issue 20): logs, errors, describe()."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.http_endpoint import http_endpoint
from venue.rpc import RpcUnavailable, SolanaRpc
from venue.urls import redacted, shown_url
from worker.config import ExecutorConfig

SECRET = "k3yS3cr3tValue0123456789"


@pytest.mark.parametrize(
    "url, shown",
    [
        (f"https://mainnet.helius-rpc.com/?api-key={SECRET}", "https://mainnet.helius-rpc.com/?api-key=***"),
        (f"https://example.solana-mainnet.quiknode.pro/{SECRET}/", "https://example.solana-mainnet.quiknode.pro/***/"),
        (f"https://user:{SECRET}@rpc.example.com:8443/path", "https://***@rpc.example.com:8443/path"),
        ("http://127.0.0.1:8910/api/v1/bundles", "http://127.0.0.1:8910/api/v1/bundles"),
    ],
)
def test_a_url_is_shown_without_its_key(url, shown):
    assert shown_url(url) == shown
    assert SECRET not in redacted(f"failed on {url}", url)


async def test_an_rpc_error_does_not_quote_the_key():
    """A node (or its gateway) answering 503: the error said "HTTP 503 from <the whole URL>"."""
    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async with http_endpoint("/{tail:.*}", busy) as url:
        rpc = SolanaRpc(f"{url}/{SECRET}?api-key={SECRET}", timeout_s=2.0)
        try:
            with pytest.raises(RpcUnavailable, match="HTTP 503") as raised:
                await rpc.call("getSlot", [])
        finally:
            await rpc.close()
    assert SECRET not in str(raised.value) and SECRET not in rpc.shown


def test_describe_shows_no_rpc_or_block_engine_key():
    config = ExecutorConfig.from_environment({
        "RPC_ENDPOINT": f"https://rpc.example.com/?api-key={SECRET}", "RPC_BACKUPS": f"https://b.example.com/{SECRET}",
        "JITO_BLOCK_ENGINE_URL": f"https://ny.block-engine.example/?uuid={SECRET}", "RPC_WS_ENDPOINT": f"wss://rpc.example.com/?api-key={SECRET}",
        "HISTORY_ENCRYPTION": "off",
    })  # fmt: skip
    assert SECRET not in str(config.describe())
