"""Admin endpoint (JSON over HTTP): the wire view, counters, faults, funding, accounts, and leader ports.

Tests and the benchmark read plan-to-wire latency and double landings from here; it is
the cluster's own view, with first-seen times on this machine's wall clock (ns).
"""
from __future__ import annotations

import base64
import inspect

from aiohttp import web
from solders.account import Account
from solders.pubkey import Pubkey

from .fixtures import create_swap_pool
from .view import ClusterView


def build_admin(cluster: ClusterView) -> web.Application:
    ledger = cluster.ledger
    routes = web.RouteTableDef()

    def bad_request(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    async def body(request: web.Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
        return data

    @routes.get("/transactions")
    async def transactions(request: web.Request) -> web.Response:
        """Every signature received; `?since_ns=` keeps those first seen after it, `?signature=` one or more."""
        wanted = set(request.query.getall("signature", []))
        since = int(request.query.get("since_ns", 0))
        rows = [
            record.to_json(ledger)
            for record in cluster.intake.wire.values()
            if record.first_seen_ns > since and (not wanted or record.signature in wanted)
        ]
        return web.json_response({"transactions": rows})

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "slot": ledger.slot,
                "blockHeight": ledger.block_height,
                "pending": len(ledger.pending),
                "landed": len(ledger.records),
                "counters": dict(cluster.intake.counters),
                "tpu": [
                    {"identity": str(v.identity.pubkey()), "port": v.tpu_port, "open": v.tpu_open, **(v.tpu.stats() if v.tpu_open else {})}
                    for v in cluster.validators
                ],
                "skips": cluster.skips_json(),
                "jito": cluster.jito_json(),
                "congestion": {k: v for k, v in cluster.congestion_json().items() if k != "slots"},
                "skippedSlots": list(ledger.skipped)[-64:],
                "faults": cluster.faults.to_json(),
                "regions": regions_json(),
                "auction": cluster.auction_json(),
            }
        )

    def regions_json() -> dict:
        return {name: region.to_json(cluster.config.host, ledger) for name, region in cluster.regions.items()}

    @routes.get("/landing")
    async def landing(request: web.Request) -> web.Response:
        """Attribution of what landed: per channel and per region, the transactions whose executed copy came
        that way (a bundle's transactions each count; `units` counts a bundle once); per region also
        what it accepted, dropped and lost at auction. `unattributed`: the cluster's own work."""
        channels: dict[str, dict[str, int]] = {}
        regions = {
            name: {key: region.counters.get(key, 0) for key in ("accepted", "dropped", "lost_at_auction")} | {"landed": 0, "transactions": 0}
            for name, region in cluster.regions.items()
        }
        for origin, count in ledger.landed_transactions.items():
            channel = channels.setdefault(origin.channel if origin else "unattributed", {"transactions": 0, "units": 0})
            channel["transactions"] += count
            channel["units"] += ledger.landed_units.get(origin, 0)
            if origin is not None and origin.region in regions:
                regions[origin.region]["transactions"] += count
                regions[origin.region]["landed"] += ledger.landed_units.get(origin, 0)
        return web.json_response({"market": cluster.config.market, "channels": channels, "regions": regions})

    @routes.get("/regions")
    async def get_regions(request: web.Request) -> web.Response:
        """Every block-engine region: its URL, settings, whether it is up, and accepted/dropped/rate-limited/landed."""
        return web.json_response(regions_json())

    @routes.put("/regions/{name}")
    @routes.post("/regions/{name}")
    async def set_region(request: web.Request) -> web.Response:
        """Change one region: {"latency_ms", "drop", "rate_limit", "lag_slots", "down": "refuse"|"blackhole"|null}."""
        name = request.match_info["name"]
        if name not in cluster.regions:
            return bad_request(f"no region {name}; running: {sorted(cluster.regions)}")
        try:
            region = await cluster.set_region(name, await body(request))
        except (TypeError, ValueError) as error:
            return bad_request(str(error))
        return web.json_response(region.to_json(cluster.config.host, ledger))

    @routes.get("/faults")
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(cluster.faults.to_json())

    @routes.put("/faults")
    @routes.post("/faults")
    async def set_faults(request: web.Request) -> web.Response:
        try:
            data = await body(request)
            cluster.faults.update(data)
        except (TypeError, ValueError) as error:
            return bad_request(str(error))
        if "seed" in data:
            for region in cluster.regions.values():
                region.reseed(data["seed"])
        return web.json_response(cluster.faults.to_json())

    def setting(path: str, read, change) -> None:
        """A run-time setting of the cluster: GET reads it; PUT or POST a JSON object changes it (a value
        it refuses is a 400 naming why) and answers what it is now."""

        async def get(request: web.Request) -> web.Response:
            return web.json_response(read())

        async def put(request: web.Request) -> web.Response:
            try:
                changed = change(await body(request))
                if inspect.isawaitable(changed):
                    await changed
            except (TypeError, ValueError) as error:
                return bad_request(str(error))
            return web.json_response(read())

        routes.get(path)(get)
        routes.put(path)(put)
        routes.post(path)(put)

    # Stake-weighted QoS: {"enabled"?, "stakes"?: {pubkey: lamports} (0 removes), "flood"?: {"connections", "rate", "size"}, ...}
    setting("/qos", cluster.qos_view, cluster.configure_qos)
    # {"offlineLeaders": [1], "skipRate": 0.1, "seed": 7}: offline leaders produce no block in their slots.
    setting("/skips", cluster.skips_json, cluster.set_skips)
    # {"nonJitoLeaders": [1]}: no bundle lands in those leaders' slots; bundles wait for a Jito leader.
    setting("/jito-leaders", cluster.jito_json, cluster.set_jito)
    # {"enabled": true, "scale": 0.01, "load": {"fill": 0.8, "hot": [...], "fee_min": 1e4, "fee_max": 1e6}}: block CU
    # limits, priority order and background load; GET adds per slot the CU used, the fill share and what waited.
    setting("/congestion", cluster.congestion_json, cluster.set_congestion)
    # {"enabled": true, "tick_ms": 50, "prompt_failures": true, "searchers": {"rate": 20, "tip_median": 10000, ...}}:
    # Jito's tip auction, the background searchers and prompt failure statuses (localnet.auction).
    setting("/auction", cluster.auction_json, cluster.configure_auction)
    # Jito's tip floor as the block engines serve it, in lamports too; {"windowSlots": 150, "alpha": 0.1} changes its window and EMA.
    setting("/tip-floor", cluster.tip_floor.to_json, cluster.tip_floor.configure)

    @routes.post("/fund")
    async def fund(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            pubkey = Pubkey.from_string(data["pubkey"])
            lamports = int(data["lamports"])
        except (KeyError, ValueError, TypeError):
            return bad_request('expected {"pubkey": base58, "lamports": int}')
        cluster.fund(pubkey, lamports)
        return web.json_response({"pubkey": str(pubkey), "lamports": ledger.svm.get_balance(pubkey)})

    @routes.post("/accounts")
    async def set_account(request: web.Request) -> web.Response:
        """Write an account as another program would have left it (a klend reserve for the policy
        tests): {"pubkey", "owner", "data": base64, "lamports"?} (rent-exempt for its size by default)."""
        data = await body(request)
        try:
            pubkey, owner = Pubkey.from_string(data["pubkey"]), Pubkey.from_string(data["owner"])
            raw = base64.b64decode(data.get("data", ""), validate=True)
            lamports = int(data["lamports"]) if "lamports" in data else ledger.svm.minimum_balance_for_rent_exemption(len(raw))
        except (KeyError, ValueError, TypeError):
            return bad_request('expected {"pubkey": base58, "owner": base58, "data": base64, "lamports"?: int}')
        ledger.svm.set_account(pubkey, Account(lamports, raw, owner))
        return web.json_response({"pubkey": str(pubkey), "owner": str(owner), "lamports": lamports, "space": len(raw)})

    @routes.post("/fixtures/swap-pool")
    async def swap_pool(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            wallets = [Pubkey.from_string(w) for w in data["wallets"]]
        except (KeyError, ValueError, TypeError):
            return bad_request('expected {"wallets": [base58, ...]}')
        options = {k: int(data[k]) for k in ("decimals", "walletBalance", "liquidity") if k in data}
        pool = create_swap_pool(
            ledger,
            wallets,
            decimals=options.get("decimals", 6),
            wallet_balance=options.get("walletBalance", 1_000_000_000_000),
            liquidity=options.get("liquidity", 1_000_000_000_000),
        )
        return web.json_response(pool.to_json())

    @routes.post("/validators/{index}/tpu")
    async def tpu_port(request: web.Request) -> web.Response:
        """{"open": false} closes one leader's QUIC port (an unreachable leader); {"open": true} reopens it."""
        index = int(request.match_info["index"])
        if not 0 <= index < len(cluster.validators):
            return bad_request(f"no validator {index}")
        if (await body(request)).get("open", True):
            await cluster.open_tpu(index)
        else:
            await cluster.close_tpu(index)
        validator = cluster.validators[index]
        return web.json_response({"index": index, "port": validator.tpu_port, "open": validator.tpu_open})

    app = web.Application()
    app.add_routes(routes)
    return app
