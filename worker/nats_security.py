"""NATS with authentication, per-user permissions and TLS, for `hft-executor dev`, the tests, bench and chaos.

``NatsSecurity.create(directory)`` makes, once per stack:

* a CA, a server certificate for 127.0.0.1 and localhost, and one client certificate per role (ECDSA P-256,
  `cryptography`), under ``directory`` (mode 0700; private keys 0600). The CA's private key is not kept: once
  the certificates are issued nobody, this process included, can mint another one the server would accept;
* a user per role with a fresh random password (or, with ``method="nkey"``, an nkey seed file per role),
  with the permissions of ``ROLES``;
* a password for the cluster's routes, so that nobody else on the machine can join as a server (a route is not
  subject to client permissions). Routes stay plain TCP on 127.0.0.1.

``NatsServer(..., security=...)`` and ``NatsCluster(..., security=...)`` put it in their config file;
``auth(role)`` / ``environment(role)`` give a client (or a child process) that role's credentials.
The same users and permissions ship for production in deploy/nats/nats.conf (passwords from the environment).
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .nats_connection import NatsAuth

# Streams whose loss or rewrite would let a plan be signed twice or a halt be forgotten: no user may delete,
# purge or reconfigure them, nor delete single messages from them (an admin does that with a system account).
# The presence and spend buckets too: with the workers' presence gone, `halt --wait` finds no live worker
# and exits 0 as if every one had acknowledged; with the spend totals gone, the per-minute cap starts over.
PROTECTED_STREAMS = ("PLANNED", "EXECUTED", "SYSTEM", "KV_plan_records", "KV_wallet_leases", "KV_executor_workers", "KV_wallet_spend")
# And the bridge's durable consumer on PLANNED: deleted, no plan would be taken until a worker restarts.
PROTECTED_CONSUMERS = ("$JS.API.CONSUMER.DELETE.PLANNED.>",)
NO_DESTRUCTION = tuple(f"$JS.API.STREAM.{op}.{stream}" for op in ("DELETE", "PURGE", "UPDATE", "MSG.DELETE") for stream in PROTECTED_STREAMS) + PROTECTED_CONSUMERS


def inbox_prefix(role: str) -> str:
    """Each role's replies under its own subtree, so that no role can subscribe to another's (KV reads included)."""
    return f"_INBOX.{role}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()

    def config(self) -> dict:
        publish: dict = {"allow": list(self.publish)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        return {"publish": publish, "subscribe": {"allow": list(self.subscribe)}}


ROLES: dict[str, Permissions] = {
    # Streams, consumers and KV through the JetStream API; KV writes ($KV.<bucket>.<key>); acks of the bridge's
    # pull consumer; flow-control replies of ordered consumers (kill switch, KV watches); results; the stop notice.
    "worker": Permissions(
        publish=(
            "$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
            "$KV.plan_records.>", "$KV.wallet_leases.>", "$KV.executor_workers.>", "$KV.wallet_spend.>",
            "executed.>", "metrics.executor.stopped",
        ),
        subscribe=(inbox_prefix("worker") + ".>",),
        publish_deny=NO_DESTRUCTION,
    ),
    # Plans in, nothing else: not the JetStream API (no KV read, no stream created), not system.>.
    "planner": Permissions(publish=("execution.planned.>",), subscribe=(inbox_prefix("planner") + ".>",)),
    # The kill switch, and reading everything (status, halt --wait, results): the EXECUTED stream through an
    # ordered consumer ($JS.API.> to create it, $JS.FC.> to answer its flow control, its deliveries on its own
    # inbox), results and stop notices live too. The planner reads none of it.
    "operator": Permissions(
        publish=("system.>", "$JS.API.>", "$JS.FC.>"),
        subscribe=(inbox_prefix("operator") + ".>", "executed.>", "metrics.executor.>"),
        publish_deny=NO_DESTRUCTION,
    ),
}

ROUTE_USER = "route"
CERT_DAYS = 90
HOSTS = ("127.0.0.1", "localhost")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written with its final mode from the start: a key is never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


@dataclass
class NatsSecurity:
    directory: Path
    roles: dict[str, Permissions]
    method: str  # "password" or "nkey"
    tls: bool
    verify_clients: bool  # mutual TLS: a client without a certificate from the CA is refused
    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    nkeys: dict[str, str] = field(default_factory=dict)  # role -> public nkey (its seed is in <role>.nk)
    route_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        roles: dict[str, Permissions] | None = None,
        method: str = "password",
        tls: bool = True,
        verify_clients: bool = True,
        hosts: tuple[str, ...] = HOSTS,
    ) -> NatsSecurity:
        if method not in ("password", "nkey"):
            raise ValueError(f"method must be password or nkey, not {method!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        security = cls(directory, dict(roles or ROLES), method, tls, verify_clients)
        for role in security.roles:
            if method == "password":
                security.passwords[role] = secrets.token_urlsafe(24)
            else:
                security.nkeys[role] = _new_nkey(directory / f"{role}.nk")
        if tls:
            _issue_certificates(directory, list(security.roles), hosts)
        return security

    # --- files ----------------------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def cert_file(self, name: str) -> Path:
        return self.directory / f"{name}-cert.pem"

    def key_file(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    # --- the server's side -------------------------------------------------------------------------------------

    def server_config(self) -> list[str]:
        """Lines for nats-server's config file (its config syntax reads JSON)."""
        users = []
        for role, permissions in self.roles.items():
            who = {"user": role, "password": self.passwords[role]} if self.method == "password" else {"nkey": self.nkeys[role]}
            users.append({**who, "permissions": permissions.config()})
        # On a loaded 2-core machine a TLS handshake can take longer than nats-server's 0.5 s default.
        lines = ["authorization: " + json.dumps({"timeout": 5, "users": users})]
        if self.tls:
            tls = {
                "cert_file": str(self.cert_file("server")), "key_file": str(self.key_file("server")),
                "ca_file": str(self.ca_file), "verify": self.verify_clients, "timeout": 5,
            }  # fmt: skip
            lines.append("tls: " + json.dumps(tls))
        return lines

    def route_authorization(self) -> str:
        return json.dumps({"user": ROUTE_USER, "password": self.route_password, "timeout": 5})

    def route_url(self, host: str, port: int) -> str:
        return f"nats-route://{ROUTE_USER}:{self.route_password}@{host}:{port}"

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    # --- the clients' side -------------------------------------------------------------------------------------

    def auth(self, role: str) -> NatsAuth:
        if role not in self.roles:
            raise KeyError(f"no NATS role {role!r} (roles: {', '.join(self.roles)})")
        tls = {}
        if self.tls:
            tls = {"tls_ca": str(self.ca_file), "tls_cert": str(self.cert_file(role)), "tls_key": str(self.key_file(role))}
        who = {"user": role, "password": self.passwords[role]} if self.method == "password" else {"nkey_seed": str(self.directory / f"{role}.nk")}
        return NatsAuth(**who, **tls, inbox_prefix=inbox_prefix(role))

    def environment(self, role: str) -> dict[str, str]:
        return self.auth(role).environment()


def _new_nkey(path: Path) -> str:
    """A user nkey: its seed written to ``path`` (0600), its public key returned."""
    import nkeys

    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    _write(path, seed + b"\n", 0o600)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


def _issue_certificates(directory: Path, roles: list[str], hosts: tuple[str, ...]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hft-executor dev"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("hft-executor dev NATS CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _write(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(file_name: str, common_name: str, usage, alt_names: list | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )  # fmt: skip
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        certificate = builder.sign(ca_key, hashes.SHA256())
        _write(directory / f"{file_name}-cert.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / f"{file_name}-key.pem", pem_key(key), 0o600)

    def alt_name(host: str):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    issue("server", hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, [alt_name(host) for host in hosts])
    for role in roles:
        issue(role, role, ExtendedKeyUsageOID.CLIENT_AUTH)
