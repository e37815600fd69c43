"""Clients for the NATS security tests, and a NATS operator, account and user made from scratch for the .creds test.

`client()` keeps the permission violations the server reports (asynchronously: the refused request itself
only times out), so a test can check both that the client was told and that nothing happened.

`JwtSetup` makes what `nsc` would: an operator JWT (self-signed), an account JWT signed by the operator, a user JWT signed by
the account, and the user's .creds file. The server runs in operator mode with the account preloaded in a memory
resolver. JWT: header {"typ": "JWT", "alg": "ed25519-nkey"}, claims with "nats": {"type", "version": 2, ...},
base64url without padding, signed with the issuer's nkey over "header.claims"; the jti is the base32 of the
SHA-512/256 of the claims without it (as the Go jwt library computes it).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

import nats.errors
import nkeys
import pytest
from nats.aio.client import Client

from worker.nats_connection import NatsAuth, connect

REFUSED = (nats.errors.Error, OSError, asyncio.TimeoutError)  # what a refused connect raises (auth, TLS, closed)


async def client(url: str, auth: NatsAuth | None, **options) -> Client:
    """A connected client whose asynchronous errors (permission violations) are kept in ``client.refusals``."""
    refusals: list[str] = []

    async def note(error: Exception) -> None:
        refusals.append(str(error))

    nc = await connect(url, auth, error_cb=note, allow_reconnect=False, connect_timeout=3, **options)
    nc.refusals = refusals
    return nc


async def refused_connect(url: str, auth: NatsAuth | None) -> str:
    with pytest.raises(REFUSED) as refusal:
        await asyncio.wait_for(client(url, auth), 10)
    return f"{type(refusal.value).__name__}: {refusal.value}"


async def until_refused(nc: Client, subject: str) -> None:
    for _ in range(100):
        if any(subject.lower() in refusal.lower() for refusal in nc.refusals):  # nats-py lowercases it
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}; got {nc.refusals}")


UNLIMITED = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,  # JetStream on for the account
}  # fmt: skip


def keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(secrets.token_bytes(32), prefix)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(claims: dict, issuer: nkeys.KeyPair) -> str:
    claims = {**claims, "iat": int(time.time()), "iss": issuer.public_key.decode()}
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signing_input = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(issuer.sign(signing_input.encode()))


class JwtSetup:
    def __init__(self) -> None:
        self.operator = keypair(nkeys.PREFIX_BYTE_OPERATOR)
        self.account = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.system = keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs the server's system account
        self.operator_jwt = encode({"sub": self.operator.public_key.decode(), "name": "hft-op", "nats": {"type": "operator", "version": 2}}, self.operator)
        self.account_jwt = encode(
            {"sub": self.account.public_key.decode(), "name": "hft", "nats": {"type": "account", "version": 2, "limits": UNLIMITED}},
            self.operator,
        )
        self.system_jwt = encode({"sub": self.system.public_key.decode(), "name": "SYS", "nats": {"type": "account", "version": 2}}, self.operator)

    def server_config(self) -> list[str]:
        return [
            f"operator: {json.dumps(self.operator_jwt)}",
            f"system_account: {self.system.public_key.decode()}",
            "resolver: MEMORY",
            f"resolver_preload: {json.dumps({self.account.public_key.decode(): self.account_jwt, self.system.public_key.decode(): self.system_jwt})}",
        ]

    def creds(self, path: Path, name: str, publish: list[str], subscribe: list[str]) -> Path:
        """A user of the account with these permissions, as a .creds file (mode 0600)."""
        user = keypair(nkeys.PREFIX_BYTE_USER)
        claims = {
            "sub": user.public_key.decode(), "name": name,
            "nats": {"type": "user", "version": 2, "pub": {"allow": publish}, "sub": {"allow": subscribe}, "subs": -1, "data": -1, "payload": -1},
        }  # fmt: skip
        text = (
            "-----BEGIN NATS USER JWT-----\n" + encode(claims, self.account) + "\n------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n" + user.seed.decode() + "\n------END USER NKEY SEED------\n"
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        return path
