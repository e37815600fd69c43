"""The `hft-executor` command."""
from __future__ import annotations

import argparse
import sys

from localnet import command as localnet_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hft-executor", description="Durable Solana trade executor.")
    commands = parser.add_subparsers(dest="command", required=True)
    localnet = commands.add_parser("localnet", help="run the local Solana cluster (JSON-RPC, Jito block engine, TPU over QUIC)")
    localnet_command.add_arguments(localnet)
    localnet.set_defaults(run=localnet_command.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
