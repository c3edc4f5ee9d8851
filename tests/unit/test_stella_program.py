"""The stella stack under Pulumi's mock monitor: placement, wiring, secrets, generated files."""

from __future__ import annotations

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

from infra.config import ConfigError
from infra.plan import Plan, build_plan
from infra.plan.recorder import MASK, unmarked_secrets
from infra.plan.stackfile import placeholder
from runtime.batch.settings import BatchSettings
from tests.conftest import require_binary

STELLA_IP, NOVA_IP = "10.10.10.1", "10.10.10.2"
DATA_SERVICES = ("redis", "postgres", "minio")


@pytest.fixture(scope="module")
def stella() -> Plan:
    return build_plan("stella")


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
        "redis", "minio", "minio-setup", "postgres", "ray-head", "ray-worker-stella",
        "vllm-stella", "lb", "batch-api", "batch-worker", "prometheus", "grafana",
        "dcgm-exporter-stella", "node-exporter-stella",
    }  # fmt: skip
    assert set(compose(stella, "nova")["services"]) == {
        "ray-worker-nova", "vllm-nova", "dcgm-exporter-nova", "node-exporter-nova"
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
    assert lb["volumes"] == ["./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    assert lb["ports"][0] == "0.0.0.0:8080:8080"


def test_vllm_servers_get_engine_args_model_cache_and_hf_token(stella: Plan) -> None:
    for host, ip in (("stella", STELLA_IP), ("nova", NOVA_IP)):
        vllm = compose(stella, host)["services"][f"vllm-{host}"]
        args = vllm["command"]
        assert args[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        flags = dict(itertools.pairwise(args))  # flag -> the word after it
        assert flags["--model"] == "Qwen/Qwen3-4B"
        assert flags["--gpu-memory-utilization"] == "0.85"  # the KV policy's GB10 ceiling
        assert flags["--kv-cache-dtype"] == "auto"  # 64 x 8192 tokens fit in bf16
        assert int(flags["--kv-cache-memory-bytes"]) > 64 * 8192 * 147_456  # sized explicitly on GB10
        assert "--enable-prefix-caching" in args
        assert "--swap-space" not in args
        assert vllm["ports"] == [f"{ip}:8000:8000"]
        assert "model-cache:/models" in vllm["volumes"]
        assert vllm["environment"]["HF_TOKEN"].startswith("${HF_TOKEN:?")
        assert "/health" in vllm["healthcheck"]["test"][-1]


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
        assert str(settings.vllm_base_url) == f"http://{STELLA_IP}:8080/v1"
        assert str(settings.s3_endpoint_url).rstrip("/") == stella.outputs["minioEndpoint"]
        assert settings.s3_secret_access_key.get_secret_value() == secrets["MINIO_ROOT_PASSWORD"]
        assert (settings.redis_url.host, settings.redis_url.port) == (STELLA_IP, 6379)
        assert settings.redis_url.password == secrets["REDIS_PASSWORD"]
        assert settings.model == "Qwen/Qwen3-4B"
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


def test_data_services_bind_the_cluster_address_unless_published_on_purpose(stella: Plan) -> None:
    services = compose(stella, "stella")["services"]
    for name in DATA_SERVICES:
        assert all(p.startswith(f"{STELLA_IP}:") for p in services[name]["ports"]), name
    public = compose(build_plan("stella", overrides={"publicDataServices": "true"}), "stella")["services"]
    for name in DATA_SERVICES:
        assert public[name]["ports"][0].startswith("0.0.0.0:"), name


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
        "batchApiKey", "grafanaAdminPassword", "minioSecretKey", "postgresUrl", "redisUrl"
    }  # fmt: skip
    assert {stella.outputs[k] for k in stella.recording.secret_outputs} == {MASK}


def test_ssh_connections_pin_the_host_key(stella: Plan) -> None:
    stack = yaml.safe_load(Path("Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    keys = {h["address"]: h["hostKey"] for h in stack}
    remote = [r for r in stella.resources if r["type"].startswith("command:remote:")]
    assert len(remote) == 14
    for r in remote:
        connection = r["inputs"]["connection"]
        assert connection["hostKey"] == keys[connection["host"]], r["name"]
        assert connection["privateKey"] == MASK


def test_preflight_checks_gpu_runtime_and_disk_on_every_host(stella: Plan) -> None:
    for host in ("stella", "nova"):
        create = resource(stella, "command:remote:Command", f"{host}-preflight")["inputs"]["create"]
        assert create.startswith("REQUIRE_GPU=1\nMIN_FREE_GB=100\nREMOTE_DIR=/opt/vllm-gb10\nGPU_PATTERN=GB10\n")
        assert "nvidia-smi" in create and "nvidia" in create and "df -Pk" in create


def test_images_are_built_for_arm64_pushed_and_pinned_by_digest(stella: Plan) -> None:
    builds = {r["name"]: r["inputs"] for r in stella.resources if r["type"] == "docker-build:index:Image"}
    assert set(builds) == {"vllm-image-build", "runtime-image-build"}
    for inputs in builds.values():
        assert inputs["platforms"] == ["linux/arm64"]
        assert inputs["buildOnPreview"] is False and inputs["push"] is True
        assert inputs["tags"][0].startswith("stella.lan:5000/")
    assert builds["vllm-image-build"]["dockerfile"]["location"].endswith("images/Dockerfile.gb10")
    assert builds["vllm-image-build"]["buildArgs"] == {"CUDA_ARCH": "12.1", "VLLM_VERSION": "v0.11.0"}
    services = compose(stella, "nova")["services"]
    assert services["vllm-nova"]["image"] == stella.outputs["vllmImage"]
    assert "@sha256:" in stella.outputs["vllmImage"]


def test_compose_is_applied_with_a_content_hash_and_torn_down_on_delete(stella: Plan) -> None:
    for host in ("stella", "nova"):
        up = resource(stella, "command:remote:Command", f"{host}-compose-up")["inputs"]
        assert "up -d --remove-orphans" in up["create"] and up["update"] == up["create"]
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
    plan = build_plan("stella", overrides={"parallelism": "tensor"})
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
    pipeline = build_plan("stella", overrides={"parallelism": "pipeline"})
    assert "--pipeline-parallel-size 2" in compose(pipeline, "stella")["services"]["vllm-stella"]["command"][0]


def test_offline_batch_engine_runs_the_worker_on_the_gpu_image() -> None:
    plan = build_plan("stella", overrides={"batchEngine": "offline"})
    worker = compose(plan, "stella")["services"]["batch-worker"]
    assert worker["image"] == plan.outputs["vllmImage"]
    assert "reservations" in worker["deploy"]["resources"]
    assert worker["environment"]["BATCH_ENGINE"] == "offline"


def _compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.mark.parametrize("overrides", [{}, {"parallelism": "tensor"}, {"batchEngine": "offline"}])
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
    path.write_text(stella.files["stella/haproxy.cfg"])
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(stella.files["stella/haproxy.cfg"].replace("hash-type consistent", "hash-type bogus"))
    assert subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, check=False).returncode != 0


def _vllm_flags(plan: Plan) -> list[str]:
    return compose(plan, "stella")["services"]["vllm-stella"]["command"][3:]


def test_explicit_stack_keys_override_the_kv_policy_and_extra_args_come_last() -> None:
    plan = build_plan(
        "stella",
        overrides={
            "kvCacheDtype": "fp8",
            "gpuMemoryUtilization": "0.7",
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
