"""Market profiles: one JSON document that sets the cluster's existing knobs together.

`hft-executor localnet --market calm|busy|hostile|FILE.json`. The named profiles ship as
`localnet/markets/<name>.json` (copy one to start a FILE.json); `calm` sets nothing, so it is
exactly the cluster with no options. `load_market` reads and checks a profile;
`apply_market` writes it onto a `ClusterConfig`, the one place a profile's keys turn into
configuration. Options given on the command line are applied after it and win (see
`localnet.command`).

A key this build does not know is refused with its name. Every mechanic of the cluster has one
key: to give a new mechanic to profiles, add its applier to `APPLIERS`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .regions import parse_regions
from .view import ClusterConfig

MARKETS_DIR = Path(__file__).with_name("markets")
DEFAULT_MARKET = "calm"
# Keys a profile may carry for people, not for the cluster.
DOCUMENTATION_KEYS = ("name", "description", "notes")


class MarketError(ValueError):
    """A profile that cannot be read or names a key or value the cluster does not take."""


def market_names() -> list[str]:
    return sorted(path.stem for path in MARKETS_DIR.glob("*.json"))


def load_market(name_or_path: str | Path | None) -> dict:
    """A shipped profile by name (`calm`, `busy`, `hostile`) or a JSON file by path; its keys are checked."""
    name_or_path = name_or_path or DEFAULT_MARKET
    text = str(name_or_path)
    shipped = MARKETS_DIR / f"{text}.json"
    path = shipped if "/" not in text and not text.endswith(".json") else Path(text)
    if not path.is_file():
        raise MarketError(f"no market {text!r}: expected one of {market_names()} or a path to a JSON file")
    try:
        market = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MarketError(f"market {text}: {error}") from None
    if not isinstance(market, dict):
        raise MarketError(f"market {text}: expected a JSON object of settings")
    check_keys(market)
    market.setdefault("name", path.stem if path == shipped else text)
    return market


def check_keys(market: dict) -> None:
    for key in market:
        if key not in APPLIERS and key not in DOCUMENTATION_KEYS:
            raise MarketError(f"unknown market key {key!r}; expected {sorted(APPLIERS)} (and {list(DOCUMENTATION_KEYS)})")


def apply_market(config: ClusterConfig, market: dict) -> ClusterConfig:
    """Write a profile's settings onto `config` (in place; also returned). Raises MarketError naming the key."""
    check_keys(market)
    for key in sorted(APPLIERS, key=lambda k: k != "validators"):  # the leader count first: leader lists are checked against it
        if key in market:
            try:
                APPLIERS[key](config, market[key])
            except MarketError:
                raise
            except (TypeError, ValueError, AttributeError) as error:
                raise MarketError(f"market key {key!r}: {error}") from None
    config.market = str(market.get("name", "custom"))
    return config


def check_leaders(config: ClusterConfig) -> None:
    """Every leader list names validators the schedule has (called again after command-line overrides)."""
    for key in ("offline_leaders", "non_jito_leaders"):
        bad = [i for i in getattr(config, key) if not 0 <= i < max(1, config.validators)]
        if bad:
            raise MarketError(f"{key} {list(getattr(config, key))}: no validator {bad} among {max(1, config.validators)} (set validators)")


# --- one applier per key -------------------------------------------------------------------------


def _validators(config: ClusterConfig, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{value!r}: expected a whole number of leaders, 1 or more")
    config.validators = value


def _leaders(field: str) -> Callable[[ClusterConfig, Any], None]:
    def apply(config: ClusterConfig, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ValueError(f"{value!r}: expected a list of validator indices")
        setattr(config, field, tuple(value))
        check_leaders(config)

    return apply


def _skip_rate(config: ClusterConfig, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{value!r}: expected a share between 0 and 1")
    config.skip_rate = float(value)


def _skip_seed(config: ClusterConfig, value: Any) -> None:
    config.skip_seed = int(value)


def _regions(config: ClusterConfig, value: Any) -> None:
    config.regions = parse_regions(value, base=config.regions)


def _qos(config: ClusterConfig, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError("expected an object of QoS settings (localnet.qos)")
    config.qos.update(value)


def _faults(config: ClusterConfig, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError("expected an object of fault settings per channel (localnet.faults)")
    config.faults.update(value)


def _jito_rps(config: ClusterConfig, value: Any) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value < 0):
        raise ValueError(f"{value!r}: expected requests per second, or null for no limit")
    config.jito_requests_per_second = value


def _object(name: str, apply: Callable[[ClusterConfig, dict], None]) -> Callable[[ClusterConfig, Any], None]:
    def check(config: ClusterConfig, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"expected an object of {name} settings (localnet.{name})")
        apply(config, value)

    return check


APPLIERS: dict[str, Callable[[ClusterConfig, Any], None]] = {
    "validators": _validators,
    "offline_leaders": _leaders("offline_leaders"),
    "non_jito_leaders": _leaders("non_jito_leaders"),
    "skip_rate": _skip_rate,
    "skip_seed": _skip_seed,
    "regions": _regions,
    "qos": _qos,
    "faults": _faults,
    "jito_rps": _jito_rps,
    # Jito's tip auction, prompt failure statuses and the background searchers (localnet.auction).
    "auction": _object("auction", lambda config, value: config.auction.update(value)),
    "searchers": _object("auction", lambda config, value: config.auction.update({"searchers": value})),
    # Block compute-unit limits, priority order and background fee load (localnet.congestion).
    "congestion": _object("congestion", lambda config, value: config.congestion.update(value)),
}

