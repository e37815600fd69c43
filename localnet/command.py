"""`hft-executor localnet`: the local cluster in the foreground until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from solders.pubkey import Pubkey

from venue import LAMPORTS_PER_SOL

from .cluster import ClusterConfig, LocalCluster
from .ledger import STATUS_CACHE_SLOTS
from .market import DEFAULT_MARKET, MarketError, apply_market, check_leaders, load_market
from .regions import parse_regions
from .tipfloor import DEFAULT_WINDOW_SLOTS
from .view import DEFAULT_PORTS
from settings import CommandError



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one line of endpoints as JSON when ready")
    parser.add_argument("--ports", default="default", help="'default' (RPC 8899, websocket 8900, ...) or 'auto' (free ports)")
    parser.add_argument("--slot-ms", type=float, default=400.0, help="slot time in milliseconds (default 400)")
    parser.add_argument(
        "--market",
        default=DEFAULT_MARKET,
        metavar="calm|busy|hostile|FILE.json",
        help="a market profile that sets regions, leaders, skips, QoS and faults together (default calm: none of them); "
        "options given here override it (JSON options merge into it)",
    )
    parser.add_argument("--validators", type=int, default=None, help="leaders in the schedule, each with its own QUIC port (default 1)")
    parser.add_argument("--faults", type=json.loads, default=None, help='fault injection, e.g. \'{"bundle": {"drop": 0.5}, "seed": 7}\'')
    parser.add_argument(
        "--status-cache-slots",
        type=int,
        default=STATUS_CACHE_SLOTS,
        metavar="N",
        help=f"rooted slots whose statuses getSignatureStatuses answers without searchTransactionHistory (default {STATUS_CACHE_SLOTS}, agave's)",
    )
    parser.add_argument("--jito-rps", type=float, default=None, help="block-engine rate limit per IP (requests/s); off by default")
    parser.add_argument(
        "--stake",
        action="append",
        default=[],
        metavar="PUBKEY=LAMPORTS",
        help="give a TPU client identity stake; turns stake-weighted QoS on; repeatable",
    )
    parser.add_argument(
        "--qos",
        type=json.loads,
        default=None,
        help='stake-weighted QoS on the TPU, e.g. \'{"stakes": {"PUBKEY": 1000}, "flood": {"connections": 12, "rate": 200}}\'',
    )
    parser.add_argument(
        "--offline-leaders",
        default=None,
        metavar="I,J",
        help="validator indices that are offline: their slots are skipped (no block) and their QUIC ports lose what they get",
    )
    parser.add_argument(
        "--non-jito-leaders",
        default=None,
        metavar="I,J",
        help="validator indices that run without Jito: no bundle lands in their slots (bundles wait for a Jito leader)",
    )
    parser.add_argument("--skip-rate", type=float, default=None, help="share of the other slots skipped at random (0 by default)")
    parser.add_argument("--skip-seed", type=int, default=None, help="seed of --skip-rate (a slot's fate depends on seed and slot only)")
    parser.add_argument(
        "--regions",
        default=None,
        metavar="NAMES|JSON",
        help="block-engine regions beside blockEngine, e.g. 'ams,fra,nyc' or "
        '\'{"ams": {"latency_ms": 5, "drop": 0.3, "rate_limit": 1, "lag_slots": 2, "down": null}}\'; none by default',
    )
    parser.add_argument(
        "--congestion",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='block CU limits, priority order and background load, off by default, e.g. '
        '\'{"scale": 0.01, "load": {"fill": 0.8, "hot": ["PUBKEY"], "fee_min": 10000, "fee_max": 1000000, "seed": 7}}\'',
    )
    parser.add_argument(
        "--auction",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='Jito\'s tip auction, off by default: \'{"enabled": true, "tick_ms": 50, "prompt_failures": true, '
        '"searchers": {"rate": 20, "tip_median": 10000, "tip_sigma": 1.0, "seed": 7}}\' (every key optional)',
    )
    parser.add_argument(
        "--searchers",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='background searcher bundles competing in the auction (turns it on), e.g. \'{"rate": 20, "tip_median": 10000, "tip_sigma": 1.0}\'',
    )
    parser.add_argument(
        "--tip-floor-window-slots",
        type=int,
        default=DEFAULT_WINDOW_SLOTS,
        metavar="N",
        help=f"the tip floor's window: bundles landed in the last N slots (default {DEFAULT_WINDOW_SLOTS}, one minute of 400 ms slots)",
    )
    parser.add_argument(
        "--fund", action="append", default=[], metavar="PUBKEY[:SOL]", help="credit a wallet at start (default 100 SOL); repeatable"
    )


def parse_funding(values: list[str]) -> list[tuple[Pubkey, int]]:
    funding = []
    for value in values:
        pubkey, _, sol = value.partition(":")
        try:
            funding.append((Pubkey.from_string(pubkey), int(float(sol or 100) * LAMPORTS_PER_SOL)))
        except ValueError:
            raise CommandError(f"--fund {value}: expected PUBKEY[:SOL]") from None
    return funding


def leader_list(option: str, value: str, validators: int) -> tuple[int, ...]:
    """'1,3' -> (1, 3): validator indices, each below --validators."""
    try:
        indices = tuple(int(i) for i in value.split(",") if i.strip())
    except ValueError:
        raise CommandError(f"{option} {value}: expected validator indices such as 1,3") from None
    if any(not 0 <= i < max(1, validators) for i in indices):
        raise CommandError(f"{option} {value}: indices run from 0 to {max(1, validators) - 1} (--validators)")
    return indices


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    """The market profile first (`--market`, calm by default: nothing), then every option given on the
    command line over it: a scalar option replaces the profile's value, a JSON one (--faults, --qos,
    --regions) merges into it key by key."""
    if args.ports not in ("default", "auto"):
        raise CommandError("--ports takes 'default' or 'auto'")
    if args.status_cache_slots < 0:
        raise CommandError(f"--status-cache-slots {args.status_cache_slots}: expected a number of slots, 0 or more")
    ports = {name: 0 for name in DEFAULT_PORTS} if args.ports == "auto" else dict(DEFAULT_PORTS)
    config = ClusterConfig(ports=ports, slot_ms=args.slot_ms, status_cache_slots=args.status_cache_slots)
    try:
        apply_market(config, load_market(args.market))
    except MarketError as error:
        raise CommandError(f"--market {args.market}: {error}") from None
    if args.validators is not None:
        config.validators = args.validators
    try:
        config.faults.update(args.faults or {})
    except (TypeError, ValueError) as error:
        raise CommandError(f"--faults: {error}") from None
    try:
        config.qos.update(args.qos or {})
        if args.stake:
            config.qos.update({"stakes": args.stake})
    except (TypeError, ValueError, AttributeError) as error:
        raise CommandError(f"--qos/--stake: {error}") from None
    if args.offline_leaders is not None:
        config.offline_leaders = leader_list("--offline-leaders", args.offline_leaders, config.validators)
    if args.non_jito_leaders is not None:
        config.non_jito_leaders = leader_list("--non-jito-leaders", args.non_jito_leaders, config.validators)
    if args.skip_rate is not None:
        if not 0.0 <= args.skip_rate <= 1.0:
            raise CommandError(f"--skip-rate {args.skip_rate}: expected a share between 0 and 1")
        config.skip_rate = args.skip_rate
    if args.skip_seed is not None:
        config.skip_seed = args.skip_seed
    try:
        config.regions = parse_regions(args.regions, base=config.regions)
    except (TypeError, ValueError) as error:
        raise CommandError(f"--regions: {error}") from None
    try:
        if args.congestion is not None:
            config.congestion.update(args.congestion)
    except (TypeError, ValueError) as error:
        raise CommandError(f"--congestion: {error}") from None
    try:
        config.auction.update(args.auction or {})
        if args.searchers:
            config.auction.update({"searchers": args.searchers})
    except (TypeError, ValueError) as error:
        raise CommandError(f"--auction/--searchers: {error}") from None
    if args.tip_floor_window_slots < 1:
        raise CommandError(f"--tip-floor-window-slots {args.tip_floor_window_slots}: expected a number of slots, 1 or more")
    config.tip_floor_window_slots = args.tip_floor_window_slots
    if args.jito_rps is not None:
        config.jito_requests_per_second = args.jito_rps
    try:
        check_leaders(config)  # a --validators below what the profile's leader lists name
    except MarketError as error:
        raise CommandError(f"--market {args.market} with --validators {config.validators}: {error}") from None
    return config


async def serve(args: argparse.Namespace) -> None:
    cluster = LocalCluster(config_from_args(args))
    await cluster.start()
    for pubkey, lamports in parse_funding(args.fund):
        cluster.fund(pubkey, lamports)
    endpoints = cluster.endpoints()
    if args.json:
        print(json.dumps(endpoints), flush=True)
    else:
        print("local Solana cluster ready (Ctrl-C to stop)", flush=True)
        for name, url in endpoints.items():
            if isinstance(url, dict):
                for region, region_url in url.items():
                    print(f"  {'region ' + region:12} {region_url}", flush=True)
            else:
                print(f"  {name:12} {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await cluster.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))
    return 0
