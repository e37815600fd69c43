"""Direct TPU submission over QUIC: the executor's client for the current and next leaders.

Why: sending a signed transaction straight to the leaders' TPU ports skips the RPC node's
queue and its 2 s rebroadcast; it is how production senders (agave's tpu-client-next,
yellowstone-jet) get a transaction into the next block. This package follows agave
(anza-xyz/agave ``tpu-client-next``, ``streamer``, ``tls-utils``; constants in
anza-xyz/solana-sdk ``quic-definitions``) and docs/architecture.md section 8.

The package splits that job in three modules, imports pointing one way
(``sender`` -> ``leaders``, ``sender`` -> ``connections``; both on ``address``):

* ``leaders``: ``LeaderTracker``: current slot (websocket ``slotSubscribe``, ``getSlot``
  polling as a fallback), the leader schedule (``getSlotLeaders`` in batches) and the
  leaders' QUIC addresses (``getClusterNodes`` ``tpuQuic``).
* ``connections``: ``node_certificate`` (the self-signed Ed25519 certificate every TPU
  client must present; its key is the client's node identity) and ``ConnectionCache``
  (long-lived aioquic connections to upcoming leaders, opened ahead of need, reused, kept
  alive, LRU-bounded, with exponential backoff for dead leaders; validators allow only 8
  *new* connections per minute per IP, so a connection per transaction would be refused
  within seconds).
* ``sender``: ``TpuClient``: ``send(raw)`` writes the same bytes to every upcoming leader at
  once, one transaction per unidirectional stream, and reports who acknowledged it
  (``TpuSendReport``), with what "delivered" does and does not mean.

No transaction bytes, keys or seeds are ever logged; identities are public keys.
"""
from .connections import ConnectFailed, ConnectionCache, LeaderBackoff, node_certificate
from .leaders import LeaderTracker
from .sender import TpuClient, TpuSendReport

__all__ = [
    "ConnectionCache",
    "ConnectFailed",
    "LeaderBackoff",
    "LeaderTracker",
    "TpuClient",
    "TpuSendReport",
    "node_certificate",
]
