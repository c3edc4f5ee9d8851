"""GB10's unified memory: Ray's memory monitor off on the GB10 hosts' nodes (NVIDIA's two-Spark playbook),
the offload job's cuML (RMM) pool capped within its Ray worker's memory limit, and the 64 GB GB10 profile."""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest
import yaml

from infra.components.ray_cluster import RMM_POOL_ENV, rmm_pool_max_bytes
from infra.config import ConfigError
from infra.memory import LIMITS, gib
from infra.plan import PROJECT_DIR, build_plan
from runtime.kvcache import PROFILES
from runtime.offload import backends

GIB = 1024**3


def _ray_nodes(overrides: dict[str, str]) -> dict[str, dict[str, Any]]:
    plan = build_plan("stella", overrides=overrides)
    found: dict[str, dict[str, Any]] = {}
    for host in ("stella", "nova"):
        services = yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"]
        found |= {name: s for name, s in services.items() if name.startswith("ray-")}
    return found


@pytest.fixture(scope="module")
def replica_nodes() -> dict[str, dict[str, Any]]:
    return _ray_nodes({})


def test_every_ray_node_on_a_gb10_host_runs_without_rays_memory_monitor(replica_nodes: dict[str, dict]) -> None:
    assert set(replica_nodes) == {"ray-head", "ray-worker-stella", "ray-worker-nova"}
    for name, service in replica_nodes.items():
        assert service["environment"]["RAY_memory_monitor_refresh_ms"] == "0", name


def test_a_gpu_that_is_not_unified_memory_keeps_rays_memory_monitor() -> None:
    # vllmMemoryLimit: the stella hosts hold all their services within the H100 profile's 79 GiB
    for name, service in _ray_nodes({"hostProfile": "h100", "vllmMemoryLimit": "20g"}).items():
        assert "RAY_memory_monitor_refresh_ms" not in service["environment"], name


def test_each_ray_worker_caps_cuml_at_half_its_memory_limit(replica_nodes: dict[str, dict]) -> None:
    for name in ("ray-worker-stella", "ray-worker-nova"):
        service = replica_nodes[name]
        assert service["deploy"]["resources"]["limits"]["memory"] == LIMITS["ray-worker"] == "16g"
        assert service["environment"][RMM_POOL_ENV] == str(8 * GIB), name
    assert RMM_POOL_ENV not in replica_nodes["ray-head"]["environment"]  # no GPU, no offload task there
    assert rmm_pool_max_bytes("1000m") % 256 == 0


def test_the_pool_sizes_come_from_the_environment() -> None:
    assert backends.rmm_pool_sizes({}) is None
    assert backends.rmm_pool_sizes({RMM_POOL_ENV: str(8 * GIB)}) == (GIB, 8 * GIB)
    assert backends.rmm_pool_sizes({RMM_POOL_ENV: "1000"}) == (768, 768)  # rounded down to RMM's 256 bytes
    for bad, words in (("lots", "'lots' is not a number of bytes"), ("100", "'100' leaves cuML no memory")):
        with pytest.raises(ValueError, match=f"^\\${RMM_POOL_ENV}: {words}"):
            backends.rmm_pool_sizes({RMM_POOL_ENV: bad})


@pytest.fixture
def rmm_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """rmm and cupy are CUDA packages that do not install here: stand-ins that record what is asked of them
    (the GPU rung runs the real ones)."""
    calls: list[tuple[str, Any]] = []
    rmm = types.ModuleType("rmm")
    rmm.reinitialize = lambda **kwargs: calls.append(("rmm.reinitialize", kwargs))  # type: ignore[attr-defined]
    allocators = types.ModuleType("rmm.allocators")
    rmm_cupy = types.ModuleType("rmm.allocators.cupy")
    rmm_cupy.rmm_cupy_allocator = object()  # type: ignore[attr-defined]
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        set_allocator=lambda allocator: calls.append(("cupy.cuda.set_allocator", allocator))
    )
    for name, module in (
        ("rmm", rmm),
        ("rmm.allocators", allocators),
        ("rmm.allocators.cupy", rmm_cupy),
        ("cupy", cupy),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_cuml_gets_an_rmm_pool_capped_at_the_workers_share(rmm_calls: list[tuple[str, Any]]) -> None:
    assert backends.cap_rmm_pool({RMM_POOL_ENV: str(8 * GIB)}) == 8 * GIB
    allocator = sys.modules["rmm.allocators.cupy"].rmm_cupy_allocator  # type: ignore[attr-defined]
    assert rmm_calls == [
        ("rmm.reinitialize", {"pool_allocator": True, "initial_pool_size": GIB, "maximum_pool_size": 8 * GIB}),
        ("cupy.cuda.set_allocator", allocator),
    ]


def test_without_the_variable_rmm_is_left_alone(rmm_calls: list[tuple[str, Any]]) -> None:
    assert backends.cap_rmm_pool({}) is None
    assert rmm_calls == []


def _gpu_boxes_apart() -> dict[str, str]:
    """Both GB10s serve only; a third box holds every other role (a 64 GB box cannot hold them beside vLLM)."""
    hosts = yaml.safe_load((PROJECT_DIR / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    box = {**hosts[1], "name": "databox", "address": "10.10.10.3", "clusterAddress": "10.10.10.3"}
    box["roles"] = [r for r in hosts[0]["roles"] if r != "gpu"]
    hosts[0]["roles"] = ["gpu"]
    return {"hosts": json.dumps([*hosts, box])}


def test_the_64_gb_gb10_profile_sizes_vllm_within_half_the_memory() -> None:
    assert PROFILES["gb10-64"].unified and PROFILES["gb10-64"].gpu_memory_gib == pytest.approx(
        PROFILES["gb10"].gpu_memory_gib / 2, abs=0.1
    )
    apart = _gpu_boxes_apart()
    limits = {}
    for profile in ("gb10", "gb10-64"):
        plan = build_plan("stella", overrides={**apart, "hostProfile": profile})
        vllm = yaml.safe_load(plan.files["nova/docker-compose.yml"])["services"]["vllm-nova"]
        limits[profile] = gib(vllm["deploy"]["resources"]["limits"]["memory"])
    assert limits["gb10-64"] < PROFILES["gb10-64"].gpu_memory_gib < limits["gb10"]


def test_a_64_gb_box_holding_every_role_is_refused_naming_the_profile() -> None:
    with pytest.raises(ConfigError, match=r"reserve 53\.5 GiB of gb10-64's 59\.8 GiB, leaving vLLM nothing"):
        build_plan("stella", overrides={"hostProfile": "gb10-64"})
