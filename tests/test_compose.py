"""docker-compose.yml and the files it mounts: what a user of `docker compose up` relies on.

Static checks (no Docker needed): the services exist and are wired to each other, images are pinned,
every file the stack mounts or builds from is in the repository, Prometheus scrapes the workers, and
Grafana reads that Prometheus and every dashboard in deploy/grafana/dashboards/.
The shipped NATS config also runs on the real nats-server (the binary the project installs): its users
get exactly the permissions the dev stack's users have.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from workflows.execute_plan import SEARCH_ATTRIBUTES  # the names the workflow sets

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
METRICS_PORT = 9464

NATS_CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
NATS_PASSWORDS = {"worker": "NATS_WORKER_PASSWORD", "planner": "NATS_PLANNER_PASSWORD", "operator": "NATS_OPERATOR_PASSWORD"}
# Supplied by the operator at deploy time, never committed (wallet keys).
RUNTIME_ONLY_DIRS = ("secrets",)


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def depends_on(service: dict) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else []


def bind_sources(service: dict) -> list[str]:
    """Host paths of bind mounts (short `src:dst[:mode]` and long `type: bind` syntax); named volumes excluded."""
    sources = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source = volume.split(":", 1)[0] if ":" in volume else ""
            if source.startswith((".", "/", "~")):
                sources.append(source)
        elif volume.get("type") == "bind":
            sources.append(volume["source"])
    return sources


def repo_path(source: str) -> Path:
    return (ROOT / source).resolve()


def test_compose_file_uses_the_compose_specification(compose: dict) -> None:
    assert "version" not in compose, "the Compose specification has no top-level `version:`"
    assert isinstance(compose.get("services"), dict)


def test_required_services_exist(services: dict) -> None:
    for name in ("postgresql", "temporal", "temporal-ui", "nats", "worker", "prometheus", "grafana"):
        assert name in services, f"service {name!r} is missing"


def test_temporal_schema_and_namespace_setup_are_one_shot_admin_tools(services: dict) -> None:
    setup = services["temporal-admin-tools"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    script = " ".join(argv(setup.get("command")))
    for database in ("temporal", "temporal_visibility"):
        for step in ("create", "setup-schema", "update-schema"):
            assert f"--db {database} {step}" in script, f"{step} for {database} is missing"
    assert "--plugin postgres12" in script
    assert services["temporal"]["depends_on"]["temporal-admin-tools"]["condition"] == "service_completed_successfully"
    assert environment(services["temporal"])["DB"] == "postgres12"

    namespace_script = " ".join(argv(services["temporal-create-namespace"].get("command")))
    for attribute in SEARCH_ATTRIBUTES:
        assert f"--name {attribute} --type Keyword" in namespace_script, f"search attribute {attribute} is not registered"


def test_worker_runs_two_replicas_against_the_compose_services(services: dict) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    env = environment(worker)

    host, _, port = env["TEMPORAL_ADDRESS"].partition(":")
    assert host == "temporal" and host in services
    assert port == "7233"

    nats_url = urlsplit(env["NATS_URL"])
    assert nats_url.scheme == "nats"
    assert nats_url.hostname == "nats" and nats_url.hostname in services
    assert nats_url.port == 4222

    assert env["METRICS_PORT"] == str(METRICS_PORT)
    assert env["METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes the workers over the compose network"
    assert str(METRICS_PORT) in [str(p) for p in worker.get("expose", [])]
    assert "ports" not in worker, "replicas cannot all publish the same host port"


def test_worker_command_is_hft_executor_worker(services: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["hft-executor"]' in dockerfile
    assert argv(services["worker"]["command"]) == ["worker"]


def test_nats_runs_jetstream_syncing_every_write_to_a_store_on_a_volume(compose: dict, services: dict) -> None:
    """The plan record is the commit point: nats-server's default 2-minute disk sync could lose it."""
    nats = services["nats"]
    args = argv(nats.get("command"))
    config_path = args[args.index("-c") + 1]
    mounted = {target: source for source, target, *_ in (v.split(":") for v in nats.get("volumes", []) if isinstance(v, str))}
    config = (ROOT / mounted[config_path]).read_text(encoding="utf-8")
    jetstream = re.search(r"jetstream\s*\{([^}]*)\}", config).group(1)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream, re.MULTILINE)
    store = re.search(r"^\s*store_dir:\s*(\S+)\s*$", jetstream, re.MULTILINE).group(1)
    assert mounted.get(store) in (compose.get("volumes") or {}), f"the JetStream store {store} is not on a named volume"


def test_temporal_and_its_ui_are_published_on_loopback_only(services: dict) -> None:
    """Issue 20: with no TLS and no authorizer, whoever reaches Temporal's port or its UI can start, cancel
    or terminate plans, without NATS credentials. Both are the host's loopback only."""
    for name in ("temporal", "temporal-ui"):
        ports = services[name].get("ports", [])
        assert ports, name
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_depends_on_names_an_existing_service(services: dict) -> None:
    for name, service in services.items():
        for dependency in depends_on(service):
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"


def test_every_image_has_an_explicit_tag(services: dict) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        assert "${" not in image, f"{name}: image {image!r} depends on the environment"
        reference = image.split("@", 1)[0]
        last = reference.rsplit("/", 1)[-1]
        assert ":" in last, f"{name}: image {image!r} has no tag"
        tag = last.split(":", 1)[1]
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"


def test_every_mounted_or_built_file_exists(services: dict) -> None:
    for required in ("Dockerfile", "deploy/prometheus.yml", "deploy/temporal/dynamicconfig.yaml", "deploy/grafana/provisioning", "deploy/grafana/dashboards"):
        assert (ROOT / required).exists(), f"{required} is missing"

    for name, service in services.items():
        for source in bind_sources(service):
            path = repo_path(source)
            assert path.is_relative_to(ROOT), f"{name} mounts {source}, outside the repository"
            if path.relative_to(ROOT).parts[0] in RUNTIME_ONLY_DIRS:
                continue
            assert path.exists(), f"{name} mounts {source}, which does not exist"

        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert repo_path(context).is_dir(), f"{name}: build context {context} is missing"
            assert (repo_path(context) / dockerfile).is_file(), f"{name}: {dockerfile} is missing"


def test_mounted_configs_are_the_ones_in_deploy(services: dict) -> None:
    assert "./deploy/prometheus.yml" in bind_sources(services["prometheus"])
    assert "./deploy/temporal/dynamicconfig.yaml" in bind_sources(services["temporal"])


def test_prometheus_scrapes_the_workers_on_the_metrics_port(services: dict) -> None:
    config = load_yaml(ROOT / "deploy" / "prometheus.yml")
    worker_targets = []
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            if sd.get("port") == METRICS_PORT:
                worker_targets.extend(sd["names"])
        for static in job.get("static_configs", []):
            worker_targets.extend(t.rsplit(":", 1)[0] for t in static.get("targets", []) if t.endswith(f":{METRICS_PORT}"))
    assert worker_targets, f"no scrape config targets port {METRICS_PORT}"
    for target in worker_targets:
        assert target.removeprefix("tasks.") in services, f"scrape target {target} is not a compose service"


# --- Grafana ----------------------------------------------------------------------------------------------------


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> repository path, for the short `src:dst[:mode]` bind mounts."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith("."):
            source, target = volume.split(":")[:2]
            mounts[target] = repo_path(source)
    return mounts


def in_container(mounts: dict[str, Path], path: str) -> Path:
    """The repository file a container path is, through the service's bind mounts."""
    for target, source in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is not under a bind mount: {sorted(mounts)}")


def test_grafana_login_is_required_with_a_password_from_the_environment(services: dict) -> None:
    env = environment(services["grafana"])
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"]), "no default admin password"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false" and env["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_grafana_datasource_is_the_compose_prometheus(services: dict) -> None:
    mounts = bind_mounts(services["grafana"])
    files = sorted(in_container(mounts, "/etc/grafana/provisioning/datasources").glob("*.y*ml"))
    datasources = [source for path in files for source in load_yaml(path).get("datasources", [])]
    (prometheus,) = [source for source in datasources if source["type"] == "prometheus"]
    url = urlsplit(prometheus["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert "prometheus" in depends_on(services["grafana"])
    published = [str(port).rsplit(":", 1)[-1] for port in services["prometheus"].get("ports", [])]
    assert str(url.port) in published, "Prometheus listens on the port the datasource names"
    scrape_interval = load_yaml(ROOT / "deploy" / "prometheus.yml")["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape_interval, "$__rate_interval needs the real scrape interval"


def test_grafana_loads_every_dashboard_in_deploy_on_the_provisioned_datasource(services: dict) -> None:
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    datasource_files = in_container(mounts, "/etc/grafana/provisioning/datasources").glob("*.y*ml")
    uids = {source["uid"] for path in datasource_files for source in load_yaml(path).get("datasources", [])}
    providers = [p for path in in_container(mounts, "/etc/grafana/provisioning/dashboards").glob("*.y*ml") for p in load_yaml(path)["providers"]]
    folders = [in_container(mounts, provider["options"]["path"]) for provider in providers]
    assert ROOT / "deploy" / "grafana" / "dashboards" in folders
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or in_container(mounts, home).is_file(), f"home dashboard {home} is not mounted"

    jobs = {job["job_name"] for job in load_yaml(ROOT / "deploy" / "prometheus.yml")["scrape_configs"]}
    dashboards = [path for folder in folders for path in sorted(folder.glob("*.json"))]
    assert dashboards
    dashboard_uids = []
    for path in dashboards:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        dashboard_uids.append(dashboard["uid"])
        panels = [p for panel in dashboard["panels"] for p in (panel, *panel.get("panels", []))]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels:
            for holder in (panel, *panel.get("targets", [])):
                if isinstance(holder.get("datasource"), dict):
                    assert holder["datasource"]["uid"] in uids, f"{path.name}, {panel['title']}: unknown datasource"
            for target in panel.get("targets", []):
                for job in re.findall(r'\bjob\s*=\s*"([^"]+)"', target["expr"]):
                    assert job in jobs, f"{path.name}, {panel['title']}: job {job!r} is not scraped"
    assert len(dashboard_uids) == len(set(dashboard_uids)), "dashboard uids repeat"


def test_temporal_dynamic_config_raises_the_transfer_poll_rate() -> None:
    config = load_yaml(ROOT / "deploy" / "temporal" / "dynamicconfig.yaml")
    (entry,) = config["history.transferProcessorMaxPollRPS"]
    assert entry["value"] > 20, "the default 20/s adds ~50 ms to each task-queue hand-off"
    assert "limit.maxIDLength" not in config


# --- NATS users and permissions -------------------------------------------------------------------------------


def test_nats_passwords_come_from_the_environment_and_are_required(services: dict) -> None:
    nats_env = environment(services["nats"])
    for variable in NATS_PASSWORDS.values():
        # ${VAR:?message}: `docker compose up` stops with the message when it is unset; no default password exists.
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", nats_env[variable]), nats_env[variable]
    worker = environment(services["worker"])
    assert worker["NATS_USER"] == "worker"
    assert re.fullmatch(r"\$\{NATS_WORKER_PASSWORD:\?[^}]+\}", worker["NATS_PASSWORD"])
    assert worker["NATS_INBOX_PREFIX"] == "_INBOX.worker"
    config = NATS_CONFIG.read_text(encoding="utf-8")
    passwords = re.findall(r"^\s*password:\s*(\S+)", config, re.MULTILINE)
    assert sorted(passwords) == sorted(f"${variable}" for variable in NATS_PASSWORDS.values()), "a password is written in the file"
    assert "127.0.0.1:8222:8222" in services["nats"]["ports"], "unauthenticated monitoring is published on the host's loopback only"


def _user_block(config: str, user: str) -> str:
    start = re.search(rf"^\s*user:\s*{user}\s*$", config, re.MULTILINE)
    assert start, f"no user {user} in {NATS_CONFIG}"
    following = re.search(r"^\s*user:", config[start.end() :], re.MULTILINE)
    return config[start.end() : start.end() + following.start()] if following else config[start.end() :]


def test_the_shipped_users_have_the_dev_stacks_permissions() -> None:
    """deploy/nats/nats.conf and worker/nats_security.py's ROLES are one table written twice: they must agree."""
    from worker.nats_security import NO_DESTRUCTION, ROLES

    config = NATS_CONFIG.read_text(encoding="utf-8")
    protected = re.search(r"^PROTECTED_STREAMS:\s*\[(.*?)\]", config, re.MULTILINE | re.DOTALL).group(1)
    assert sorted(re.findall(r'"([^"]+)"', protected)) == sorted(NO_DESTRUCTION)
    for role, permissions in ROLES.items():
        block = _user_block(config, role)
        publish = re.search(r"publish:\s*\{\s*allow:\s*\[(.*?)\]", block, re.DOTALL).group(1)
        subscribe = re.search(r"subscribe:\s*\{\s*allow:\s*\[(.*?)\]", block, re.DOTALL).group(1)
        assert re.findall(r'"([^"]+)"', publish) == list(permissions.publish), role
        assert re.findall(r'"([^"]+)"', subscribe) == list(permissions.subscribe), role
        assert ("deny: $PROTECTED_STREAMS" in block) == bool(permissions.publish_deny), role


async def test_the_shipped_nats_config_on_the_real_server(tmp_path, monkeypatch) -> None:
    """The file as shipped (ports and store moved for the test): every user can do its job and nothing more."""
    import nats.errors

    from tests.nats_helpers import client, refused_connect, until_refused
    from worker.killswitch import halt_message
    from worker.nats_connection import NatsAuth
    from worker.nats_security import inbox_prefix
    from devtools.services import NatsServer
    from worker.streams import KILLSWITCH_SUBJECT, ensure_streams

    passwords = {role: f"{role}-{tmp_path.name[-6:]}-0123456789abcdef" for role in NATS_PASSWORDS}
    for role, variable in NATS_PASSWORDS.items():
        monkeypatch.setenv(variable, passwords[role])  # nats-server inherits them, as in the container

    def auth(role: str) -> NatsAuth:
        return NatsAuth(user=role, password=passwords[role], inbox_prefix=inbox_prefix(role))

    class Shipped(NatsServer):
        def config(self) -> str:
            text = NATS_CONFIG.read_text(encoding="utf-8")
            text = re.sub(r"^port: 4222\b", f"port: {self.port}", text, flags=re.MULTILINE)
            text = re.sub(r"^http_port: 8222\b.*$", "", text, flags=re.MULTILINE)
            assert "store_dir: /data" in text
            return text.replace("store_dir: /data", f"store_dir: {json.dumps(str(self.data_dir))}")

        def client_auth(self) -> NatsAuth:
            return auth("worker")

    server = Shipped(tmp_path / "nats", port=0)
    await server.start()
    try:
        assert "authorization violation" in (await refused_connect(server.url, None)).lower()
        assert "authorization violation" in (await refused_connect(server.url, NatsAuth(user="worker", password=passwords["planner"]))).lower()

        worker = await client(server.url, auth("worker"))  # what a worker does at start
        js = worker.jetstream()
        await ensure_streams(js)
        records = await js.create_key_value(bucket="plan_records")
        await records.create("signed.p1", b"signed")
        with pytest.raises(nats.errors.TimeoutError):
            await worker.jetstream(timeout=0.5).publish(KILLSWITCH_SUBJECT, halt_message("worker", "worker"))
        await until_refused(worker, KILLSWITCH_SUBJECT)
        await worker.close()

        planner = await client(server.url, auth("planner"))
        assert (await planner.jetstream().publish("execution.planned.compose", b"{}")).stream == "PLANNED"
        for subject in (KILLSWITCH_SUBJECT, "$JS.API.STREAM.INFO.KV_plan_records"):
            with pytest.raises(nats.errors.TimeoutError):
                await planner.request(subject, b"{}", timeout=0.5)
            await until_refused(planner, subject)
        await planner.close()

        operator = await client(server.url, auth("operator"))
        assert (await operator.jetstream().publish(KILLSWITCH_SUBJECT, halt_message("compose halt", "ops"))).stream == "SYSTEM"
        assert (await (await operator.jetstream().key_value("plan_records")).get("signed.p1")).value == b"signed"
        with pytest.raises(nats.errors.TimeoutError):
            await operator.request("$JS.API.STREAM.PURGE.KV_plan_records", b"{}", timeout=0.5)
        await until_refused(operator, "$JS.API.STREAM.PURGE.KV_plan_records")
        await operator.close()
    finally:
        await server.stop()
