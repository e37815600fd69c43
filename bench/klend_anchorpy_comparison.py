"""klend flash-loan instructions and Reserve decoding: venue.klend against anchorpy driven by the klend IDL.

anchorpy (0.21) and its fork anchorpy3 (0.4.5) cannot be installed next to the project's pins
(both need construct-typing<0.6, solana 0.41 needs >=0.8.1; docs/libraries.md), so this runs
in a venv of its own: anchorpy with whatever solders/solana it brings, and this tree on the path
(venue/klend.py needs only solders and solana):

    python3 -m venv /tmp/anchorpy && /tmp/anchorpy/bin/pip install anchorpy==0.21.0
    PYTHONPATH=. /tmp/anchorpy/bin/python -m bench.klend_anchorpy_comparison --idl klend.json --json

The IDL is klend-sdk's src/idl/klend.json (not shipped here). Per plan, both sides build the
same flash borrow + flash repay pair (the project's functions compute the lending market
authority PDA in each; the anchorpy side computes it once per plan and passes it in), and
decode the same 8624-byte Reserve into the project's ReserveInfo. First both are checked to
give the same bytes and values; then they take turns in blocks (A B, B A, ...) and the cost
per plan is the median over blocks. Ratios are anchorpy over the project's code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import struct
import sys
import time

from solders.pubkey import Pubkey

from venue import klend

SPL_TOKEN = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")


def fixed(n: int) -> Pubkey:
    return Pubkey.from_bytes(bytes([n]) * 32)


RESERVE, MARKET, MINT, SUPPLY, FEE_VAULT, USER, USER_ATA = (fixed(i) for i in range(1, 8))


def reserve_bytes() -> bytes:
    """A Reserve with every field the project reads set to a distinct value (the layout of tests/test_klend.py)."""
    data = bytearray(klend.RESERVE_SIZE)
    data[0:8] = klend.RESERVE_DISCRIMINATOR
    struct.pack_into("<Q", data, 8, 1)
    data[32:64] = bytes(MARKET)
    data[128:160] = bytes(MINT)
    data[160:192] = bytes(SUPPLY)
    data[192:224] = bytes(FEE_VAULT)
    struct.pack_into("<Q", data, 224, 123_456_789_000)
    struct.pack_into("<Q", data, 272, 9)
    data[408:440] = bytes(SPL_TOKEN)
    struct.pack_into("<Q", data, 4896, 7)
    struct.pack_into("<Q", data, 4904, 1 << 50)
    return bytes(data)


class Ours:
    name = "project"

    def __init__(self) -> None:
        self.info = klend.decode_reserve(RESERVE, klend.KLEND_PROGRAM_ID, reserve_bytes())

    def plan(self, amount: int, index: int):
        return (
            klend.flash_borrow_instruction(self.info, USER, USER_ATA, amount),
            klend.flash_repay_instruction(self.info, USER, USER_ATA, amount, index),
        )

    def decode(self, data: bytes) -> klend.ReserveInfo:
        return klend.decode_reserve(RESERVE, klend.KLEND_PROGRAM_ID, data)


class Anchor:
    name = "anchorpy"

    def __init__(self, idl_text: str) -> None:
        from anchorpy import Context, Idl, Program, Provider, Wallet
        from solana.rpc.async_api import AsyncClient

        started = time.perf_counter()
        idl = Idl.from_json(idl_text)
        # No request is made: the provider is only needed to construct a Program.
        self.program = Program(idl, klend.KLEND_PROGRAM_ID, Provider(AsyncClient("http://127.0.0.1:9"), Wallet.dummy()))
        self.setup_ms = (time.perf_counter() - started) * 1000
        self.Context = Context
        self.borrow = self.program.instruction["flash_borrow_reserve_liquidity"]
        self.repay = self.program.instruction["flash_repay_reserve_liquidity"]
        self.info = klend.decode_reserve(RESERVE, klend.KLEND_PROGRAM_ID, reserve_bytes())

    def plan(self, amount: int, index: int):
        info = self.info
        common = {
            "user_transfer_authority": USER,
            "lending_market_authority": klend.lending_market_authority(info.lending_market),
            "lending_market": info.lending_market,
            "reserve": info.address,
            "reserve_liquidity_mint": info.liquidity_mint,
            "reserve_liquidity_fee_receiver": info.fee_vault,
            "referrer_token_state": klend.KLEND_PROGRAM_ID,  # absent optional account: the program id
            "referrer_account": klend.KLEND_PROGRAM_ID,
            "sysvar_info": klend.INSTRUCTIONS_SYSVAR,
            "token_program": info.token_program,
        }
        borrow = self.borrow(amount, ctx=self.Context(accounts=common | {"reserve_source_liquidity": info.supply_vault, "user_destination_liquidity": USER_ATA}))
        repay = self.repay(amount, index, ctx=self.Context(accounts=common | {"reserve_destination_liquidity": info.supply_vault, "user_source_liquidity": USER_ATA}))
        return borrow, repay

    def decode(self, data: bytes) -> klend.ReserveInfo:
        r = self.program.coder.accounts.decode(data)
        return klend.ReserveInfo(
            address=RESERVE,
            lending_market=r.lending_market,
            liquidity_mint=r.liquidity.mint_pubkey,
            supply_vault=r.liquidity.supply_vault,
            fee_vault=r.liquidity.fee_vault,
            token_program=r.liquidity.token_program,
            mint_decimals=r.liquidity.mint_decimals,
            available_amount=r.liquidity.available_amount,
            flash_loan_fee_sf=r.config.fees.flash_loan_fee_sf,
        )


def differences(ours, theirs) -> list[str]:
    """Where anchorpy's instructions differ from the project's (data, program, account metas)."""
    found = []
    for label, a, b in zip(("borrow", "repay"), ours, theirs):
        if bytes(a.data) != bytes(b.data):
            found.append(f"{label}: data {bytes(b.data).hex()} != {bytes(a.data).hex()}")
        if a.program_id != b.program_id:
            found.append(f"{label}: program id {b.program_id}")
        for i, (x, y) in enumerate(zip(a.accounts, b.accounts)):
            if (x.pubkey, x.is_signer, x.is_writable) != (y.pubkey, y.is_signer, y.is_writable):
                found.append(f"{label}: account {i} is {y.pubkey} signer={y.is_signer} writable={y.is_writable}, the project has signer={x.is_signer} writable={x.is_writable}")
        if len(a.accounts) != len(b.accounts):
            found.append(f"{label}: {len(b.accounts)} accounts, the project has {len(a.accounts)}")
    return found


def per_call_us(fn, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.klend_anchorpy_comparison", description=__doc__.splitlines()[0])
    parser.add_argument("--idl", required=True, help="klend IDL JSON (klend-sdk src/idl/klend.json)")
    parser.add_argument("--plans", type=int, default=500, help="plans (instruction pairs) and decodes per block (default 500)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per side, interleaved A B / B A (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)

    try:
        import anchorpy  # noqa: F401
    except ImportError as error:
        note = f"anchorpy is not installed ({error}); it cannot be installed next to the project's pins: see the module docstring"
        print(json.dumps({"skipped": note}) if args.json else note)
        return 0
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    idl_text = open(args.idl, encoding="utf-8").read()
    ours, anchor = Ours(), Anchor(idl_text)
    data = reserve_bytes()

    # Same result first.
    diffs = differences(ours.plan(20_000_000_000, 3), anchor.plan(20_000_000_000, 3))
    decoded_equal = ours.decode(data) == anchor.decode(data)

    sides = [ours, anchor]
    build = {s.name: [] for s in sides}
    decode = {s.name: [] for s in sides}
    amounts = [1_000_000 + i for i in range(args.plans)]
    for block in range(args.blocks):
        for side in sides if block % 2 == 0 else sides[::-1]:
            build[side.name].append(per_call_us(lambda i, s=side: s.plan(amounts[i], 3), args.plans))
            decode[side.name].append(per_call_us(lambda i, s=side: s.decode(data), args.plans))
    pda_us = per_call_us(lambda i: klend.lending_market_authority(MARKET), args.plans)

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    result = {
        "versions": {name: installed(name) for name in ("anchorpy", "anchorpy3", "anchorpy-core", "anchorpy3-core", "solders", "solana", "construct-typing")},
        "idlSha256": hashlib.sha256(idl_text.encode()).hexdigest(),
        "anchorpySetupMs": round(anchor.setup_ms, 1),
        "plansPerBlock": args.plans,
        "blocks": args.blocks,
        "instructionDifferences": diffs,
        "decodedEqual": decoded_equal,
        "buildUsPerPlan": {name: med(v) for name, v in build.items()},
        "decodeUsPerReserve": {name: med(v) for name, v in decode.items()},
        "pdaUs": round(pda_us, 2),
        "ratioBuild": round(med(build["anchorpy"]) / med(build["project"]), 2),
        "ratioDecode": round(med(decode["anchorpy"]) / med(decode["project"]), 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if decoded_equal else 1


if __name__ == "__main__":
    sys.exit(main())
