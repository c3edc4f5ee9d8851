"""Several offered models served interactively (issue 20): one vLLM server per model on every gpu host,
sized together on the host's memory, started one after another, behind per-model load balancer
backends routed by the request's model, each scraped by Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.config import ConfigError
from infra.plan import Plan, build_plan
from infra.render.haproxy import Backend, LoadBalancerConfig, ModelRoute, render_haproxy_cfg, render_models_lua
from infra.vllm_sizing import size_model_servers, size_vllm
from tests.conftest import require_binary
from tests.plans import stack_plan
from tests.unit.test_config import load_with

LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b"}
LLAMA_2 = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b-2"}


@pytest.fixture(scope="module")
def two_models() -> Plan:
    """Stella with the http batch engine (no rule against it any more) and a second offered model."""
    return build_plan("stella", overrides={"models": json.dumps([LLAMA])})


def _services(plan: Plan, host: str) -> dict:
    services: dict = yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"]
    return services


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_every_gpu_host_runs_one_server_per_offered_model_one_after_another(two_models: Plan) -> None:
    for host, address in (("stella", "10.10.10.1"), ("nova", "10.10.10.2")):
        services = _services(two_models, host)
        assert sorted(n for n in services if n.startswith("vllm-")) == [f"vllm-{host}", f"vllm-{host}-8001"]
        default, extra = services[f"vllm-{host}"], services[f"vllm-{host}-8001"]
        assert (_flag(default["command"], "--served-model-name"), _flag(default["command"], "--port")) == (
            "Qwen/Qwen3-4B",
            "8000",
        )
        assert _flag(extra["command"], "--model") == LLAMA["model"]
        assert _flag(extra["command"], "--served-model-name") == "llama-8b"
        assert (_flag(extra["command"], "--host"), _flag(extra["command"], "--port")) == (address, "8001")
        assert "8001" in " ".join(extra["healthcheck"]["test"])
        # vLLM issue 35920: servers starting at once on one GB10 race in memory profiling.
        assert extra["depends_on"] == {f"vllm-{host}": {"condition": "service_healthy"}}
        assert "depends_on" not in default
        # The same model cache, token and environment as the default model's server.
        assert extra["volumes"] == default["volumes"] and extra["environment"] == default["environment"]
        assert (
            extra["image"] == default["image"]
            and extra["deploy"]["resources"]["reservations"] == default["deploy"]["resources"]["reservations"]
        )
    assert two_models.outputs["vllmUrls"] == [
        "http://10.10.10.1:8000/v1",
        "http://10.10.10.2:8000/v1",
        "http://10.10.10.1:8001/v1",
        "http://10.10.10.2:8001/v1",
    ]
    assert not two_models.violations, "the policy pack passes the two-model stack"


def test_each_ray_worker_starts_after_its_hosts_vllm_servers_and_up_waits_for_the_whole_chain(
    two_models: Plan,
) -> None:
    """A raylet starting beside a vLLM that is loading misses Ray's fixed 30 s to register (seen on the
    2-core stack test), and the servers of one host start one after another: `up --wait` must allow the
    sum of their start periods, not only the longest."""
    for host in ("stella", "nova"):
        worker = _services(two_models, host)[f"ray-worker-{host}"]
        assert worker["depends_on"] == {
            f"vllm-{host}": {"condition": "service_healthy"},
            f"vllm-{host}-8001": {"condition": "service_healthy"},
        }
        up = next(r["inputs"]["create"] for r in two_models.resources if r["name"] == f"{host}-compose-up")
        # 900 s per vLLM server, one after another, then the Ray worker's 600 s (runtime.ray_node's start
        # deadline), plus the 300 s margin.
        assert "--wait --wait-timeout 2700" in up


def test_tensor_parallel_ray_workers_wait_for_no_vllm_server() -> None:
    """In tensor/pipeline mode vLLM's leader needs the Ray workers: they must not wait for it."""
    plan = build_plan("stella", overrides={"parallelism": "tensor", "ncclSocketIfname": "enp1s0f1np1"})
    worker = _services(plan, "nova")["ray-worker-nova"]
    assert "depends_on" not in worker


def test_the_servers_are_sized_together_within_what_one_server_had(two_models: Plan) -> None:
    alone = _services(stack_plan("stella"), "stella")["vllm-stella"]["command"]
    services = _services(two_models, "stella")
    shares = {
        name: float(_flag(services[name]["command"], "--gpu-memory-utilization"))
        for name in ("vllm-stella", "vllm-stella-8001")
    }
    assert shares == {"vllm-stella": 0.17, "vllm-stella-8001": 0.22}
    assert sum(shares.values()) <= float(_flag(alone, "--gpu-memory-utilization")) == 0.40
    limits = [services[n]["deploy"]["resources"]["limits"]["memory"] for n in ("vllm-stella", "vllm-stella-8001")]
    assert limits == ["25g", "31g"]  # each share of 119.7 GiB rounded up, plus 4 GiB of headroom
    cfg = load_with(stack="stella", models=[LLAMA])
    plans = size_model_servers(cfg, Path("."), size_vllm(cfg, Path(".")))
    assert [(p.served_name, p.port, p.engine_args["kv_cache_dtype"]) for p in plans] == [
        ("Qwen/Qwen3-4B", 8000, "fp8"),
        ("llama-8b", 8001, "fp8"),
    ]
    assert plans[1].kv_plan.notes[0] == (
        "2 offered models share each gpu host: this one gets gpu_memory_utilization 0.22 of the 0.40 left beside "
        "the other services"
    )


def test_one_offered_model_keeps_the_whole_share_as_before() -> None:
    cfg = load_with(stack="stella")
    default = size_vllm(cfg, Path("."))
    (only,) = size_model_servers(cfg, Path("."), default)
    assert only.kv_plan is default and only.port == 8000 and only.engine_args["gpu_memory_utilization"] == 0.40


def test_models_that_cannot_fit_together_are_refused_naming_them_and_the_memory() -> None:
    cfg = load_with(stack="stella", models=[LLAMA, LLAMA_2])
    with pytest.raises(ConfigError) as caught:
        size_model_servers(cfg, Path("."), size_vllm(cfg, Path(".")))
    assert str(caught.value) == (
        "Pulumi.stella.yaml: vllm-gb10:models: the offered models share each gpu host's memory and cannot fit "
        "together: 'Qwen/Qwen3-4B' (Qwen/Qwen3-4B) at least 14.4 GiB (7.5 GiB weights + 6 GiB vLLM overhead + "
        "0.56 GiB KV for one 8192-token sequence in fp8), 'llama-8b' (meta-llama/Llama-3.1-8B-Instruct) at least "
        "21.5 GiB (15.0 GiB weights + 6 GiB vLLM overhead + 0.50 GiB KV for one 8192-token sequence in fp8), "
        "'llama-8b-2' (meta-llama/Llama-3.1-8B-Instruct) at least 21.5 GiB (15.0 GiB weights + 6 GiB vLLM overhead "
        "+ 0.50 GiB KV for one 8192-token sequence in fp8); together 57.5 GiB, but only 47.9 GiB is usable for vLLM "
        "on gpu host stella (gpu_memory_utilization 0.85 of 119.7 GiB, less 53.5 GiB reserved for the services "
        "beside vLLM); offer fewer or smaller models, lower maxModelLen, or move roles off the gpu hosts"
    )
    # The same three fit once the first box no longer carries every other service.
    apart = [
        {"name": "stella", "address": "10.0.0.1", "hostKey": "ssh-ed25519 AAAA", "roles": ["gpu"]},
        {"name": "nova", "address": "10.0.0.2", "hostKey": "ssh-ed25519 AAAA", "roles": ["gpu"]},
        {
            "name": "box",
            "address": "10.0.0.3",
            "hostKey": "ssh-ed25519 AAAA",
            "roles": ["ray-head", "data", "lb", "batch"],
        },
    ]
    roomy = load_with(stack="stella", hosts=apart, models=[LLAMA, LLAMA_2])
    shares = [
        s.engine_args["gpu_memory_utilization"]
        for s in size_model_servers(roomy, Path("."), size_vllm(roomy, Path(".")))
    ]
    assert len(shares) == 3 and sum(shares) <= 0.85 - 16.5 / 119.7


def test_an_explicit_utilisation_is_each_servers_and_they_must_fit_together() -> None:
    cfg = load_with(stack="stella", models=[LLAMA], gpuMemoryUtilization="0.3")
    with pytest.raises(ConfigError) as caught:
        size_model_servers(cfg, Path("."), size_vllm(cfg, Path(".")))
    assert str(caught.value) == (
        "Pulumi.stella.yaml: vllm-gb10:gpuMemoryUtilization: the offered models 'Qwen/Qwen3-4B', 'llama-8b' get "
        "gpuMemoryUtilization 0.30 each (35.9 GiB) on every gpu host: together 71.8 GiB, but only 47.9 GiB is usable "
        "for vLLM on gpu host stella (gpu_memory_utilization 0.85 of 119.7 GiB, less 53.5 GiB reserved for the "
        "services beside vLLM); lower gpuMemoryUtilization or offer fewer models"
    )
    fits = load_with(stack="stella", models=[LLAMA], gpuMemoryUtilization="0.2")
    plans = size_model_servers(fits, Path("."), size_vllm(fits, Path(".")))
    assert [p.engine_args["gpu_memory_utilization"] for p in plans] == [0.2, 0.2]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"models": [LLAMA], "vllmPort": "8099"},
            "vllm-gb10:models[0]: offered model 'llama-8b' gets port 8100 (vllmPort 8099 + 1) for its vLLM servers, "
            "which is also vllm-gb10:batchApiPort; move vllmPort or that port so that vllmPort..vllmPort+1 are free",
        ),
        (
            {"models": [LLAMA, LLAMA_2], "vllmPort": "9398"},
            "vllm-gb10:models[1]: offered model 'llama-8b-2' gets port 9400 (vllmPort 9398 + 2) for its vLLM servers, "
            "which is also the DCGM exporter's port; move vllmPort or that port so that vllmPort..vllmPort+2 are free",
        ),
        (
            {"models": [LLAMA], "grafanaPort": "8001"},
            "vllm-gb10:models[0]: offered model 'llama-8b' gets port 8001 (vllmPort 8000 + 1) for its vLLM servers, "
            "which is also vllm-gb10:grafanaPort; move vllmPort or that port so that vllmPort..vllmPort+1 are free",
        ),
        (
            {"vllmPort": "8080"},
            "vllm-gb10:vllmPort: port 8080 of the default model's vLLM servers is also vllm-gb10:lbPort; "
            "choose another",
        ),
    ],
)
def test_a_models_port_that_collides_with_another_service_is_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        size_vllm(load_with(stack="stella", **values), Path("."))
    assert str(caught.value) == f"Pulumi.stella.yaml: {message}"


def test_the_load_balancer_has_one_backend_per_model_routed_by_the_body(two_models: Plan) -> None:
    cfg = two_models.files["stella/haproxy.cfg"]
    backends = dict(re.findall(r"^backend (\S+)\n((?:    .*\n)+)", cfg, re.M))
    assert list(backends) == ["vllm", "vllm-2"]
    assert re.findall(r"^    server (\S+ \S+)", backends["vllm"], re.M) == [
        "stella 10.10.10.1:8000",
        "nova 10.10.10.2:8000",
    ]
    assert re.findall(r"^    server (\S+ \S+)", backends["vllm-2"], re.M) == [
        "stella 10.10.10.1:8001",
        "nova 10.10.10.2:8001",
    ]
    for body in backends.values():  # stickiness, bounded load, passive health and vLLM's key per backend
        assert "balance hash var(txn.session_key)" in body and "hash-balance-factor 150" in body
        assert "on-error mark-down" in body and 'Authorization "Bearer ${VLLM_API_KEY}"' in body
    assert "http-request set-var(txn.model) req.body,json_query('$.model') if METH_POST" in cfg
    assert "use_backend vllm-2 if { var(txn.model) -m str llama-8b }" in cfg
    assert "{ var(txn.model) -m str llama-8b } { nbsrv(vllm-2) eq 0 }" in cfg
    assert "http-request use-service lua.vllm_gb10_models if METH_GET { path /v1/models }" in cfg
    assert "lua-load /usr/local/etc/haproxy/models.lua" in cfg
    # The key check comes before any model rule: no answer about models without a key.
    assert cfg.index("return status 401") < cfg.index("txn.model")
    lua = two_models.files["stella/haproxy-models.lua"]
    assert '{id = "Qwen/Qwen3-4B", backend = "vllm"},\n    {id = "llama-8b", backend = "vllm-2"},' in lua
    compose = _services(two_models, "stella")["lb"]
    assert "./haproxy-models.lua:/usr/local/etc/haproxy/models.lua:ro" in compose["volumes"]


def test_one_offered_model_renders_the_load_balancer_as_before() -> None:
    single = stack_plan("stella")
    assert "stella/haproxy-models.lua" not in single.files
    cfg = single.files["stella/haproxy.cfg"]
    # No routing by model (the body's priority is still read: issue 32)
    assert "json_query('$.model')" not in cfg and "lua" not in cfg and "tune.bufsize" not in cfg
    assert re.findall(r"^backend (\S+)", cfg, re.M) == ["vllm"]


def test_prometheus_scrapes_every_models_servers(two_models: Plan) -> None:
    config = yaml.safe_load(two_models.files["stella/prometheus.yml"])
    (vllm,) = [job for job in config["scrape_configs"] if job["job_name"] == "vllm"]
    assert vllm["static_configs"][0]["targets"] == [
        "10.10.10.1:8000",
        "10.10.10.2:8000",
        "10.10.10.1:8001",
        "10.10.10.2:8001",
    ]


def test_the_rendered_two_model_config_and_lua_pass_haproxy_check(two_models: Plan, tmp_path: Path) -> None:
    haproxy = require_binary("haproxy")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "api-keys.map").touch()
    (tmp_path / "stack-keys.map").write_text(two_models.files["stella/lb-stack-keys.map"])
    (tmp_path / "models.lua").write_text(two_models.files["stella/haproxy-models.lua"])
    text = two_models.files["stella/haproxy.cfg"].replace("/usr/local/etc/haproxy/", f"{tmp_path}/")
    text = re.sub(r" ssl crt \S+ alpn \S+", "", text)  # the certificate is another test's subject
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    env = {"VLLM_API_KEY": "k", "PATH": "/usr/sbin:/usr/bin"}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False, env=env)

    assert check().returncode == 0, check().stdout + check().stderr
    (tmp_path / "models.lua").write_text(two_models.files["stella/haproxy-models.lua"].replace("end)", ")"))
    assert check().returncode != 0, "a broken Lua file fails the check"
    (tmp_path / "models.lua").write_text(two_models.files["stella/haproxy-models.lua"])
    path.write_text(text.replace("json_query('$.model')", "json_querx('$.model')"))
    assert check().returncode != 0


def test_the_renderer_refuses_routes_it_cannot_render_safely() -> None:
    a = (Backend("stella", "127.0.0.1:1"),)
    b = (Backend("stella", "127.0.0.1:2"),)
    with pytest.raises(ValueError, match="cannot be matched safely"):
        render_haproxy_cfg(LoadBalancerConfig(backends=a, models=(ModelRoute("a", a), ModelRoute("b c", b))))
    with pytest.raises(ValueError, match="the first model route is the default model's"):
        render_haproxy_cfg(LoadBalancerConfig(backends=a, models=(ModelRoute("a", b), ModelRoute("b", a))))
    with pytest.raises(ValueError, match="unique"):
        render_haproxy_cfg(LoadBalancerConfig(backends=a, models=(ModelRoute("a", a), ModelRoute("a", b))))
    with pytest.raises(ValueError, match="several safely named"):
        render_models_lua((ModelRoute("a", a), ModelRoute('b"', b)))
