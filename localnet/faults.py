"""Fault injection per channel, so tests can make the cluster misbehave on purpose.

The intake channels (rpc, bundle, tpu) are the ways a transaction arrives; `reads` is the
status reads a sender depends on to learn what became of it (see reads.py). Each channel
has its own probabilities; one seeded generator makes a run repeatable. Settable at start
(`--faults JSON`) and at run time (admin endpoint).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

INTAKE_CHANNELS = ("rpc", "bundle", "tpu")
READS = "reads"
CHANNELS = (*INTAKE_CHANNELS, READS)


def no_faults() -> dict:
    """The admin body (PUT /faults) that clears every fault on every channel."""
    cleared = {name: {"drop": 0.0, "delay_ms": 0.0, "rate_limit": 0.0, "reject": 0.0} for name in CHANNELS}
    cleared["rpc"]["forward_delay_slots"] = 0
    return cleared


class Verdict(str, Enum):
    accept = "accept"
    drop = "drop"  # acknowledged to the sender, never lands
    reject = "reject"  # refused with an error the sender sees


@dataclass
class ChannelFaults:
    drop: float = 0.0
    delay_ms: float = 0.0
    rate_limit: float = 0.0
    reject: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "rate_limit", "reject"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault probability {name}={value} is outside [0, 1]")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms={self.delay_ms} is negative")


@dataclass
class RpcFaults(ChannelFaults):
    """The RPC node's faults, plus one only an RPC node has: it forwards what it accepted late.

    `forward_delay_slots`: a transaction sendTransaction accepted is held by the node and reaches
    the leader's queue this many slots later (0: at once, as agave's send-transaction-service
    forwards it on receipt). A slow or overloaded RPC node (or one far from the leader) lands
    a transaction a slot or more after a direct path would.
    """

    forward_delay_slots: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.forward_delay_slots, int) or self.forward_delay_slots < 0:
            raise ValueError(f"forward_delay_slots={self.forward_delay_slots} must be a whole number of slots, 0 or more")


CHANNEL_TYPES = {"rpc": RpcFaults}


@dataclass
class FaultPlan:
    rpc: RpcFaults = field(default_factory=RpcFaults)
    bundle: ChannelFaults = field(default_factory=ChannelFaults)
    tpu: ChannelFaults = field(default_factory=ChannelFaults)
    reads: ChannelFaults = field(default_factory=ChannelFaults)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.reads.drop:
            # A drop is an acknowledgment with no effect; a read has no effect to lose, so
            # the only ways it can go wrong are no answer (reject) or a late one (delay_ms).
            raise ValueError(
                f"reads: drop={self.reads.drop} does not apply to a read; use reject (HTTP 503), "
                "rate_limit (HTTP 429) or delay_ms"
            )
        self._rng = random.Random(self.seed)

    @classmethod
    def from_json(cls, data: dict) -> "FaultPlan":
        unknown = set(data) - set(CHANNELS) - {"seed"}
        if unknown:
            raise ValueError(f"unknown fault channel(s): {sorted(unknown)}; expected {list(CHANNELS)} and seed")
        channels = {}
        for name in CHANNELS:
            settings = data.get(name, {})
            kind = CHANNEL_TYPES.get(name, ChannelFaults)
            known = {f.name for f in fields(kind)}
            unknown = set(settings) - known
            if unknown:
                raise ValueError(f"{name}: unknown fault setting(s) {sorted(unknown)}; expected {sorted(known)}")
            channels[name] = kind(**settings)
        return cls(**channels, seed=data.get("seed"))

    def update(self, data: dict) -> None:
        """Merge run-time changes: only the channels and fields given change."""
        unknown = set(data) - set(CHANNELS) - {"seed"}
        if unknown:
            raise ValueError(f"unknown fault channel(s): {sorted(unknown)}; expected {list(CHANNELS)} and seed")
        merged = self.to_json()
        for name in CHANNELS:
            merged[name].update(data.get(name, {}))
        if "seed" in data:
            merged["seed"] = data["seed"]
        fresh = FaultPlan.from_json(merged)
        for name in CHANNELS:
            setattr(self, name, fresh.channel(name))
        if "seed" in data:
            self.seed = data["seed"]
            self._rng = random.Random(self.seed)

    def to_json(self) -> dict:
        return {name: asdict(getattr(self, name)) for name in CHANNELS} | {"seed": self.seed}

    def channel(self, name: str) -> ChannelFaults:
        return getattr(self, name)

    def rate_limited(self, channel: str) -> bool:
        """Whether this request is answered 429 before anything else happens."""
        faults = self.channel(channel)
        return bool(faults.rate_limit) and self._rng.random() < faults.rate_limit

    def decide(self, channel: str) -> Verdict:
        """The fate of one transaction or bundle the channel accepted (for reads: of one request)."""
        faults = self.channel(channel)
        roll = self._rng.random
        if faults.reject and roll() < faults.reject:
            return Verdict.reject
        if faults.drop and roll() < faults.drop:
            return Verdict.drop
        return Verdict.accept
