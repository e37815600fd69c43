"""NATS security against the real nats-server: who may connect, and what each user may do.

The server is the one `dev` and the stack tests run (worker/nats_security.py): users worker, planner and operator
with their permissions, mutual TLS with certificates made at start. Every refusal is checked twice: the client is
told (an error), and nothing happened (the stream or bucket is unchanged).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import nats.errors
import pytest

from chaos.proxy import CuttableProxy
from settings import SettingsError
from tests.nats_helpers import JwtSetup, client, refused_connect, until_refused
from worker.config import ExecutorConfig
from worker.killswitch import halt_message
from worker.nats_connection import NatsAuth, TlsNotOffered, connect
from worker.nats_security import NatsSecurity
from devtools.services import NatsCluster, NatsServer, binary, free_port
from worker.streams import KILLSWITCH_SUBJECT, ensure_streams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
async def secured(tmp_path_factory):
    """The dev server, with the streams and buckets a worker makes and one plan record in them."""
    directory = tmp_path_factory.mktemp("nats-security")
    security = NatsSecurity.create(directory / "security")
    server = NatsServer(directory / "nats", port=0, security=security)
    await server.start()
    worker = await connect(server.url, security.auth("worker"))
    js = worker.jetstream()
    await ensure_streams(js)
    records = await js.create_key_value(bucket="plan_records")
    await records.create("signed.plan-1", b"the signed transaction")
    await worker.close()
    yield server, security
    await server.stop()


async def last_halt_seq(server: NatsServer, security: NatsSecurity) -> int | None:
    operator = await client(server.url, security.auth("operator"))
    try:
        return (await operator.jetstream().get_last_msg("SYSTEM", KILLSWITCH_SUBJECT)).seq
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await operator.close()


# --- who may connect ---------------------------------------------------------------------------------------


async def test_a_client_without_credentials_is_refused(secured):
    server, security = secured
    planner = security.auth("planner")
    anonymous = NatsAuth(tls_ca=planner.tls_ca, tls_cert=planner.tls_cert, tls_key=planner.tls_key)  # TLS fine, no user
    assert "authorization violation" in (await refused_connect(server.url, anonymous)).lower()


async def test_a_client_with_a_wrong_password_or_another_users_password_is_refused(secured):
    server, security = secured
    planner = security.auth("planner")
    wrong = NatsAuth(**{**vars(planner), "password": "not-the-password"})
    assert "authorization violation" in (await refused_connect(server.url, wrong)).lower()
    borrowed = NatsAuth(**{**vars(planner), "password": security.passwords["operator"]})
    assert "authorization violation" in (await refused_connect(server.url, borrowed)).lower()


async def test_a_client_that_does_not_trust_the_ca_is_refused(secured, tmp_path):
    server, security = secured
    planner = vars(security.auth("planner"))
    # No CA: the system's roots, which never signed the dev CA.
    system_roots = NatsAuth(**{**planner, "tls_ca": None, "tls_cert": None, "tls_key": None})
    assert "CERTIFICATE_VERIFY_FAILED" in await refused_connect(server.url, system_roots)
    # Another CA (another stack's), with a client certificate of its own.
    other = NatsSecurity.create(tmp_path / "other")
    stranger = NatsAuth(**{**planner, "tls_ca": str(other.ca_file), "tls_cert": str(other.cert_file("planner")), "tls_key": str(other.key_file("planner"))})
    assert "CERTIFICATE_VERIFY_FAILED" in await refused_connect(server.url, stranger)


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_one_from_another_ca(secured, tmp_path):
    server, security = secured
    planner = vars(security.auth("planner"))
    no_certificate = NatsAuth(**{**planner, "tls_cert": None, "tls_key": None})
    await refused_connect(server.url, no_certificate)
    other = NatsSecurity.create(tmp_path / "other")
    foreign = NatsAuth(**{**planner, "tls_cert": str(other.cert_file("planner")), "tls_key": str(other.key_file("planner"))})
    await refused_connect(server.url, foreign)
    assert "tls handshake" in server.log_file.read_text().lower()  # the server refused them, at the handshake
    nc = await client(server.url, security.auth("planner"))  # the same user with its own certificate is let in
    await nc.close()


async def test_tls_passes_through_the_chaos_proxy_and_the_server_name_is_still_verified(secured):
    server, security = secured
    proxy = CuttableProxy(lambda: [("127.0.0.1", server.port)], name="tls-test", scheme="tls")
    await proxy.start()
    try:
        assert proxy.url.startswith("tls://127.0.0.1:")
        nc = await client(proxy.url, security.auth("planner"))  # 127.0.0.1 is in the certificate
        assert (await nc.jetstream().publish("execution.planned.proxied", b"{}")).stream == "PLANNED"
        await nc.close()
        by_name = NatsAuth(**{**vars(security.auth("planner")), "tls_server_name": "localhost"})  # also in it
        await (await client(proxy.url, by_name)).close()
        # A name the certificate does not carry: refused, so the name is checked through the proxy.
        wrong = NatsAuth(**{**vars(security.auth("planner")), "tls_server_name": "nats.example.com"})
        assert "CERTIFICATE_VERIFY_FAILED" in await refused_connect(proxy.url, wrong)
    finally:
        await proxy.stop()


async def test_tls_asked_for_and_not_offered_sends_no_credentials(tmp_path, secured):
    """nats-py alone would send CONNECT, password included, in the clear to a server that does not offer TLS."""
    plain = NatsServer(tmp_path / "plain", port=0)
    await plain.start()
    try:
        auth = NatsAuth(user="planner", password="hunter2-password")
        with pytest.raises(TlsNotOffered):
            await client(plain.url.replace("nats://", "tls://"), auth)
    finally:
        await plain.stop()

    # Someone in the middle who strips TLS: whatever the client sends reaches this listener, and no password does.
    received = bytearray()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.15.1","max_payload":1048576,"auth_required":true}\r\n')
        await writer.drain()
        while data := await reader.read(4096):
            received.extend(data)
        writer.close()

    listener = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TlsNotOffered):
            await client(f"tls://127.0.0.1:{port}", auth)
        with pytest.raises(TlsNotOffered):  # a CA configured makes TLS required for a nats:// URL too
            await client(f"nats://127.0.0.1:{port}", NatsAuth(user="planner", password="hunter2-password", tls_ca=str(secured[1].ca_file)))
        await asyncio.sleep(0.1)
        assert b"hunter2-password" not in received and b"CONNECT" not in received
    finally:
        listener.close()


# --- what each user may do ----------------------------------------------------------------------------------


async def test_the_planner_publishes_plans_and_nothing_else(secured):
    server, security = secured
    before = await last_halt_seq(server, security)
    planner = await client(server.url, security.auth("planner"))
    js = planner.jetstream(timeout=0.5)
    try:
        assert (await js.publish("execution.planned.opportunity-1", b"{}")).stream == "PLANNED"

        with pytest.raises(nats.errors.TimeoutError):  # refused: the publish never reaches the stream
            await js.publish(KILLSWITCH_SUBJECT, halt_message("planner halt", "planner"))
        await until_refused(planner, f'publish to "{KILLSWITCH_SUBJECT}"')
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("system.resume", halt_message("planner resume", "planner"))
        await until_refused(planner, 'publish to "system.resume"')
        with pytest.raises(nats.errors.TimeoutError):  # results are the worker's
            await js.publish("executed.success.forged", b"{}")
        await until_refused(planner, 'publish to "executed.success.forged"')

        with pytest.raises(nats.errors.TimeoutError):  # no KV read: the JetStream API is not the planner's
            await js.key_value("plan_records")
        await until_refused(planner, "$JS.API.STREAM.INFO.KV_plan_records")
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_msg("KV_plan_records", 1)
        with pytest.raises(nats.errors.TimeoutError):  # nor a KV write
            await js.publish("$KV.plan_records.signed.plan-2", b"forged")

        # Nor a subscription that would see records being written, or another user's replies.
        seen: asyncio.Queue = asyncio.Queue()
        for subject in ("$KV.plan_records.>", "_INBOX.worker.>", "_INBOX.>", "execution.planned.>"):
            await planner.subscribe(subject, cb=seen.put)
            await until_refused(planner, f'subscription to "{subject}"')
        worker = await client(server.url, security.auth("worker"))
        records = await worker.jetstream().key_value("plan_records")
        await records.create("signed.plan-3", b"another signed transaction")
        assert (await records.get("signed.plan-3")).value == b"another signed transaction"
        await worker.close()
        await asyncio.sleep(0.2)
        assert seen.empty()
    finally:
        await planner.close()
    assert await last_halt_seq(server, security) == before, "a halt got into SYSTEM"


async def test_only_the_operator_publishes_on_system(secured):
    server, security = secured
    before = await last_halt_seq(server, security)
    worker = await client(server.url, security.auth("worker"))
    with pytest.raises(nats.errors.TimeoutError):
        await worker.jetstream(timeout=0.5).publish(KILLSWITCH_SUBJECT, halt_message("worker halt", "worker"))
    await until_refused(worker, f'publish to "{KILLSWITCH_SUBJECT}"')
    await worker.close()
    assert await last_halt_seq(server, security) == before

    operator = await client(server.url, security.auth("operator"))
    ack = await operator.jetstream().publish(KILLSWITCH_SUBJECT, halt_message("operator halt", "operator"))
    assert ack.stream == "SYSTEM" and await last_halt_seq(server, security) == ack.seq
    assert json.loads((await operator.jetstream().get_last_msg("SYSTEM", KILLSWITCH_SUBJECT)).data)["by"] == "operator"
    await operator.close()


async def test_nobody_purges_or_deletes_the_plan_records(secured):
    """A purged plan_records bucket would let a re-run sign a second transaction for a plan."""
    server, security = secured
    for role in ("operator", "worker"):
        nc = await client(server.url, security.auth(role))
        for subject, request in (
            ("$JS.API.STREAM.PURGE.KV_plan_records", {}),
            ("$JS.API.STREAM.DELETE.KV_plan_records", {}),
            ("$JS.API.STREAM.MSG.DELETE.KV_plan_records", {"seq": 1}),
            ("$JS.API.STREAM.UPDATE.KV_plan_records", {"name": "KV_plan_records", "subjects": ["$KV.plan_records.>"], "max_msgs": 0}),
            ("$JS.API.STREAM.DELETE.PLANNED", {}),
        ):
            with pytest.raises(nats.errors.TimeoutError):  # what nats-py's purge_stream, delete_stream, ... send
                await nc.request(subject, json.dumps(request).encode(), timeout=0.5)
            await until_refused(nc, subject)
        await nc.close()
    worker = await client(server.url, security.auth("worker"))
    assert (await (await worker.jetstream().key_value("plan_records")).get("signed.plan-1")).value == b"the signed transaction"
    await worker.close()


async def test_nobody_deletes_the_bridge_consumer_or_the_presence_and_spend_buckets(secured):
    """Issue 20: the operator could delete `executor-bridge` (no plan taken until a restart) and the
    presence bucket (then `halt --wait` found no live worker and exited 0 as if all had acknowledged)."""
    server, security = secured
    for role in ("operator", "worker"):
        nc = await client(server.url, security.auth(role))
        for subject, request in (
            ("$JS.API.CONSUMER.DELETE.PLANNED.executor-bridge", {}),
            ("$JS.API.STREAM.DELETE.KV_executor_workers", {}),
            ("$JS.API.STREAM.PURGE.KV_executor_workers", {}),
            ("$JS.API.STREAM.DELETE.KV_wallet_spend", {}),
            ("$JS.API.STREAM.PURGE.KV_wallet_spend", {}),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, json.dumps(request).encode(), timeout=0.5)
            await until_refused(nc, subject)
        await nc.close()


# --- the other ways to authenticate --------------------------------------------------------------------------


class ConfiguredNats(NatsServer):
    """nats-server with config lines of the test's own, probed with the test's credentials."""

    def __init__(self, data_dir: Path, lines: list[str], probe: NatsAuth) -> None:
        super().__init__(data_dir, port=0)
        self.lines, self.probe = lines, probe

    def _extra_config(self) -> list[str]:
        return self.lines

    def client_auth(self) -> NatsAuth:
        return self.probe


async def test_nkey_users_have_their_permissions(tmp_path):
    security = NatsSecurity.create(tmp_path / "security", method="nkey")
    seed = Path(security.auth("planner").nkey_seed)
    assert seed.read_text().startswith("SU") and oct(seed.stat().st_mode & 0o777) == "0o600"
    server = NatsServer(tmp_path / "nats", port=0, security=security)
    await server.start()  # its probe connects with the worker's nkey
    try:
        worker = await client(server.url, security.auth("worker"))
        await ensure_streams(worker.jetstream())
        await worker.close()
        planner = await client(server.url, security.auth("planner"))
        assert (await planner.jetstream().publish("execution.planned.nkey", b"{}")).stream == "PLANNED"
        with pytest.raises(nats.errors.TimeoutError):
            await planner.jetstream(timeout=0.5).publish(KILLSWITCH_SUBJECT, b"{}")
        await until_refused(planner, KILLSWITCH_SUBJECT)
        await planner.close()
        # Another seed (another stack's planner): the server does not know its public key.
        other = NatsSecurity.create(tmp_path / "other", method="nkey")
        stranger = NatsAuth(**{**vars(security.auth("planner")), "nkey_seed": other.auth("planner").nkey_seed})
        assert "authorization violation" in (await refused_connect(server.url, stranger)).lower()
    finally:
        await server.stop()


async def test_token_auth(tmp_path):
    token = "token-" + os.urandom(12).hex()
    server = ConfiguredNats(tmp_path / "nats", [f"authorization: {json.dumps({'token': token})}"], NatsAuth(token=token))
    await server.start()
    try:
        nc = await client(server.url, NatsAuth.from_environment({"NATS_TOKEN": token}))
        assert (await nc.jetstream().account_info()) is not None
        await nc.close()
        assert "authorization violation" in (await refused_connect(server.url, NatsAuth(token=token + "x"))).lower()
        assert "authorization violation" in (await refused_connect(server.url, None)).lower()
    finally:
        await server.stop()


async def test_a_creds_file_from_an_operator_account_user_jwt_chain(tmp_path):
    setup = JwtSetup()
    admin = setup.creds(tmp_path / "admin.creds", "admin", [">"], [">"])
    planner = setup.creds(tmp_path / "planner.creds", "planner", ["execution.planned.>"], ["_INBOX.planner.>"])
    server = ConfiguredNats(tmp_path / "nats", setup.server_config(), NatsAuth(creds=str(admin)))
    await server.start()  # probed by the admin user: its account has JetStream
    try:
        watcher = await client(server.url, NatsAuth.from_environment({"NATS_CREDS": str(admin)}))
        seen = asyncio.Queue()
        await watcher.subscribe(">", cb=seen.put)
        await watcher.flush()
        nc = await client(server.url, NatsAuth.from_environment({"NATS_CREDS": str(planner), "NATS_INBOX_PREFIX": "_INBOX.planner"}))
        await nc.publish("execution.planned.creds", b"{}")
        await nc.publish(KILLSWITCH_SUBJECT, b"{}")  # not in the user JWT's permissions
        await until_refused(nc, KILLSWITCH_SUBJECT)
        assert (await asyncio.wait_for(seen.get(), 5)).subject == "execution.planned.creds"
        await asyncio.sleep(0.2)
        assert seen.empty(), "the refused publish went through"
        await nc.close()
        await watcher.close()
        other = JwtSetup().creds(tmp_path / "other.creds", "planner", [">"], [">"])  # signed by an unknown account
        await refused_connect(server.url, NatsAuth(creds=str(other)))
    finally:
        await server.stop()


# --- the configuration ----------------------------------------------------------------------------------------


def test_credentials_never_show_in_repr_describe_or_errors(tmp_path):
    password, token = "pw-" + os.urandom(8).hex(), "tk-" + os.urandom(8).hex()
    config = ExecutorConfig.from_environment({"NATS_USER": "worker", "NATS_PASSWORD": password, "NATS_URL": "tls://nats.internal:4222"})
    for text in (repr(config), str(config), json.dumps(config.describe()), repr(config.nats_auth)):
        assert password not in text
    assert config.describe()["nats_auth"] == {"method": "user", "user": "worker"}
    assert token not in repr(NatsAuth.from_environment({"NATS_TOKEN": token}))

    def refusal(env: dict) -> str:
        with pytest.raises(SettingsError) as stopped:
            ExecutorConfig.from_environment(env)
        assert password not in str(stopped.value) and token not in str(stopped.value)
        return str(stopped.value)

    assert "NATS_USER and NATS_PASSWORD" in refusal({"NATS_PASSWORD": password})
    assert "only one of" in refusal({"NATS_USER": "w", "NATS_PASSWORD": password, "NATS_TOKEN": token})
    assert "NATS_URL carries credentials" in refusal({"NATS_URL": f"nats://worker:{password}@127.0.0.1:4222"})
    assert "NATS_URL carries credentials" in refusal({"NATS_URL": f"nats://{token}@127.0.0.1:4222"})
    assert "NATS_TLS_CERT and NATS_TLS_KEY" in refusal({"NATS_TLS_CERT": "/x.pem"})
    seed = tmp_path / "loose.nk"
    seed.write_text("SUAxxxx\n")
    seed.chmod(0o644)
    assert "NATS_NKEY_SEED" in (message := refusal({"NATS_NKEY_SEED": str(seed)})) and "chmod 600" in message
    assert "NATS_CREDS: cannot read" in refusal({"NATS_CREDS": str(tmp_path / "missing.creds")})
    not_creds = tmp_path / "not.creds"
    not_creds.write_text("hello")
    not_creds.chmod(0o600)
    assert "not a .creds file" in refusal({"NATS_CREDS": str(not_creds)})
    assert "NATS_TLS_CA" in refusal({"NATS_TLS_CA": str(not_creds)})  # no certificate in it: said at start


async def test_a_wrong_password_error_names_no_secret(secured):
    server, security = secured
    password = "wrong-" + os.urandom(8).hex()
    message = await refused_connect(server.url, NatsAuth(**{**vars(security.auth("worker")), "password": password}))
    assert password not in message and security.passwords["worker"] not in message


def test_dev_keeps_its_keys_and_config_owner_only(secured):
    server, security = secured
    assert security.directory.stat().st_mode & 0o777 == 0o700
    for path in security.directory.iterdir():
        mode = path.stat().st_mode & 0o777
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), (path.name, oct(mode))
    assert not list(security.directory.glob("ca-key*")), "the CA's key is not kept: nobody mints more certificates"
    assert server.config_file.stat().st_mode & 0o777 == 0o600  # it holds the passwords
    config = server.config_file.read_text()
    assert all(password in config for password in security.passwords.values())


async def test_a_secured_cluster_replicates_and_refuses_a_server_without_the_route_password(tmp_path):
    security = NatsSecurity.create(tmp_path / "security")
    cluster = NatsCluster(tmp_path / "cluster", size=3, security=security)
    await cluster.start()  # its probes create and delete an R3 stream as the worker
    rogue = None
    try:
        assert all(url.startswith("tls://") for url in cluster.urls)
        worker = await client(cluster.url, security.auth("worker"))
        await ensure_streams(worker.jetstream(), replicas=3)
        await worker.close()
        planner = await client(cluster.urls[2], security.auth("planner"))
        assert (await planner.jetstream().publish("execution.planned.clustered", b"{}")).stream == "PLANNED"
        await planner.close()

        # A server on this machine that routes to node 0 without the route password: a route is not subject to
        # client permissions, so one that joined would see and inject everything. It is refused.
        target = cluster.nodes[0]
        config = tmp_path / "rogue.conf"
        config.write_text(
            f"host: 127.0.0.1\nport: {free_port()}\ncluster {{\n  name: {cluster.cluster_name}\n  listen: 127.0.0.1:{free_port()}\n"
            f'  routes: ["nats-route://127.0.0.1:{target.cluster_port}"]\n}}\n'
        )
        rogue = await asyncio.create_subprocess_exec(binary("nats-server"), "-c", str(config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        refused = re.compile(r"Router connection closed: Authentication Failure", re.IGNORECASE)
        for _ in range(200):
            if refused.search(target.log_file.read_text()):
                break
            await asyncio.sleep(0.05)
        assert refused.search(target.log_file.read_text()), "node 0 did not refuse the rogue route"
        routes = (await target.monitor("routez"))["routes"]
        assert routes and {route.get("remote_name") for route in routes} == {"n1", "n2"}, routes
    finally:
        if rogue is not None and rogue.returncode is None:
            rogue.kill()
            await rogue.wait()
        await cluster.stop()
