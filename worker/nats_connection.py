"""The one way every part of the executor connects to NATS: worker, operator commands, bench, chaos, the tests.

Credentials and TLS come from the environment (``NatsAuth.from_environment``):

* ``NATS_USER`` + ``NATS_PASSWORD``, or ``NATS_TOKEN``, or ``NATS_NKEY_SEED`` (path of an nkey seed file), or
  ``NATS_CREDS`` (path of a ``.creds`` file: user JWT + seed): at most one of the four;
* ``NATS_TLS_CA`` (the CA that signed the server's certificate; unset: the system's roots),
  ``NATS_TLS_CERT`` + ``NATS_TLS_KEY`` (a client certificate, for servers that require mutual TLS),
  ``NATS_TLS_SERVER_NAME`` (the name to verify in the server's certificate when the URL's host is not in it);
* ``NATS_INBOX_PREFIX``: the prefix of this client's reply subjects (``_INBOX`` by default). A server that gives
  each user its own inbox subtree (``_INBOX.worker.>``) stops one user from reading another's replies.

Secrets (the password, the token) are never in ``repr``, ``describe()`` or an error message; seed, creds and key
files are referred to by path and refused when group or others can read them (as wallet key files are).
"""
from __future__ import annotations

import logging
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client
from nats.errors import Error as NatsError

from settings import SettingsError, load
from settings.executor import NatsAuthSettings, NatsSettings

class _SslEofNoise(logging.Filter):
    """asyncio warns "returning true from eof_received() has no effect when using ssl" whenever a TLS peer closes
    a connection read through a StreamReader, which is how nats-py reads: once per NATS restart or close, and it
    means nothing here. Dropped, so that a worker's log does not cry wolf."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_SslEofNoise())

#: Files holding a secret: refused when group or others can read them.
SECRET_FILES = ("NATS_NKEY_SEED", "NATS_CREDS", "NATS_TLS_KEY")


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS_URL, for ``nats.connect(servers=...)``.

    A comma-separated NATS_URL is what the Go client and the ``nats`` CLI take, but nats-py (2.16) parses a string
    as one URL and refuses ``"nats://a:1,nats://b:2"`` with "nats: invalid connect url option".
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


class TlsNotOffered(NatsError):
    """TLS was asked for (a ``tls://`` URL or a NATS_TLS_* variable) and the server did not offer it."""

    def __str__(self) -> str:
        return "nats: TLS was configured but the server did not require it; refusing to send credentials in the clear"


@dataclass(frozen=True)
class NatsAuth:
    """How a client proves who it is to NATS and checks that the server is the right one."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = None  # a path: the seed itself never sits in memory longer than a signature
    creds: str | None = None  # a path
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    inbox_prefix: str | None = None

    VARIABLES: ClassVar[dict[str, str]] = {
        "user": "NATS_USER", "password": "NATS_PASSWORD", "token": "NATS_TOKEN", "nkey_seed": "NATS_NKEY_SEED",
        "creds": "NATS_CREDS", "tls_ca": "NATS_TLS_CA", "tls_cert": "NATS_TLS_CERT", "tls_key": "NATS_TLS_KEY",
        "tls_server_name": "NATS_TLS_SERVER_NAME", "inbox_prefix": "NATS_INBOX_PREFIX",
    }  # fmt: skip

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> NatsAuth:
        """The login and TLS settings declared in settings/executor.py `NatsAuthSettings`; refused (SettingsError) when they cannot work."""
        url, declared = load(NatsSettings, env).nats_url, load(NatsAuthSettings, env)
        if any(urlsplit(server).username or urlsplit(server).password for server in nats_servers(url)):
            # A URL is printed everywhere (endpoints, errors, describe()): credentials have their own variables.
            raise SettingsError("NATS_URL carries credentials (user:password@ or token@): use NATS_USER/NATS_PASSWORD or NATS_TOKEN")
        auth = cls(**{name: getattr(declared, f"nats_{name}") for name in cls.VARIABLES})
        try:
            auth.check()
        except ValueError as error:
            raise SettingsError(str(error)) from None
        return auth

    def check(self) -> None:
        """Refuse what cannot work, naming the variable (never its value)."""
        methods = [name for name, on in (
            ("NATS_USER/NATS_PASSWORD", self.user or self.password), ("NATS_TOKEN", self.token),
            ("NATS_NKEY_SEED", self.nkey_seed), ("NATS_CREDS", self.creds),
        ) if on]  # fmt: skip
        if len(methods) > 1:
            raise ValueError(f"NATS credentials: set only one of {', '.join(methods)}")
        if bool(self.user) != bool(self.password):
            raise ValueError("NATS_USER and NATS_PASSWORD go together: set both or neither")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both or neither")
        for name, variable in self.VARIABLES.items():
            path = getattr(self, name)
            if variable not in (*SECRET_FILES, "NATS_TLS_CA", "NATS_TLS_CERT") or path is None:
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError as error:
                raise ValueError(f"{variable}: cannot read {path} ({error.strerror})") from None
            if variable in SECRET_FILES and os.name != "nt" and mode & 0o077:
                raise ValueError(f"{variable}: {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        if self.tls_ca or self.tls_cert:
            try:
                self.ssl_context()
            except ssl.SSLError as error:  # at start, not at the first connect; the reason names no key material
                raise ValueError(f"NATS_TLS_CA/NATS_TLS_CERT/NATS_TLS_KEY: cannot use them ({error.reason or error})") from None
        if self.creds and b"BEGIN NATS USER JWT" not in Path(self.creds).read_bytes():
            # nats-py (2.16) loops forever on a creds file without this marker: refuse it here instead.
            raise ValueError(f"NATS_CREDS: {self.creds} is not a .creds file (no NATS USER JWT block)")

    @property
    def method(self) -> str | None:
        if self.user:
            return "user"
        if self.token:
            return "token"
        if self.nkey_seed:
            return "nkey"
        if self.creds:
            return "creds"
        return None

    def wants_tls(self, url: str) -> bool:
        return any(urlsplit(server).scheme == "tls" for server in nats_servers(url)) or bool(self.tls_ca or self.tls_cert)

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server against NATS_TLS_CA (the system's roots without it), presents the client certificate if any."""
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.aio.client.Client.connect``."""
        options: dict[str, Any] = {"servers": nats_servers(url)}
        if self.user:
            options.update(user=self.user, password=self.password)
        elif self.token:
            options["token"] = self.token
        elif self.nkey_seed:
            options["nkeys_seed"] = self.nkey_seed
        elif self.creds:
            options["user_credentials"] = self.creds
        if self.wants_tls(url):
            options["tls"] = self.ssl_context()
            if self.tls_server_name:
                options["tls_hostname"] = self.tls_server_name
        if self.inbox_prefix:
            options["inbox_prefix"] = self.inbox_prefix
        return options

    def environment(self) -> dict[str, str]:
        """The variables that give a child process these credentials (the dev stack hands them to its roles)."""
        return {variable: getattr(self, name) for name, variable in self.VARIABLES.items() if getattr(self, name)}

    def describe(self) -> dict:
        """For logs and `status`: how this client authenticates, never with what."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr and getattr(self, f.name)}
        return {"method": self.method, **shown}


def redact_url(url: str) -> str:
    """A NATS_URL as it may be shown: a password or token in its user part is replaced by ***."""

    def one(server: str) -> str:
        parts = urlsplit(server)
        if not (parts.username or parts.password):
            return server
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    return ",".join(one(server) for server in nats_servers(url))


class _Client(Client):
    """nats-py's client, refusing a server that does not require TLS when TLS was asked for.

    nats-py upgrades to TLS only when the server's INFO says ``tls_required``: given a ``tls://`` URL and a
    server (or someone in the middle) that does not say so, it sends CONNECT, password included, in the clear.
    The check sits where INFO is read, before CONNECT, on every connect and reconnect.
    """

    _require_tls = False

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self._require_tls and not info.get("tls_required"):
            raise TlsNotOffered()
        await super()._process_info(info, initial_connection)


async def connect(url: str, auth: NatsAuth | None = None, **options: Any) -> Client:
    """A connected client for NATS_URL ``url`` with ``auth``; ``options`` go to nats-py (name, callbacks, timeouts)."""
    auth = auth or NatsAuth()
    client = _Client()
    client._require_tls = auth.wants_tls(url)
    await client.connect(**auth.options(url), **options)
    return client
