"""A one-route HTTP endpoint on 127.0.0.1 for client tests: a node or a block engine answering as the
test needs (a refusal, a 503, an unclear answer), on a free port."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web


@contextlib.asynccontextmanager
async def http_endpoint(path: str, handler: Callable[[web.Request], Awaitable[web.Response]], method: str = "POST") -> AsyncIterator[str]:
    """``method`` (POST by default) ``path`` answered by ``handler``; yields the base URL (``http://127.0.0.1:<port>``)."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
