"""One memory budget per GB10 host: vLLM is sized with its neighbours subtracted, and a stack whose
limits on one host exceed the host is refused with the services and sums named."""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from infra.config import ConfigError
from infra.memory import LIMITS, gib
from infra.plan import PROJECT_DIR, build_plan
from runtime.kvcache import PROFILES, Target, plan
from runtime.kvcache.model import ModelShape
from runtime.kvcache.policy import PlanError
from tests.plans import stack_plan

GB10 = PROFILES["gb10"]


def _limits(host_compose: str) -> dict[str, str]:
    services = yaml.safe_load(host_compose)["services"]
    return {name: s["deploy"]["resources"]["limits"]["memory"] for name, s in services.items()}


def test_the_budget_table_is_what_the_compose_files_say() -> None:
    stella = stack_plan("stella")
    for host in ("stella", "nova"):
        for name, limit in _limits(stella.files[f"{host}/docker-compose.yml"]).items():
            if name.startswith("vllm-"):
                continue
            base = re.sub(rf"-{host}$", "", name)
            assert LIMITS[base] == limit, name


def test_stella_fits_each_gb10_and_vllm_gets_what_is_left() -> None:
    stella = stack_plan("stella")
    limits = _limits(stella.files["stella/docker-compose.yml"])
    assert sum(gib(v) for v in limits.values()) <= GB10.gpu_memory_gib
    compose = yaml.safe_load(stella.files["stella/docker-compose.yml"])
    command = compose["services"]["vllm-stella"]["command"]
    util = float(command[command.index("--gpu-memory-utilization") + 1])
    neighbours = sum(gib(v) for k, v in limits.items() if k != "vllm-stella")
    # The neighbours' limits come out of vLLM's 0.85: (0.85 - 49/119.7) rounded down.
    assert util == pytest.approx(int((0.85 - neighbours / GB10.gpu_memory_gib) * 100) / 100)
    assert gib(limits["vllm-stella"]) == math.ceil(util * GB10.gpu_memory_gib) + 4


def test_limits_beyond_the_host_are_refused_naming_services_and_sums() -> None:
    with pytest.raises(ConfigError) as err:
        build_plan("stella", overrides={"vllmMemoryLimit": "110g"})
    message = str(err.value)
    assert message.startswith("Pulumi.stella.yaml: vllm-gb10:hosts: the memory limits on host stella add up to")
    assert "more than its 119.7 GiB" in message and "vllm-stella 110" in message and "ray-worker-stella 16" in message


def test_the_kv_policy_subtracts_what_the_neighbours_reserve() -> None:
    model = ModelShape("m", 36, 8, 128, 2, 40960, None, 0, None, 8 * 1024**3, False)
    alone = plan(model, GB10, Target(8192, 8))
    crowded = plan(model, GB10, Target(8192, 8), reserved_gib=40)
    assert alone.gpu_memory_utilization == 0.85
    assert crowded.gpu_memory_utilization == 0.51  # 0.85 - 40/119.7 = 0.5158, rounded down
    assert crowded.kv_budget_bytes < alone.kv_budget_bytes
    with pytest.raises(PlanError, match=re.escape("reserve 110.0 GiB of gb10's 119.7 GiB")) as err:
        plan(model, GB10, Target(8192, 8), reserved_gib=110)
    assert err.value.target == "reserved"
    discrete = plan(model, PROFILES["h100"], Target(8192, 8), reserved_gib=40)  # host RAM, not GPU memory
    assert discrete.gpu_memory_utilization == PROFILES["h100"].max_gpu_memory_utilization


def test_an_offline_engine_beside_a_vllm_server_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"batchEngine: offline runs a second vLLM engine on host stella"):
        build_plan("stella", overrides={"batchEngine": "offline"})
    hosts = yaml.safe_load((PROJECT_DIR / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    hosts[0]["roles"] = ["gpu", "ray-head", "data", "lb"]
    hosts.append(
        {**hosts[1], "name": "batchbox", "address": "10.10.10.3", "clusterAddress": "10.10.10.3", "roles": ["batch"]}
    )
    apart = build_plan("stella", overrides={"batchEngine": "offline", "hosts": json.dumps(hosts)})
    assert "batch-worker" in yaml.safe_load(apart.files["batchbox/docker-compose.yml"])["services"]
