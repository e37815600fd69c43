"""POLICY_SIMULATE=1: a simulation of the unsigned transaction, refused when the wallet's SOL or
any of its token balances falls by more than a cap (from configuration only): what the static
rules cannot see, such as a program an allowed program calls."""
from __future__ import annotations

import base64

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from settings.policy import PolicySettings
from venue.programs import NATIVE_MINT, TOKEN_2022_PROGRAM, TOKEN_PROGRAM

from .rules import Examined, _u64, writable_keys
from .violation import PolicyViolation

TOKEN_ACCOUNT_SIZE = 165  # spl-token Account::LEN; Token-2022 accounts start with the same layout


def _token_holdings(account: dict | None, wallet: str) -> tuple[str, int] | None:
    """(mint, amount) of an initialized token account the wallet owns, from a base64 account."""
    if account is None or account.get("owner") not in (str(TOKEN_PROGRAM), str(TOKEN_2022_PROGRAM)):
        return None
    data = base64.b64decode(account["data"][0])
    if len(data) < TOKEN_ACCOUNT_SIZE or data[108] == 0 or Pubkey.from_bytes(data[32:64]) != Pubkey.from_string(wallet):
        return None  # too short, uninitialized, or someone else's
    return str(Pubkey.from_bytes(data[0:32])), _u64(data, 64)


def balance_losses(wallet: str, addresses: list[str], before: list[dict | None], after: list[dict | None]) -> tuple[int, dict[str, int]]:
    """The wallet's SOL loss and, per mint, its token loss between two reads of the same accounts
    (negative: a gain). A token account the wallet no longer owns, or that was closed, counts as lost."""
    sol_loss = 0
    tokens: dict[str, int] = {}
    for address, pre, post in zip(addresses, before, after):
        if address == wallet:
            sol_loss = (pre or {}).get("lamports", 0) - ((post or {}).get("lamports", 0) if post else 0)
        held_pre, held_post = _token_holdings(pre, wallet), _token_holdings(post, wallet)
        for held, sign in ((held_pre, 1), (held_post, -1)):
            if held is not None:
                tokens[held[0]] = tokens.get(held[0], 0) + sign * held[1]
    return sol_loss, tokens


async def simulate(rpc, settings: PolicySettings, wallet: str, examined: Examined) -> None:
    """simulateTransaction on the built, unsigned transaction (sigVerify false; its own blockhash,
    not replaced), beside a read of the same accounts before, in one batch request (one node, one
    view). Unsigned, because a refused plan must leave no signed bytes anywhere."""
    if rpc is None:
        raise PolicyViolation("simulation_failed", None, "POLICY_SIMULATE is on but this worker has no RPC to simulate with")
    tx = VersionedTransaction.populate(examined.message, [Signature.default()])
    addresses = list(dict.fromkeys(str(k) for k in writable_keys(examined.message, examined.keys)))
    before, simulated = await rpc.batch(
        [
            ("getMultipleAccounts", [addresses, {"encoding": "base64", "commitment": "processed"}]),
            (
                "simulateTransaction",
                [
                    base64.b64encode(bytes(tx)).decode(),
                    {
                        "encoding": "base64", "sigVerify": False, "replaceRecentBlockhash": False, "commitment": "processed",
                        "accounts": {"encoding": "base64", "addresses": addresses},
                    },
                ],
            ),
        ]
    )  # fmt: skip
    value = simulated["value"]
    if value.get("err") is not None:
        logs = value.get("logs") or []
        raise PolicyViolation("simulation_failed", None, f"the transaction fails in simulation: {value['err']} {' | '.join(logs[-3:])}"[:600])
    sol_loss, tokens = balance_losses(wallet, addresses, before["value"], value.get("accounts") or [None] * len(addresses))
    # The caps are the configuration's only: a plan's declared input is its own word, and a plan that
    # declared a large input would get an equally large cap (issue 20).
    sol_cap = settings.simulate_sol_loss_cap + settings.outflow_cap(NATIVE_MINT)
    if sol_loss > sol_cap:
        raise PolicyViolation("simulated_sol_loss", None, f"the wallet's SOL falls by {sol_loss} lamports in simulation, over the cap {sol_cap}")
    for mint, loss in tokens.items():
        cap = settings.simulate_max_token_loss + settings.outflow_cap(mint)
        if loss > cap:
            raise PolicyViolation("simulated_token_loss", None, f"the wallet's {mint} falls by {loss} base units in simulation, over the cap {cap}")
