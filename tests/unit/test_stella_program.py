"""The stella stack under Pulumi's mock monitor: placement, wiring, secrets, generated files."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from pulumi.runtime import rpc

from harness.certs import lan_certificate
from infra.components.postgres import OFFLOAD_ROLE_SQL
from infra.config import ConfigError
from infra.plan import PROJECT_DIR, Plan, build_plan
from infra.plan.policy_check import evaluate
from infra.plan.recorder import MASK, unmarked_secrets
from infra.plan.stackfile import placeholder, read_stack_file
from infra.render.compose import FILES_LABEL, compose_document
from infra.services import ServiceSpec
from runtime.batch.settings import BatchSettings
from tests.conftest import require_binary
from tests.plans import stack_plan

STELLA_IP, NOVA_IP = "10.10.10.1", "10.10.10.2"
DATA_SERVICES = ("redis", "postgres", "minio")
LINK = "enp1s0f1np1"  # the boxes' direct link: required with tensor/pipeline
TENSOR = {"parallelism": "tensor", "ncclSocketIfname": LINK}


def _offline_apart() -> dict[str, str]:
    """The offline batch engine needs a host without a vLLM server: a third box with the batch role."""
    hosts = yaml.safe_load((PROJECT_DIR / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    hosts[0]["roles"] = [r for r in hosts[0]["roles"] if r != "batch"]
    box = {**hosts[1], "name": "batchbox", "address": "10.10.10.3", "clusterAddress": "10.10.10.3", "roles": ["batch"]}
    return {"batchEngine": "offline", "hosts": json.dumps([*hosts, box])}


OFFLINE_APART = _offline_apart()


@pytest.fixture(scope="module")
def stella() -> Plan:
    return stack_plan("stella")


def compose(plan: Plan, host: str) -> dict:
    return yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])


def resource(plan: Plan, type_: str, name: str) -> dict:
    (found,) = [r for r in plan.resources if r["type"] == type_ and r["name"] == name]
    return found


def raw_inputs(plan: Plan, type_: str, name: str) -> dict:
    (found,) = [r for r in plan.recording.resources if r.type == type_ and r.name == name]
    return found.inputs


def test_every_service_runs_on_its_host(stella: Plan) -> None:
    assert set(compose(stella, "stella")["services"]) == {
        "redis", "minio", "minio-setup", "postgres", "postgres-setup", "ray-head", "ray-worker-stella",
        "vllm-stella", "lb", "batch-api", "batch-worker", "prometheus", "grafana",
        "dcgm-exporter-stella", "node-exporter-stella", "memguard-stella",
    }  # fmt: skip
    assert set(compose(stella, "nova")["services"]) == {
        "ray-worker-nova", "vllm-nova", "dcgm-exporter-nova", "node-exporter-nova", "memguard-nova"
    }  # fmt: skip
    assert "nova/prometheus.yml" not in stella.files and "stella/prometheus.yml" in stella.files


def test_gpu_services_reserve_the_gpu_and_nothing_else_does(stella: Plan) -> None:
    for host in ("stella", "nova"):
        for name, service in compose(stella, host)["services"].items():
            reserved = "reservations" in service["deploy"]["resources"]
            assert reserved == name.startswith(("vllm-", "ray-worker-", "dcgm-exporter-")), name


def test_every_container_has_a_memory_limit_and_a_restart_policy(stella: Plan) -> None:
    for host in ("stella", "nova"):
        for name, service in compose(stella, host)["services"].items():
            assert re.fullmatch(r"\d+[kmg]", service["deploy"]["resources"]["limits"]["memory"]), name
            assert service["restart"] in {"unless-stopped", "on-failure"}, name


def test_load_balancer_routes_to_every_vllm_server(stella: Plan) -> None:
    cfg = stella.files["stella/haproxy.cfg"]
    servers = re.findall(r"^\s+server (\S+) (\S+) check$", cfg, re.M)
    assert servers == [("stella", f"{STELLA_IP}:8000"), ("nova", f"{NOVA_IP}:8000")]
    assert stella.outputs["vllmUrls"] == [f"http://{a}/v1" for _, a in servers]
    lb = compose(stella, "stella")["services"]["lb"]
    assert lb["volumes"] == [
        "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro",
        "./lb-stack-keys.map:/usr/local/etc/haproxy/stack-keys.map:ro",  # the stack's own keys, by digest
        "./lb-keys:/usr/local/etc/haproxy/keys",  # users' keys and the admin socket (runtime.lbkeys)
    ]
    # Clients over TLS (the certificate the entrypoint writes from the secrets), the stats page plain and internal.
    binds = re.findall(r"^\s+bind (\S+)(.*)$", cfg, re.M)
    assert binds == [("0.0.0.0:8080", " ssl crt /tmp/tls/server.pem alpn h2,http/1.1"), (f"{STELLA_IP}:8404", "")]
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2" in cfg


def test_vllm_servers_get_engine_args_model_cache_and_hf_token(stella: Plan) -> None:
    for host, ip in (("stella", STELLA_IP), ("nova", NOVA_IP)):
        vllm = compose(stella, host)["services"][f"vllm-{host}"]
        # behind the start-time headroom check (runtime.headroom, tests/unit/test_headroom.py), which execs vLLM
        args = vllm["command"][vllm["command"].index("--") + 1 :]
        assert args[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        flags = dict(itertools.pairwise(args))  # flag -> the word after it
        assert flags["--model"] == "Qwen/Qwen3-4B"
        # The KV policy's GB10 ceiling 0.85, less the neighbours' limits on stella (infra.memory): 0.40.
        assert flags["--gpu-memory-utilization"] == "0.40"
        # 64 x 8192 tokens no longer fit in bf16 once the neighbours have their share: fp8 (README: KV policy).
        assert flags["--kv-cache-dtype"] == "fp8"
        assert int(flags["--kv-cache-memory-bytes"]) > 30 * 2**30  # sized explicitly on GB10: all of its KV budget
        assert "--enable-prefix-caching" in args
        assert "--swap-space" not in args
        assert flags["--host"] == ip and flags["--port"] == "8000"
        assert "model-cache:/models" in vllm["volumes"]
        assert vllm["environment"]["HF_TOKEN"].startswith("${HF_TOKEN:?")
        assert f"http://{ip}:8000/health" in vllm["healthcheck"]["test"][-1]


def _secrets_env(plan: Plan, host: str) -> dict[str, str]:
    stdin = raw_inputs(plan, "command:remote:Command", f"{host}-compose-up")["stdin"]
    assert rpc.is_rpc_secret(stdin), "the secrets env must travel as a secret"
    text = rpc.unwrap_rpc_secret(stdin)
    return {k: v.strip("'") for k, v in (line.split("=", 1) for line in text.splitlines())}


def _interpolate(env: dict[str, str], secrets: dict[str, str]) -> dict[str, str]:
    def fill(value: str) -> str:
        return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: secrets[m.group(1)], value).replace("$$", "$")

    return {k: fill(v) for k, v in env.items()}


def test_batch_services_are_wired_to_redis_s3_and_the_load_balancer(
    stella: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose(stella, "stella")["services"]
    secrets = _secrets_env(stella, "stella")
    for name in ("batch-api", "batch-worker"):
        for key, value in _interpolate(services[name]["environment"], secrets).items():
            monkeypatch.setenv(key, value)
        settings = BatchSettings()
        assert str(settings.vllm_base_url) == f"https://{STELLA_IP}:8080/v1"  # the load balancer serves TLS
        assert str(settings.s3_endpoint_url).rstrip("/") == stella.outputs["minioEndpoint"]
        # The scoped user the bucket set-up makes, not the root (test_no_batch_service_holds_the_s3_root_key).
        assert settings.s3_access_key_id == "vllm-gb10-batch"
        assert settings.s3_secret_access_key.get_secret_value() == secrets["S3_BATCH_USER_SECRET"]
        assert (settings.redis_url.host, settings.redis_url.port) == (STELLA_IP, 6379)
        # The batch services' ACL user, whose password the server knows only by its SHA-256.
        assert settings.redis_url.username == "batch"
        assert settings.redis_url.password != secrets["REDIS_PASSWORD"]
        assert (
            hashlib.sha256(str(settings.redis_url.password).encode()).hexdigest()
            == secrets["REDIS_BATCH_PASSWORD_SHA256"]
        )
        assert settings.model == "Qwen/Qwen3-4B"
        # The API has no metrics server of its own; the worker's binds the cluster address.
        assert settings.worker_metrics_host == (STELLA_IP if name == "batch-worker" else "0.0.0.0")
    assert services["batch-api"]["command"][:3] == ["python", "-m", "runtime.batch.api"]
    assert services["batch-worker"]["command"] == ["python3", "-m", "runtime.batch.worker"]


def test_ray_workers_join_the_head(stella: Plan) -> None:
    head = compose(stella, "stella")["services"]["ray-head"]
    assert "--head" in head["command"] and "--port=6380" in head["command"]
    assert f"--dashboard-host={STELLA_IP}" in head["command"]
    for host, ip in (("stella", STELLA_IP), ("nova", NOVA_IP)):
        worker = compose(stella, host)["services"][f"ray-worker-{host}"]
        assert worker["network_mode"] == "host"
        assert f"--address={STELLA_IP}:6380" in worker["command"]
        assert f"--node-ip-address={ip}" in worker["command"]
    assert stella.outputs["rayClientAddress"] == f"ray://{STELLA_IP}:10001"
    assert stella.outputs["rayJobsAddress"] == f"http://{STELLA_IP}:8265"


PUBLIC_SERVICES = {"lb", "batch-api", "grafana"}
ONE_SHOTS = ("minio-setup", "postgres-setup")
# Where each service says it listens: command-line flags, two environment variables, haproxy.cfg.
LISTEN = re.compile(
    r"(?:--bind|--host|--address|--console-address|--web\.listen-address|-a|listen_addresses|--node-ip-address"
    r"|--dashboard-host|--internal-host)[= ](\S+)"
)
LISTEN_ENV = ("GF_SERVER_HTTP_ADDR", "BATCH_WORKER_METRICS_HOST", "MEMGUARD_METRICS_HOST")


def _hosts_with_public_addresses(**addresses: str) -> str:
    hosts = json.loads(read_stack_file(PROJECT_DIR, "stella").values["vllm-gb10:hosts"])
    return json.dumps([{**h, "publicAddress": addresses[h["name"]]} for h in hosts])


def _listen_addresses(plan: Plan, host: str) -> dict[str, set[str]]:
    """service -> the addresses (no port) it is told to listen on."""
    found = {}
    for name, service in compose(plan, host)["services"].items():
        text = " ".join(service.get("command", []))
        if "ray start" in text:
            text = re.sub(r"--address=\S+", "", text)  # the head to join, not a listen address
        values = LISTEN.findall(text) + [
            service.get("environment", {})[k] for k in LISTEN_ENV if k in service.get("environment", {})
        ]
        if name == "lb":
            values += re.findall(r"^\s+bind (\S+)", plan.files[f"{host}/haproxy.cfg"], re.M)
        found[name] = {v.rsplit(":", 1)[0] if v.count(":") == 1 else v for v in values}
    return found


@pytest.mark.parametrize("overrides", [{}, TENSOR, OFFLINE_APART])
def test_every_compose_service_runs_on_the_host_network_and_publishes_nothing(overrides: dict) -> None:
    plan = build_plan("stella", overrides=overrides)
    for host in ("stella", "nova"):
        for name, service in compose(plan, host)["services"].items():
            assert service["network_mode"] == "host", name
            assert "ports" not in service and "expose" not in service, name


def test_internal_services_bind_the_cluster_address_and_public_ones_every_interface_by_default(stella: Plan) -> None:
    for host, ip in (("stella", STELLA_IP), ("nova", NOVA_IP)):
        for name, addresses in _listen_addresses(stella, host).items():
            if name in ONE_SHOTS:
                assert addresses == set(), "a one-shot listens on nothing"
            elif name == "lb":
                assert addresses == {"0.0.0.0", ip}, "clients on every interface, the stats page internal"
            elif name == "batch-api":
                assert addresses == {"0.0.0.0", ip}, "clients on every interface, keyless /metrics internal"
            else:
                assert addresses == ({"0.0.0.0"} if name in PUBLIC_SERVICES else {ip}), name


def test_public_services_bind_the_public_address_and_everything_else_stays_on_the_cluster_address() -> None:
    public = {"stella": "192.168.1.10", "nova": "192.168.1.11"}
    plan = build_plan("stella", overrides={"hosts": _hosts_with_public_addresses(**public)})
    for host, ip in (("stella", STELLA_IP), ("nova", NOVA_IP)):
        for name, addresses in _listen_addresses(plan, host).items():
            if name in ("lb", "batch-api"):  # their stats / keyless metrics stay on the cluster address
                assert addresses == {public[host], ip}
            elif name not in ONE_SHOTS:
                assert addresses == ({public[host]} if name in PUBLIC_SERVICES else {ip}), name
    services = compose(plan, "stella")["services"]
    # Others reach a public service where it listens: the worker the load balancer. Prometheus scrapes the
    # batch API's internal listener (its public /metrics needs an admin key).
    assert services["batch-worker"]["environment"]["BATCH_VLLM_BASE_URL"] == "https://192.168.1.10:8080/v1"
    scrape = yaml.safe_load(plan.files["stella/prometheus.yml"])["scrape_configs"]
    assert [j["static_configs"][0]["targets"] for j in scrape if j["job_name"] == "batch-api"] == [
        [f"{STELLA_IP}:8102"]
    ]


def test_health_checks_probe_the_address_the_service_listens_on() -> None:
    """A service bound to one address does not answer on 127.0.0.1 on the host network."""
    for public, probe_public in (("0.0.0.0", STELLA_IP), ("192.168.1.10", "192.168.1.10")):
        hosts = _hosts_with_public_addresses(stella=public, nova="0.0.0.0")
        services = compose(build_plan("stella", overrides={"hosts": hosts}), "stella")["services"]
        for name, service in services.items():
            test = " ".join(service.get("healthcheck", {}).get("test", []))
            assert "127.0.0.1" not in test and "localhost" not in test, name
            if name not in ("lb", *ONE_SHOTS):  # haproxy -c checks its file; the one-shots have none
                assert (probe_public if name in PUBLIC_SERVICES else STELLA_IP) in test, name


def test_public_data_services_bind_the_public_address_and_only_the_stack_flag_allows_it() -> None:
    public = build_plan("stella", overrides={"publicDataServices": "true"})
    listen = _listen_addresses(public, "stella")
    for name in ("redis", "postgres"):
        assert listen[name] == {"0.0.0.0"}, name
    assert listen["minio"] == {"0.0.0.0", STELLA_IP}, "the S3 API public, the console internal"
    assert public.outputs["minioEndpoint"] == f"http://{STELLA_IP}:9000"
    assert not [v for v in public.violations if v.policy == "data-services-private"]
    unexcused = {v.message.split(":")[0] for v in evaluate(public.recording) if v.policy == "data-services-private"}
    assert unexcused == {"redis", "postgres", "minio"}
    lan = build_plan(
        "stella",
        overrides={
            "publicDataServices": "true",
            "hosts": _hosts_with_public_addresses(stella="192.168.1.10", nova="0.0.0.0"),
        },
    )
    assert _listen_addresses(lan, "stella")["redis"] == {"192.168.1.10"}
    assert lan.outputs["minioEndpoint"] == "http://192.168.1.10:9000", "clients reach it where it listens"
    unexcused = {v.message.split(":")[0] for v in evaluate(lan.recording) if v.policy == "data-services-private"}
    assert unexcused == {"redis", "postgres", "minio"}


def test_a_changed_mounted_file_changes_exactly_its_services_files_label(stella: Plan) -> None:
    """Compose never looks inside a mounted file; the label makes `up` recreate the service whose file changed."""

    def labels(plan: Plan) -> dict[tuple[str, str], str | None]:
        return {
            (host, name): service["labels"].get(FILES_LABEL)
            for host in ("stella", "nova")
            for name, service in compose(plan, host)["services"].items()
        }

    before = labels(stella)
    # The load balancer reloads its files in place (test_rolling_changes.py): no label recreates it.
    assert {k for k, v in before.items() if v} == {
        ("stella", "prometheus"),
        ("stella", "grafana"),
        ("stella", "postgres-setup"),
    }
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in before.values() if v)
    for overrides, changed in (
        ({"lbBalanceFactor": "200"}, set()),
        ({"scrapeIntervalSeconds": "30"}, {("stella", "prometheus")}),
        ({"prometheusPort": "9091"}, {("stella", "grafana")}),  # its data source URL
        ({"vllmExtraArgs": '["--seed", "7"]', "redisPort": "6380"}, set()),  # no mounted file changes
    ):
        after = labels(build_plan("stella", overrides=overrides))
        assert {k for k in before if after[k] != before[k]} == changed, overrides


def test_each_host_is_its_own_compose_project_in_its_own_directory(stella: Plan) -> None:
    """Two hosts on one Docker Engine must not remove each other's containers as orphans."""
    names: list[set[str]] = []
    for host in ("stella", "nova"):
        document = compose(stella, host)
        assert document["name"] == f"vllm-gb10-{host}"
        assert document["x-vllm-gb10"] == {"host": host, "clusterAddress": STELLA_IP if host == "stella" else NOVA_IP}
        names.append({s["container_name"] for s in document["services"].values()})
        assert names[-1] == {f"vllm-gb10-{n}" for n in document["services"]}
        copies = [
            r
            for r in stella.resources
            if r["type"] == "command:remote:CopyToRemote" and r["name"].startswith(f"{host}-compose-")
        ]
        assert copies and {r["inputs"]["remotePath"].rsplit("/", 1)[0] for r in copies} == {f"/opt/vllm-gb10/{host}"}
        project = f"docker compose --project-name vllm-gb10-{host} --env-file .secrets.env -f docker-compose.yml "
        up = resource(stella, "command:remote:Command", f"{host}-compose-up")["inputs"]["create"]
        assert f"\ncd /opt/vllm-gb10/{host}\n" in up  # every compose command after it runs in the project's folder
        assert f"\nif ! {project}up -d" in up and f"\n{project}ps --format" in up
        teardown = resource(stella, "command:remote:Command", f"{host}-compose-teardown")["inputs"]["delete"]
        assert f"cd /opt/vllm-gb10/{host} && {project}down" in teardown
    assert not names[0] & names[1], "container names are unique across the hosts"


HOSTS = ("stella", "nova")


def test_each_component_owns_its_compose_services_and_their_files(stella: Plan) -> None:
    """Pulumi's component guidelines: what a component causes is its child. On compose a service is a
    ComposeService under the component that declared it, and its mounted files are copied as that
    service's children; the host's ComposeProject keeps only the compose file, `up` and the teardown."""
    services = {r["name"]: r["parent"] for r in stella.resources if r["type"] == "vllm-gb10:compose:Service"}
    assert services == {
        "batch-api": "batch",
        "batch-worker": "batch",
        "grafana": "monitoring",
        "prometheus": "monitoring",
        **{f"{exporter}-{host}": "monitoring" for exporter in ("dcgm-exporter", "node-exporter") for host in HOSTS},
        **{f"memguard-{host}": "memguard" for host in HOSTS},
        "lb": "lb",
        "minio": "minio",
        "minio-setup": "minio",
        "postgres": "postgres",
        "postgres-setup": "postgres",
        "ray-head": "ray",
        **{f"ray-worker-{host}": "ray" for host in HOSTS},
        "redis": "redis",
        **{f"vllm-{host}": "vllm" for host in HOSTS},
    }
    copies = {r["name"]: r["parent"] for r in stella.resources if r["type"] == "command:remote:CopyToRemote"}
    assert copies["stella-compose-haproxy.cfg"] == "lb"
    assert copies["stella-compose-prometheus.yml"] == "prometheus"
    assert copies["stella-compose-offload-role.sql"] == "postgres-setup"
    assert {copies[f"{host}-compose-docker-compose.yml"] for host in HOSTS} == {f"{host}-compose" for host in HOSTS}
    owners = {r["parent"] for r in stella.resources if r["type"].startswith("command:remote:CopyToRemote")}
    assert owners - {f"{host}-compose" for host in HOSTS} <= services.keys()


def test_the_bucket_set_up_runs_our_runtime_image_and_the_batch_service_waits_for_it(
    stella: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose(stella, "stella")["services"]
    setup = services["minio-setup"]
    assert setup["image"] == stella.outputs["runtimeImage"]
    assert setup["restart"] == "on-failure" and setup["depends_on"] == {"minio": {"condition": "service_healthy"}}
    secrets = _secrets_env(stella, "stella")
    env = _interpolate(setup["environment"], secrets)
    assert env == {
        "AWS_ACCESS_KEY_ID": "vllm-gb10",
        "AWS_SECRET_ACCESS_KEY": secrets["RUSTFS_SECRET_KEY"],
        "S3_BATCH_USER_SECRET": secrets["S3_BATCH_USER_SECRET"],
        "S3_BACKUP_USER_SECRET": secrets["S3_BACKUP_USER_SECRET"],
    }
    assert len({secrets[k] for k in ("RUSTFS_SECRET_KEY", "S3_BATCH_USER_SECRET", "S3_BACKUP_USER_SECRET")}) == 3
    # `up --wait` takes an exited one-shot for a failure unless a service waits for it to complete.
    for name in ("batch-api", "batch-worker"):
        assert services[name]["depends_on"] == {
            "minio-setup": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},  # they fail their health checks while Redis is down
        }
    # The command is one that runtime.batch.bucket's own parser takes.
    from runtime.batch import bucket

    called = {}
    monkeypatch.setattr(bucket, "s3_client", lambda endpoint: endpoint)
    monkeypatch.setattr(
        bucket,
        "ensure_bucket",
        lambda client, name, days: called.update(c=(client, name, days)) or {"Expiration": {"Days": days}},
    )
    from runtime.batch import s3_users

    monkeypatch.setattr(s3_users, "ensure_users", lambda *args: called.update(users=args))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert setup["command"] == [
        *("python", "-m", "runtime.batch.bucket", "--endpoint", f"http://{STELLA_IP}:9000"),
        *("--bucket", "batch", "--expire-days", "7"),
        *("--batch-user", "vllm-gb10-batch", "--backup-user", "vllm-gb10-backup"),
    ]
    assert bucket.main(setup["command"][3:]) == 0
    assert called["c"] == (stella.outputs["minioEndpoint"], "batch", 7)
    endpoint, root_key, root_secret, users = called["users"]
    assert endpoint == stella.outputs["minioEndpoint"]
    assert (root_key, root_secret) == ("vllm-gb10", env["AWS_SECRET_ACCESS_KEY"])
    assert [(u.access_key, u.secret_key) for u in users] == [
        ("vllm-gb10-batch", env["S3_BATCH_USER_SECRET"]),
        ("vllm-gb10-backup", env["S3_BACKUP_USER_SECRET"]),
    ]


def test_redis_persists_with_aof(stella: Plan) -> None:
    redis = compose(stella, "stella")["services"]["redis"]
    assert "--appendonly yes" in redis["command"][-1]
    assert redis["volumes"] == ["redis-data:/data"]


def test_every_secret_value_is_marked_secret_where_pulumi_stores_it(stella: Plan) -> None:
    known = stella.known_secrets
    assert {placeholder(k) for k in stella.placeholders} <= known and len(known) >= 7
    leaks = [
        f"{r.type} {r.name}: {path}" for r in stella.recording.resources for path in unmarked_secrets(r.inputs, known)
    ]
    assert not leaks, f"secret values in plain resource inputs: {leaks}"
    plain = json.dumps([stella.resources, stella.outputs, stella.files])
    assert not [s for s in known if s in plain], "a secret value reached plan.json or a generated file"
    assert stella.recording.secret_outputs == {
        "batchApiKey", "grafanaAdminPassword", "loadBalancerApiKey", "minioSecretKey", "postgresUrl", "rayAuthToken",
        "redisUrl",
    }  # fmt: skip
    assert {stella.outputs[k] for k in stella.recording.secret_outputs} == {MASK}


def test_ssh_connections_pin_the_host_key(stella: Plan) -> None:
    stack = yaml.safe_load((PROJECT_DIR / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    keys = {h["address"]: h["hostKey"] for h in stack}
    remote = [r for r in stella.resources if r["type"].startswith("command:remote:")]
    assert len(remote) == 21  # with each host's drain and ready, run on the load balancer's host
    for r in remote:
        connection = r["inputs"]["connection"]
        assert connection["hostKey"] == keys[connection["host"]], r["name"]
        assert connection["privateKey"] == MASK


def test_preflight_checks_gpu_runtime_and_disk_on_every_host(stella: Plan) -> None:
    for host in ("stella", "nova"):
        create = resource(stella, "command:remote:Command", f"{host}-preflight")["inputs"]["create"]
        assert create.startswith(
            f"REQUIRE_GPU=1\nMIN_FREE_GB=100\nREMOTE_DIR=/opt/vllm-gb10/{host}\nSTACK_DIR=/opt/vllm-gb10\nGPU_PATTERN=GB10\n"
            # the box's MemTotal is held to hostProfile gb10's 119.7 GiB (tests/unit/test_preflight.py)
            "HOST_PROFILE=gb10\nPROFILE_MEM_KIB=125514547\nMEM_TOLERANCE_PCT=8\nSTACK_FILE=Pulumi.stella.yaml\n"
        )
        assert "nvidia-smi" in create and "nvidia" in create and "df -Pk" in create


def test_images_are_built_for_arm64_pushed_and_pinned_by_digest(stella: Plan) -> None:
    builds = {r["name"]: r["inputs"] for r in stella.resources if r["type"] == "docker-build:index:Image"}
    assert set(builds) == {"vllm-image-build", "runtime-image-build"}
    for inputs in builds.values():
        assert inputs["platforms"] == ["linux/arm64"]
        assert inputs["buildOnPreview"] is False and inputs["push"] is True
        assert inputs["tags"][0].startswith("stella.lan:5000/")
    assert builds["vllm-image-build"]["dockerfile"]["location"].endswith("images/Dockerfile.gb10")
    assert builds["vllm-image-build"]["buildArgs"] == {"CUDA_ARCH": "12.1", "VLLM_VERSION": "0.32.0"}
    services = compose(stella, "nova")["services"]
    assert services["vllm-nova"]["image"] == stella.outputs["vllmImage"]
    assert "@sha256:" in stella.outputs["vllmImage"]


def test_compose_is_applied_with_a_content_hash_and_torn_down_on_delete(stella: Plan) -> None:
    for host in ("stella", "nova"):
        up = resource(stella, "command:remote:Command", f"{host}-compose-up")["inputs"]
        # No separate pull: `--pull missing` keeps images the host already has; --wait returns when all are healthy.
        # The vLLM server's 900 s start period, then the Ray worker's 600 s (runtime.ray_node's start deadline;
        # the worker waits for vLLM), plus a margin.
        assert "up -d --pull missing --remove-orphans --wait --wait-timeout 1800" in up["create"]
        assert " pull " not in up["create"] and up["update"] == up["create"]
        assert re.fullmatch(r"[0-9a-f]{64}", up["triggers"][0])
        assert up["triggers"][0] in up["create"]
        assert up["stdin"] == MASK and len(up["triggers"]) == 1
        assert "delete" not in up, "a replaced 'up' must not take the services down"
        teardown = resource(stella, "command:remote:Command", f"{host}-compose-teardown")["inputs"]
        assert "down --remove-orphans" in teardown["delete"]


def test_a_config_change_changes_only_the_affected_hosts_trigger(stella: Plan) -> None:
    changed = build_plan("stella", overrides={"lbBalanceFactor": "200"})
    assert "hash-balance-factor 200" in changed.files["stella/haproxy.cfg"]

    def trigger(plan: Plan, host: str) -> str:
        return resource(plan, "command:remote:Command", f"{host}-compose-up")["inputs"]["triggers"][0]

    assert trigger(changed, "stella") != trigger(stella, "stella")
    assert trigger(changed, "nova") == trigger(stella, "nova")


def test_tensor_parallel_runs_one_server_across_both_boxes_over_ray() -> None:
    plan = build_plan("stella", overrides=TENSOR)
    stella_services, nova_services = compose(plan, "stella")["services"], compose(plan, "nova")["services"]
    assert "vllm-nova" not in nova_services and "ray-worker-nova" in nova_services
    assert "ray-worker-stella" not in stella_services, "the vLLM container is stella's Ray node"
    vllm = stella_services["vllm-stella"]
    assert vllm["network_mode"] == "host"
    script = vllm["command"][0]
    assert script.startswith(f"ray start --address={STELLA_IP}:6380 --node-ip-address={STELLA_IP} --num-gpus=1")
    assert "--distributed-executor-backend ray --tensor-parallel-size 2" in script
    assert re.findall(r"^\s+server (\S+)", plan.files["stella/haproxy.cfg"], re.M) == ["stella"]
    assert plan.outputs["vllmUrls"] == [f"http://{STELLA_IP}:8000/v1"]
    pipeline = build_plan("stella", overrides={**TENSOR, "parallelism": "pipeline"})
    assert "--pipeline-parallel-size 2" in compose(pipeline, "stella")["services"]["vllm-stella"]["command"][0]


def test_offline_batch_engine_runs_the_worker_on_the_gpu_image() -> None:
    plan = build_plan("stella", overrides=OFFLINE_APART)
    worker = compose(plan, "batchbox")["services"]["batch-worker"]
    assert worker["image"] == plan.outputs["vllmImage"]
    assert "reservations" in worker["deploy"]["resources"]
    assert worker["environment"]["BATCH_ENGINE"] == "offline"


def _compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


# tensor with ncclIbHca: the RDMA devices, memlock ulimit and IPC_LOCK of vLLM's nodes are schema-checked too
@pytest.mark.parametrize("overrides", [{}, {**TENSOR, "ncclIbHca": "rocep1s0f1"}, OFFLINE_APART])
def test_every_compose_file_validates_against_the_compose_specification(overrides: dict) -> None:
    plan = build_plan("stella", overrides=overrides)
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for name, text in plan.files.items():
        if name.endswith("docker-compose.yml"):
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]
            assert not errors, f"{name}: {errors}"


def test_compose_schema_check_catches_a_broken_file() -> None:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert list(validator.iter_errors({"services": {"x": {"image": "a", "restart": 5, "ports": [{"bogus": 1}]}}}))


def test_rendered_haproxy_cfg_passes_haproxy_check(stella: Plan, tmp_path: Path) -> None:
    haproxy = require_binary("haproxy")
    path = tmp_path / "haproxy.cfg"
    # The key maps where the container has them, here under tmp_path (HAProxy opens them when it parses).
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "api-keys.map").touch()
    (tmp_path / "stack-keys.map").write_text(stella.files["stella/lb-stack-keys.map"])
    # The certificate where the container's entrypoint writes it; HAProxy loads it when it parses.
    _, server = lan_certificate(["stella.lan", "10.10.10.1"])
    (tmp_path / "server.pem").write_text(server.cert_pem + server.key_pem)
    text = stella.files["stella/haproxy.cfg"].replace("/usr/local/etc/haproxy/", f"{tmp_path}/")
    text = text.replace("/tmp/tls/", f"{tmp_path}/")
    path.write_text(text)
    env = {"VLLM_API_KEY": "k", "PATH": "/usr/sbin:/usr/bin"}
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(text.replace("hash-type consistent", "hash-type bogus"))
    assert subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, check=False).returncode != 0


def _vllm_flags(plan: Plan) -> list[str]:
    return compose(plan, "stella")["services"]["vllm-stella"]["command"][3:]


def test_explicit_stack_keys_override_the_kv_policy_and_extra_args_come_last() -> None:
    plan = build_plan(
        "stella",
        overrides={
            "kvCacheDtype": "fp8",
            "gpuMemoryUtilization": "0.7",
            "vllmMemoryLimit": "60g",  # the derived limit (0.7 of the host) would not fit beside the neighbours
            "kvCacheMemoryBytes": str(40 * 2**30),
            "vllmExtraArgs": '["--seed", "7"]',
        },
    )
    flags = _vllm_flags(plan)
    pairs = dict(itertools.pairwise(flags))
    assert pairs["--kv-cache-dtype"] == "fp8"
    assert pairs["--gpu-memory-utilization"] == "0.70"
    assert pairs["--kv-cache-memory-bytes"] == str(40 * 2**30)
    assert flags[-2:] == ["--seed", "7"]


def test_a_concurrency_beyond_bf16_capacity_switches_the_kv_cache_to_fp8() -> None:
    flags = _vllm_flags(build_plan("stella", overrides={"maxNumSeqs": "120", "maxModelLen": "8192"}))
    assert flags[flags.index("--kv-cache-dtype") + 1] == "fp8"


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"maxModelLen": "65536"}, "maxModelLen", "beyond Qwen/Qwen3-4B's max_position_embeddings 40960"),
        ({"model": "acme/unknown-7b"}, "modelConfigFile", "no bundled config.json for model 'acme/unknown-7b'"),
        ({"modelConfigFile": "nowhere/config.json"}, "modelConfigFile", "no file 'nowhere/config.json'"),
        ({"hostProfile": "rtx3060"}, "hostProfile", "'rtx3060' is not one of"),
        (
            {"model": "meta-llama/Llama-3.1-8B-Instruct", "hostProfile": "rtx4090", "maxModelLen": "131072"},
            "maxModelLen",
            "max_model_len up to 70160 fits with fp8 (35072 with auto)",
        ),
        (
            {"model": "meta-llama/Llama-3.1-8B-Instruct", "hostProfile": "rtx4080"},
            "model",
            "it would fit on a GPU with more than 19 GiB",
        ),
    ],
)
def test_a_vllm_target_that_cannot_work_fails_naming_the_key(overrides: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_plan("stella", overrides=overrides)
    assert str(caught.value).startswith(f"Pulumi.stella.yaml: vllm-gb10:{key}: ")
    assert words in str(caught.value)


def test_a_batch_box_apart_from_the_data_host_runs_the_set_up_and_comes_up_after_the_data_host() -> None:
    """compose cannot wait for a service on another host: the batch host's `up` runs after the data host's."""
    hosts = json.loads(read_stack_file(PROJECT_DIR, "stella").values["vllm-gb10:hosts"])
    hosts[0]["roles"], hosts[1]["roles"] = ["gpu", "ray-head", "data", "lb"], ["gpu", "batch"]
    plan = build_plan("stella", overrides={"hosts": json.dumps(hosts)})
    stella_services, nova_services = compose(plan, "stella")["services"], compose(plan, "nova")["services"]
    assert "minio-setup" not in stella_services and "minio" in stella_services
    setup = nova_services["minio-setup"]
    assert "depends_on" not in setup and f"http://{STELLA_IP}:9000" in setup["command"]
    assert nova_services["batch-api"]["depends_on"] == {"minio-setup": {"condition": "service_completed_successfully"}}

    def up_depends_on(host: str) -> list[str]:
        (up,) = [r for r in plan.recording.resources if r.name == f"{host}-compose-up"]
        return up.depends_on

    assert "stella-compose-up" in up_depends_on("nova") and "nova-compose-up" not in up_depends_on("stella")
    # On stella (one host does everything) no host's up waits for another's data services; what waits for
    # stella's up is its own ready (the roll: then nova drains) and the post-deploy check.
    waiting = {r.name for r in stack_plan("stella").recording.resources if "stella-compose-up" in r.depends_on}
    assert waiting == {"post-deploy-check", "stella-ready"}


def test_a_one_shot_that_no_service_waits_for_is_refused() -> None:
    """`up --wait` takes such a container's exit for a failure, so the file is never rendered."""
    setup = ServiceSpec(name="setup", image="x:1", host="h", one_shot=True)
    with pytest.raises(ValueError, match="one-shot setup on host h: no service on this host depends on it"):
        compose_document([setup], "h", "10.0.0.1")
    app = ServiceSpec(name="app", image="x:1", host="h", depends_on=("setup",))
    service = compose_document([setup, app], "h", "10.0.0.1")["services"]["app"]
    assert service["depends_on"] == {"setup": {"condition": "service_completed_successfully"}}


def test_the_vllm_image_dockerfile_and_build_platform_come_from_the_stack() -> None:
    plan = build_plan("stella", overrides={"vllmDockerfile": "images/Dockerfile.runtime", "imagePlatform": ""})
    builds = {r["name"]: r["inputs"] for r in plan.resources if r["type"] == "docker-build:index:Image"}
    assert builds["vllm-image-build"]["dockerfile"]["location"].endswith("images/Dockerfile.runtime")
    assert not [b for b in builds.values() if b.get("platforms")], "empty: the building machine's own platform"
    with pytest.raises(ConfigError, match=r"^Pulumi.stella.yaml: vllm-gb10:vllmDockerfile: no file 'images/nope'"):
        build_plan("stella", overrides={"vllmDockerfile": "images/nope"})


@pytest.mark.parametrize("parallelism", ["replica", "tensor"])
def test_every_ray_node_requires_the_token_and_holds_the_offload_dsn_not_a_client(parallelism: str) -> None:
    """Ray without token auth runs code for anyone who reaches the dashboard port: every node, and vLLM's
    leader where it joins the cluster, runs with RAY_AUTH_MODE=token and the token from the secrets file."""
    plan = build_plan("stella", overrides={"parallelism": parallelism, "ncclSocketIfname": LINK})
    nodes = {
        f"{host}/{name}": service
        for host in ("stella", "nova")
        for name, service in compose(plan, host)["services"].items()
        if name.startswith("ray-") or "ray start" in " ".join(service.get("command", []))
    }
    expected = {"stella/ray-head", "nova/ray-worker-nova"} | (
        {"stella/ray-worker-stella"} if parallelism == "replica" else {"stella/vllm-stella"}
    )
    assert set(nodes) == expected
    for where, service in nodes.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", where
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), where  # from .secrets.env, not the file
        if "ray-" in where:  # Ray's own nodes run the offload job's drivers and tasks
            assert env["OFFLOAD_DSN"].startswith("${OFFLOAD_DSN:?"), where
    assert "rayAuthToken" in plan.recording.secret_outputs


def test_grafana_has_no_anonymous_access_and_a_generated_admin_password(stella: Plan) -> None:
    grafana = compose(stella, "stella")["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GF_SECURITY_ADMIN_PASSWORD:?")  # never admin/admin
    assert "grafanaAdminPassword" in stella.recording.secret_outputs


def test_public_endpoints_get_a_certificate_for_every_name_the_hosts_are_reached_by(stella: Plan) -> None:
    (request,) = [r for r in stella.resources if r["type"] == "tls:index/certRequest:CertRequest"]
    assert request["inputs"]["dnsNames"] == ["stella.lan", "stella", "nova.lan", "nova"]
    assert request["inputs"]["ipAddresses"] == [STELLA_IP, NOVA_IP]  # the worker reaches the LB there
    assert "BEGIN CERTIFICATE" in stella.outputs["tlsCaCertificate"]
    extra = build_plan("stella", overrides={"tlsNames": json.dumps(["llm.example.org", "192.0.2.7"])})
    (request,) = [r for r in extra.resources if r["type"] == "tls:index/certRequest:CertRequest"]
    assert "llm.example.org" in request["inputs"]["dnsNames"] and "192.0.2.7" in request["inputs"]["ipAddresses"]


def test_the_operators_own_certificate_replaces_the_generated_ca() -> None:
    _, own = lan_certificate(["llm.example.org", STELLA_IP, NOVA_IP])
    plan = build_plan("stella", overrides={"tlsCertificate": own.cert_pem, "tlsPrivateKey": own.key_pem})
    assert not [r for r in plan.resources if r["type"].startswith("tls:")]
    assert plan.outputs["tlsCaCertificate"] == ""
    # The worker and the post-deploy check reach the load balancer at the cluster addresses: a certificate
    # without them would fail every batch; `up` says so instead.
    _, public_only = lan_certificate(["llm.example.org"])
    with pytest.raises(Exception, match=rf"tlsCertificate does not cover {STELLA_IP}, {NOVA_IP}: the batch worker"):
        build_plan("stella", overrides={"tlsCertificate": public_only.cert_pem, "tlsPrivateKey": public_only.key_pem})
    with pytest.raises(ConfigError, match="tlsCertificate and tlsPrivateKey go together"):
        build_plan("stella", overrides={"tlsCertificate": "CERT-PEM"})
    with pytest.raises(ConfigError, match=r"tlsNames.*'bad name!' is not a DNS name or an IP address"):
        build_plan("stella", overrides={"tlsNames": json.dumps(["bad name!"])})


def test_the_ray_nodes_hold_the_offload_roles_dsn_made_by_a_set_up_the_head_waits_for(stella: Plan) -> None:
    """Not the database owner's, a superuser in the official image (COPY ... TO PROGRAM runs a shell)."""
    services = compose(stella, "stella")["services"]
    setup = services["postgres-setup"]
    assert setup["image"] == services["postgres"]["image"], "the server image's own psql"
    assert setup["entrypoint"] == ["psql"] and setup["command"][-1] == "/setup/offload-role.sql"
    assert setup["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "./offload-role.sql:/setup/offload-role.sql:ro" in setup["volumes"]
    assert services["ray-head"]["depends_on"] == {"postgres-setup": {"condition": "service_completed_successfully"}}
    secrets = _secrets_env(stella, "stella")
    env = _interpolate(setup["environment"], secrets)
    assert env["PGUSER"] == "llm" and env["PGHOST"] == STELLA_IP and env["PGPASSWORD"] == secrets["POSTGRES_PASSWORD"]
    assert env["OFFLOAD_ROLE_VERIFIER"].startswith("SCRAM-SHA-256$4096:")
    offload_password = secrets["OFFLOAD_DSN"].split("://offload:", 1)[1].split("@", 1)[0]
    assert offload_password not in env["OFFLOAD_ROLE_VERIFIER"] and offload_password != secrets["POSTGRES_PASSWORD"]
    assert secrets["OFFLOAD_DSN"] == f"postgresql://offload:{offload_password}@{STELLA_IP}:5432/llm"
    for host in ("stella", "nova"):
        assert _secrets_env(stella, host)["OFFLOAD_DSN"] == secrets["OFFLOAD_DSN"], host
    assert stella.files["stella/offload-role.sql"] == OFFLOAD_ROLE_SQL.read_text()
