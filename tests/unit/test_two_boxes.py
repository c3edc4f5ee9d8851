"""One model over both boxes (tensor/pipeline over Ray): the second box's Ray worker runs vLLM's
workers, so it gets what the server gets; the leader binds its cluster address; NCCL takes the link."""

from __future__ import annotations

import pytest
import yaml

from infra.plan import Plan, build_plan
from infra.plan.policy_check import evaluate

TENSOR = {"parallelism": "tensor", "ncclSocketIfname": "enp1s0f1np1", "ncclIbHca": "rocep1s0f1"}


@pytest.fixture(scope="module")
def tensor_plan() -> Plan:
    return build_plan("stella", overrides=TENSOR)


@pytest.fixture(scope="module")
def services(tensor_plan: Plan) -> dict[str, dict]:
    plan = tensor_plan
    found: dict[str, dict] = {}
    for host in ("stella", "nova"):
        found |= yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"]
    return found


def test_the_second_box_worker_has_the_model_cache_token_and_the_servers_memory(services: dict[str, dict]) -> None:
    leader, worker = services["vllm-stella"], services["ray-worker-nova"]
    assert worker["volumes"] == leader["volumes"] == ["model-cache:/models"]
    assert worker["environment"]["HF_HOME"] == "/models" and "HF_TOKEN" in worker["environment"]
    assert worker["environment"]["VLLM_HOST_IP"] == "10.10.10.2"
    assert worker["deploy"]["resources"]["limits"] == leader["deploy"]["resources"]["limits"]
    assert "ray-worker-stella" not in services  # the leader's container is the first box's Ray node


def test_nccl_and_gloo_take_the_direct_link_on_both_boxes(services: dict[str, dict]) -> None:
    for name in ("vllm-stella", "ray-worker-nova"):
        env = services[name]["environment"]
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1", name
        assert env["NCCL_IB_HCA"] == "rocep1s0f1", name


def test_the_leader_binds_its_cluster_address_not_every_interface(services: dict[str, dict]) -> None:
    (command,) = services["vllm-stella"]["command"]
    assert "--host 10.10.10.1 --port 8000" in command and "0.0.0.0" not in command
    assert services["vllm-stella"]["network_mode"] == "host" and "ports" not in services["vllm-stella"]


def test_replica_mode_keeps_the_ray_workers_lean() -> None:
    plan = build_plan("stella", overrides={"ncclSocketIfname": "enp1s0f1np1"})
    worker = yaml.safe_load(plan.files["nova/docker-compose.yml"])["services"]["ray-worker-nova"]
    assert "volumes" not in worker and "NCCL_SOCKET_IFNAME" not in worker.get("environment", {})
    assert worker["deploy"]["resources"]["limits"]["memory"] == "16g"


# NVIDIA's two-Spark vLLM playbook (dgx-spark-playbooks nvidia/vllm/README.md) starts every node with these.
PLAYBOOK = {
    "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
    "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
    "TP_SOCKET_IFNAME": "enp1s0f1np1",
    "UCX_NET_DEVICES": "enp1s0f1np1",
    "RAY_memory_monitor_refresh_ms": "0",
}


def test_every_vllm_node_gets_the_playbooks_link_variables(services: dict[str, dict]) -> None:
    for name in ("vllm-stella", "ray-worker-nova"):
        env = services[name]["environment"]
        assert {k: env.get(k) for k in PLAYBOOK} == PLAYBOOK, name


def test_rdma_gives_vllms_nodes_the_devices_unlimited_memlock_and_ipc_lock(services: dict[str, dict]) -> None:
    for name in ("vllm-stella", "ray-worker-nova"):
        service = services[name]
        assert service["devices"] == ["/dev/infiniband:/dev/infiniband"], name
        assert service["ulimits"] == {"memlock": -1}, name
        assert service["cap_add"] == ["IPC_LOCK"], name
    for name in ("ray-head", "redis", "lb"):  # nothing else gets a device or a capability
        assert not {"devices", "ulimits", "cap_add"} & set(services[name]), name


def test_the_rdma_nodes_pass_the_policy_pack(tensor_plan: Plan) -> None:
    """least-privilege allows exactly what ncclIbHca adds; nothing else of the plan is refused."""
    assert [v for v in evaluate(tensor_plan.recording) if v.level == "mandatory"] == []


def test_without_an_rdma_device_nccl_uses_the_link_over_sockets_and_nothing_is_mapped() -> None:
    plan = build_plan("stella", overrides={k: v for k, v in TENSOR.items() if k != "ncclIbHca"})
    for host, name in (("stella", "vllm-stella"), ("nova", "ray-worker-nova")):
        service = yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"][name]
        env = service["environment"]
        assert env["NCCL_SOCKET_IFNAME"] == "enp1s0f1np1" and "NCCL_IB_HCA" not in env, name
        assert not {"devices", "ulimits", "cap_add"} & set(service), name


def test_the_leader_waits_for_the_healthy_ray_head_it_joins(services: dict[str, dict]) -> None:
    assert services["vllm-stella"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    # Healthy means its own GCS and raylet answer (Ray's dashboard agent on the head's cluster address).
    probe = services["ray-head"]["healthcheck"]["test"][-1]
    assert probe.endswith("urlopen('http://10.10.10.1:52365/api/healthz', timeout=5)")


def test_kubernetes_refuses_to_render_rdma_rather_than_drop_it() -> None:
    from infra.render.kubernetes import container
    from infra.services import ServiceSpec

    with pytest.raises(ValueError, match=r"^service vllm-gb10: RDMA devices need a device plugin on kubernetes"):
        container(ServiceSpec(name="vllm-gb10", image="vllm", host="gb10", rdma=True))
