"""A NATS cluster: ``size`` nats-server processes on 127.0.0.1 routed to each other, JetStream clustered.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from worker.nats_connection import connect as nats_connect

from .nats import NatsServer, _conf_string
from .process import HOST, PORT_CLASH_ATTEMPTS, PROBE_ATTEMPT, ServiceError, free_port

log = logging.getLogger("hft.services")


class NatsClusterNode(NatsServer):
    """One member of a ``NatsCluster``: a ``NatsServer`` with a route port, routes to the other members and
    JetStream clustered. Its ports are chosen by the cluster."""

    def __init__(self, data_dir: Path, *, server_name: str, cluster_name: str, sync_always: bool = False, security=None):
        super().__init__(data_dir, port=0, sync_always=sync_always, http_port=0, server_name=server_name, security=security)
        self.name = f"nats-server[{server_name}]"
        self.cluster_name = cluster_name
        self.cluster_port = 0
        self.route_ports: list[int] = []  # the other members' cluster ports

    def _extra_config(self) -> list[str]:
        if self.security:  # routes are plain TCP on 127.0.0.1, but only a holder of the route password joins
            routes = ", ".join(_conf_string(self.security.route_url(HOST, port)) for port in self.route_ports)
            authorization = [f"  authorization: {self.security.route_authorization()}"]
        else:
            routes = ", ".join(_conf_string(f"nats-route://{HOST}:{port}") for port in self.route_ports)
            authorization = []
        return [
            "cluster {",
            f"  name: {_conf_string(self.cluster_name)}",
            f"  listen: {_conf_string(f'{HOST}:{self.cluster_port}')}",
            f"  routes: [{routes}]",
            *authorization,
            # Clients use only the addresses they were given: nothing learnt from INFO can bypass a proxy in front.
            "  no_advertise: true",
            "}",
        ]


class NatsCluster:
    """``size`` nats-server processes on 127.0.0.1 routed to each other, JetStream clustered (server names
    ``n0``, ``n1``, ...; node ``i`` keeps its store in ``<data_dir>/n<i>/jetstream`` and logs to
    ``<data_dir>/n<i>/nats-server.log``). Ports (client, route, monitoring) are picked at the first ``start()``
    and kept for every ``restart(i)``.

    Clients connect with ``nats.connect(servers=cluster.urls)`` (or ``servers=nats_servers(cluster.url)``); the
    members do not advertise each other to clients (``no_advertise``), so a client knows only those addresses.
    """

    def __init__(self, data_dir: Path, size: int = 3, sync_always: bool = False, *, cluster_name: str = "hft", security=None):
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.data_dir = Path(data_dir)
        self.size = size
        self.sync_always = sync_always
        self.cluster_name = cluster_name
        self.security = security
        self.nodes = [
            NatsClusterNode(self.data_dir / f"n{i}", server_name=f"n{i}", cluster_name=cluster_name, sync_always=sync_always, security=security)
            for i in range(size)
        ]
        self._started = False
        self._restarted_at: dict[int, float] = {}

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The comma-separated form, for NATS_URL (nats-py needs ``nats_servers(url)``)."""
        return ",".join(self.urls)

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def _pick_ports(self) -> None:
        taken: set[int] = set()

        def pick() -> int:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        for node in self.nodes:
            node.port, node.cluster_port, node.http_port = pick(), pick(), pick()
        for node in self.nodes:
            node.route_ports = [other.cluster_port for other in self.nodes if other is not node]

    async def start(self, timeout: float = 60.0) -> None:
        """Start every node and wait until JetStream has a meta leader and an R``size`` stream can be created
        (a probe stream, deleted again)."""
        started = time.monotonic()
        self._restarted_at.clear()
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            self._pick_ports()
            try:
                await self._start_nodes(started + timeout)
                break
            except ServiceError as error:
                if "already in use" not in str(error) or attempt == PORT_CLASH_ATTEMPTS:
                    raise
                log.warning("nats cluster: a port picked free was taken before it bound (attempt %d); picking again", attempt)
        self._started = True
        log.info("nats cluster of %d started (%s) in %.2fs", self.size, self.url, time.monotonic() - started)

    async def _start_nodes(self, deadline: float) -> None:
        remaining = max(deadline - time.monotonic(), 0.1)
        # Together: a node's readiness needs a JetStream meta leader, so a quorum of nodes running.
        tasks = [asyncio.ensure_future(node._start_once(remaining, pick_ports=False)) for node in self.nodes]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()
            await self._until(deadline, self._replicated_stream_works, f"an R{self.size} stream could be created", self.nodes)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()
            raise

    async def _until(
        self, deadline: float, check: Callable[[float], Awaitable[bool]], what: str, watch: list[NatsClusterNode]
    ) -> None:
        """Poll ``check`` until it returns True; fail at ``deadline``, or at once if a node in ``watch`` dies."""
        last_error: BaseException | None = None
        while True:
            for node in watch:
                node._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(f"nats cluster: not ready, waited for {what} (last error: {last_error!r})")
            try:
                if await asyncio.wait_for(check(remaining), min(remaining, PROBE_ATTEMPT)):
                    return
            except (ServiceError, asyncio.CancelledError):
                raise
            except Exception as error:  # noqa: BLE001 - not there yet: poll again
                last_error = error
            await asyncio.sleep(0.1)

    async def _replicated_stream_works(self, remaining: float) -> bool:
        from nats.js.api import StorageType, StreamConfig

        async def quiet(_error: Exception) -> None:
            pass

        nc = await nats_connect(
            ",".join(node.url for node in self.nodes if node.running),
            self.nodes[0].client_auth(),
            connect_timeout=min(2.0, remaining),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            js = nc.jetstream(timeout=min(2.0, remaining))
            name = f"HFT_PROBE_{uuid.uuid4().hex[:12]}"
            config = StreamConfig(name=name, subjects=[f"hft.probe.{name}"], num_replicas=self.size, storage=StorageType.FILE)
            await js.add_stream(config)
            await js.delete_stream(name)
            return True
        finally:
            await nc.close()

    async def meta_leader(self) -> str | None:
        """The server name of JetStream's meta leader, as the running nodes report it; None while there is none
        (or while the survivors of a killed leader still name it: until they elect another)."""
        running = {node.server_name for node in self.nodes if node.running}
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                leader = ((await node.monitor("jsz")).get("meta_cluster") or {}).get("leader")
                if leader:
                    return leader if leader in running else None
        return None

    async def current(self, i: int) -> bool:
        """Node ``i`` is running and current, as the leaders report it: in JetStream's meta group and in every
        replicated stream it holds (caught up, no lag). After ``restart(i)``, a leader must also have heard from
        it since the restart: a leader keeps calling a peer it lost current for some seconds."""
        node = self.nodes[i]
        if not node.running:
            return False
        since = self._restarted_at.get(i)

        def fresh(peer_active: object, asked_at: float) -> bool:
            # ``active``: how long ago (ns) the leader last heard from that peer
            return since is None or (isinstance(peer_active, int | float) and asked_at - peer_active / 1e9 > since)

        leader_name = await self.meta_leader()
        if leader_name is None:
            return False
        if leader_name != node.server_name:
            leader = next(n for n in self.nodes if n.server_name == leader_name)
            asked_at = time.monotonic()
            try:
                replicas = ((await leader.monitor("jsz")).get("meta_cluster") or {}).get("replicas") or []
            except (OSError, ValueError):
                return False  # the leader just went away
            peer = next((p for p in replicas if p.get("name") == node.server_name), None)
            if peer is None or not peer.get("current") or peer.get("offline") or not fresh(peer.get("active"), asked_at):
                return False
        return await self._streams_current(node, fresh)

    async def _streams_current(self, node: NatsClusterNode, fresh: Callable[[object, float], bool]) -> bool:
        import nats.errors

        async def quiet(_error: Exception) -> None:
            pass

        try:
            nc = await nats_connect(
                ",".join(n.url for n in self.nodes if n.running),
                self.nodes[0].client_auth(),
                connect_timeout=2.0,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            )
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        try:
            js = nc.jetstream(timeout=2.0)
            asked_at = time.monotonic()
            try:
                streams = await js.streams_info()
            except (nats.errors.Error, TimeoutError):
                return False  # no meta leader to answer (an election under way)
            for info in streams:
                cluster = info.cluster
                if cluster is None or cluster.leader == node.server_name:
                    continue
                peer = next((p for p in cluster.replicas or [] if p.name == node.server_name), None)
                if peer is None:
                    continue  # not one of this stream's replicas
                if cluster.leader is None or not peer.current or peer.offline or peer.lag or not fresh(peer.active, asked_at):
                    return False
            return True
        finally:
            await nc.close()

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (see ``NatsServer.kill``)."""
        self.nodes[i].kill()

    async def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its ports with its store, and wait until it serves JetStream and is
        ``current(i)`` again (caught up in the meta group and in every replicated stream it holds). Needs a quorum
        of the other nodes running (leaders to rejoin)."""
        if not self._started:
            raise ServiceError("nats cluster: restart() needs a first start()")
        started = time.monotonic()
        node = self.nodes[i]
        self._restarted_at[i] = started
        await node.restart(timeout)
        await self._until(started + timeout, lambda _remaining: self.current(i), f"{node.server_name} current again", [node])
        log.info("nats cluster: %s rejoined in %.2fs", node.server_name, time.monotonic() - started)

    async def stop(self) -> None:
        """Stop every node (gracefully, SIGKILL after their grace). Idempotent."""
        await asyncio.gather(*(node.stop() for node in self.nodes))
