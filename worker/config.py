"""The worker's configuration: the flat view of the settings every part of the worker is given.

Each variable is declared once, with its name, type, unit and doc, in `settings/executor.py`.
`ExecutorConfig` is a pydantic model made of those groups by inheritance: a setting added to one
of them is a field here (`config.rpc_endpoint`), with its type and default, and nothing else to write.
`from_environment` reads the groups; a config built in code (`dev`, the tests) reads no environment.

Secrets (WALLET_n) are not read here: the key store reads them itself, so they never sit
in a config object that could be logged. History keys are loaded here into a `HistoryKeys`,
which shows only key ids; TLS key files are read only when a client connects.
"""
from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, InstanceOf
from pydantic_settings import SettingsConfigDict

from .nats_connection import NatsAuth, nats_servers, redact_url  # noqa: F401 - nats_servers: its old home
from settings import SettingsError, check_names, load
from settings.executor import (
    GROUPS,
    ConfirmationSettings,
    EndpointHealthSettings,
    RaceSettings,
    FeeSettings,
    HistorySettings,
    JitoSettings,
    MetricsSettings,
    NatsSettings,
    RpcSettings,
    TemporalSettings,
    TpuSettings,
    WorkerSettings,
)
from settings.policy import POLICY_FILE, PolicySettings
from workflows.codec import HistoryKeyError, HistoryKeys
from venue.urls import shown_url


class ExecutorConfig(
    WorkerSettings, RpcSettings, JitoSettings, RaceSettings, EndpointHealthSettings, FeeSettings, ConfirmationSettings, TpuSettings, NatsSettings, MetricsSettings, TemporalSettings, HistorySettings,
):  # fmt: skip
    """Every setting of the groups above as a field of its own, plus the two that are objects: the NATS
    login (`NatsAuth`, from settings.executor `NatsAuthSettings`) and the history keys (`HistoryKeys`,
    from `HistoryKeySettings`, never in `repr`). Frozen; `config.model_copy(update=...)` for a changed copy."""

    # extra="forbid": a misspelt keyword in code is an error, as it was for the dataclass this replaced.
    model_config = SettingsConfigDict(extra="forbid", arbitrary_types_allowed=True)

    nats_auth: InstanceOf[NatsAuth] = Field(default_factory=NatsAuth)  # NATS_USER.. NATS_TLS_*: worker/nats_connection.py
    history_keys: InstanceOf[HistoryKeys] | None = Field(None, repr=False)  # HISTORY_KEYS / HISTORY_KEYS_FILE

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # fmt: skip
        """Only what the caller gives: `ExecutorConfig(...)` in code reads no environment (`from_environment` does)."""
        return (init_settings,)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> ExecutorConfig:
        """The declared groups read from `env` (default: the process's environment). A malformed value,
        a mistyped name or a contradiction raises SettingsError naming the variable."""
        env = os.environ if env is None else env
        check_names(env, (*GROUPS, PolicySettings), also=(POLICY_FILE[0],))
        values: dict = {}
        for group in ExecutorConfig.__bases__:  # the groups the config is made of
            values.update(load(group, env).model_dump())
        if bool(values["temporal_tls_cert"]) != bool(values["temporal_tls_key"]):
            raise SettingsError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: a client certificate needs its key")
        try:
            history_keys = HistoryKeys.from_environment(env)
        except HistoryKeyError as error:
            raise SettingsError(str(error)) from None
        return cls(**values, nats_auth=NatsAuth.from_environment(env), history_keys=history_keys)

    @property
    def temporal_uses_tls(self) -> bool:
        """TLS to Temporal: asked for, or implied by an API key or any TLS setting (as the temporal CLI does)."""
        return self.temporal_tls or any(
            (self.temporal_api_key, self.temporal_tls_cert, self.temporal_tls_ca, self.temporal_tls_server_name)
        )

    def websocket_endpoint(self) -> str:
        if self.rpc_ws_endpoint:
            return self.rpc_ws_endpoint
        url = urlsplit(self.rpc_endpoint)
        scheme = "wss" if url.scheme == "https" else "ws"
        netloc = f"{url.hostname}:{url.port + 1}" if url.port else url.hostname
        return urlunsplit((scheme, netloc, url.path, url.query, ""))

    def describe(self) -> dict:
        """For logs and `status`: everything but secrets."""
        shown = {name: getattr(self, name) for name, info in type(self).model_fields.items() if info.repr}
        shown.update(nats_url=redact_url(self.nats_url), nats_auth=self.nats_auth.describe())
        # RPC and block-engine URLs often carry the provider's API key (venue/urls.py).
        shown.update(rpc_endpoint=shown_url(self.rpc_endpoint), rpc_backups=tuple(shown_url(u) for u in self.rpc_backups),
                     jito_block_engine_url=shown_url(self.jito_block_engine_url))  # fmt: skip
        if self.rpc_ws_endpoint:
            shown["rpc_ws_endpoint"] = shown_url(self.rpc_ws_endpoint)
        return shown
