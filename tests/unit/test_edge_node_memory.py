"""Memory on the edge stack's GB10 node: the memory requests of every pod the stack places there
(node affinity to the GB10 label) fit in the gb10 host profile with room left for the node itself.

The scheduler admits pods by their requests; requests summing to nearly all of the node's
allocatable memory (118.75 of ~119.6 GiB, issue 15 item 8) leave nothing for the kubelet,
containerd, the device plugin, the OS and the page cache that CUDA counts as used on unified memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra.plan import Plan
from runtime.kvcache.hosts import PROFILES
from tests.plans import stack_plan

# What the GB10 node itself needs beside our pods: OS and desktop services of DGX OS (~3 GiB idle),
# kubelet, containerd, CNI and device plugin (~1 GiB), kube-reserved/eviction thresholds, and page
# cache that the GPU's allocator sees as used on unified memory.
NODE_HEADROOM_GIB = 8.0
ROOT = Path(__file__).resolve().parents[2]
_UNITS = {"Ki": 1 / 1024**2, "Mi": 1 / 1024, "Gi": 1.0, "Ti": 1024.0, "": 1 / 1024**3}


@pytest.fixture(scope="module")
def edge() -> Plan:
    return stack_plan("edge")


def gib(quantity: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|)", str(quantity))
    assert found, f"unexpected memory quantity {quantity!r}"
    return float(found[1]) * _UNITS[found[2]]


def on_gpu_node(pod_spec: dict, label: tuple[str, str]) -> bool:
    affinity = pod_spec.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    expected = {"key": label[0], "operator": "In", "values": [label[1]]}
    return any(expected in term.get("matchExpressions", []) for term in terms)


def gpu_node_requests(plan: Plan, label: tuple[str, str]) -> dict[str, float]:
    """GiB of memory requested on the GB10 node, by pod (replicas counted; Jobs too)."""
    found: dict[str, float] = {}
    for path, text in plan.files.items():
        if not path.startswith("k8s/") or "/helm-" in path:
            continue
        manifest = yaml.safe_load(text)
        templates: list[tuple[str, int, dict]] = []
        if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
            spec = manifest["spec"]
            templates.append((manifest["metadata"]["name"], spec.get("replicas", 1), spec["template"]["spec"]))
        elif manifest["kind"] == "RayCluster":
            head = manifest["spec"]["headGroupSpec"]
            templates.append(("ray-head", 1, head["template"]["spec"]))
            for group in manifest["spec"].get("workerGroupSpecs", []):
                templates.append((f"ray-{group['groupName']}", group["replicas"], group["template"]["spec"]))
        for name, replicas, pod in templates:
            if on_gpu_node(pod, label):
                containers = [*pod["containers"], *pod.get("initContainers", [])]
                found[name] = replicas * sum(gib(c["resources"]["requests"]["memory"]) for c in containers)
    return found


def check_fits(requests: dict[str, float], profile: str) -> None:
    budget = PROFILES[profile].gpu_memory_gib - NODE_HEADROOM_GIB
    total = sum(requests.values())
    detail = ", ".join(f"{name} {size:g}" for name, size in sorted(requests.items(), key=lambda kv: -kv[1]))
    assert total <= budget, (
        f"memory requests on the GB10 node add up to {total:g} GiB ({detail} GiB), more than the "
        f"{profile} profile's {PROFILES[profile].gpu_memory_gib:g} GiB less {NODE_HEADROOM_GIB:g} GiB for the node"
    )


def test_memory_requests_on_the_gb10_node_leave_the_node_its_headroom(edge: Plan) -> None:
    config = yaml.safe_load((ROOT / "Pulumi.edge.yaml").read_text())["config"]
    label = (config["vllm-gb10:gpuNodeLabelKey"], config["vllm-gb10:gpuNodeLabelValue"])
    requests = gpu_node_requests(edge, label)
    assert {"vllm-gb10", "ray-gb10"} <= set(requests)  # the GPU pods are counted
    check_fits(requests, config["vllm-gb10:hostProfile"])


def test_the_check_names_the_pods_and_the_sums() -> None:
    with pytest.raises(AssertionError) as error:
        check_fits({"vllm-gb10": 110.0, "ray-gb10": 8.0, "dcgm-exporter-gb10": 0.5, "node-exporter-gb10": 0.25}, "gb10")
    assert "118.75 GiB (vllm-gb10 110, ray-gb10 8, dcgm-exporter-gb10 0.5, node-exporter-gb10 0.25 GiB)" in str(
        error.value
    )
