"""The cluster as the servers it runs see it: its configuration and what they read and call on it.

`cluster` builds the RPC, admin and block-engine apps and hands itself to them; they type that
argument as `ClusterView`, declared here, so imports run one way (cluster -> servers -> view) and
no server imports the cluster. `LocalCluster` satisfies the protocol structurally.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from .congestion import CongestionConfig
from .auction import Auction, AuctionConfig
from .faults import FaultPlan
from .intake import Intake
from .ledger import STATUS_CACHE_SLOTS, Ledger
from .qos import Qos, QosConfig
from .regions import Region, RegionSettings
from .tipfloor import DEFAULT_WINDOW_SLOTS, TipFloor
from .tpu import TpuQuicServer

DEFAULT_PORTS = {"rpc": 8899, "ws": 8900, "block_engine": 8910, "admin": 8911, "tpu": 8009}


@dataclass
class ClusterConfig:
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    slot_ms: float = 400.0
    validators: int = 1
    faults: FaultPlan = field(default_factory=FaultPlan)
    confirmed_depth: int = 1
    finalized_depth: int = 32
    # Rooted slots whose statuses getSignatureStatuses answers without searchTransactionHistory.
    status_cache_slots: int = STATUS_CACHE_SLOTS
    jito_requests_per_second: float | None = None
    # Block-engine regions beside the single blockEngine (none by default), by Jito's short names.
    regions: dict[str, RegionSettings] = field(default_factory=dict)
    # The block a leader can fill in one slot: work left over waits for the next slot.
    block_budget_share: float = 0.8
    # agave's limit for one IP; tests that open many short connections raise it.
    tpu_new_connections_per_minute: int = 8
    # Stake-weighted QoS on every leader's TPU and the unstaked flood (localnet.qos); off by default.
    qos: QosConfig = field(default_factory=QosConfig)
    # Skipped slots: leaders (indices into the schedule) that are offline, so their slots
    # have no block and their TPU ports lose what they receive; and a share of the other
    # slots skipped at random under skip_seed (each slot's fate depends only on seed and slot).
    offline_leaders: tuple[int, ...] = ()
    skip_rate: float = 0.0
    skip_seed: int = 0
    # Leaders (indices) that run without Jito's validator client: no bundle lands in their slots.
    non_jito_leaders: tuple[int, ...] = ()
    # Congestion and fees (localnet.congestion): block CU limits, priority order, background load; off by default.
    congestion: CongestionConfig = field(default_factory=CongestionConfig)
    # Jito's tip auction, the background searchers and prompt failure statuses (localnet.auction); off by default.
    auction: AuctionConfig = field(default_factory=AuctionConfig)
    # Jito's tip floor (localnet.tipfloor, always served): the landed bundles of this many recent slots.
    tip_floor_window_slots: int = DEFAULT_WINDOW_SLOTS
    # The market profile this configuration came from (localnet.market; "calm": no profile applied), for the admin view.
    market: str = "calm"

    @classmethod
    def auto_ports(cls, **kwargs) -> "ClusterConfig":
        return cls(ports={name: 0 for name in DEFAULT_PORTS}, **kwargs)


class ValidatorView(Protocol):
    """One leader as the servers see it (cluster.Validator)."""

    index: int
    identity: Keypair
    tpu: TpuQuicServer
    tpu_open: bool
    tpu_port: int

    def contact_info(self, cluster: "ClusterView") -> dict: ...


class ClusterView(Protocol):
    """What build_rpc, build_admin and build_block_engine use of the cluster (cluster.LocalCluster)."""

    config: ClusterConfig
    ledger: Ledger
    intake: Intake
    faults: FaultPlan
    qos: Qos
    ports: dict[str, int]
    regions: dict[str, Region]
    auction: Auction
    tip_floor: TipFloor

    @property
    def validators(self) -> Sequence[ValidatorView]: ...

    def leader_for(self, slot: int) -> Pubkey: ...

    def skips_json(self) -> dict: ...

    def set_skips(self, data: dict) -> None: ...

    def jito_json(self) -> dict: ...

    def set_jito(self, data: dict) -> None: ...

    def airdrop(self, to: Pubkey, lamports: int) -> Signature: ...

    def fund(self, to: Pubkey, lamports: int) -> None: ...

    async def open_tpu(self, index: int, port: int = 0) -> None: ...

    async def close_tpu(self, index: int) -> None: ...

    async def configure_qos(self, update: dict) -> None: ...

    def qos_view(self) -> dict: ...

    def congestion_json(self) -> dict: ...

    def set_congestion(self, data: dict) -> None: ...
    async def set_region(self, name: str, changes: dict) -> Region: ...

    def auction_json(self) -> dict: ...

    async def configure_auction(self, update: dict) -> None: ...
