"""The edge stack on day two: what a first `up` and a later image change need from the objects it writes.

A new image digest must reach the Ray pods, volumes that a storage class makes root-owned must be
writable by each image's own user, the first ~20 GB pull of the vLLM image must not outlast Pulumi's
wait, and the post-deploy check must not start its clock before vLLM exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.plan import Plan
from infra.plan.recorder import RecordedResource
from tests.plans import stack_plan

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "tests" / "unit" / "crds" / "kuberay-v1.7.0" / "ray.io_rayclusters.yaml"


@pytest.fixture(scope="module")
def edge() -> Plan:
    return stack_plan("edge")


def recorded(plan: Plan, type_: str, name: str) -> RecordedResource:
    (found,) = [r for r in plan.recording.resources if r.type == type_ and r.name == name]
    return found


def test_the_raycluster_recreates_its_pods_when_its_spec_changes(edge: Plan) -> None:
    cluster = recorded(edge, "kubernetes:ray.io/v1:RayCluster", "ray-cluster")
    assert cluster.inputs["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    allowed = schema["properties"]["spec"]["properties"]["upgradeStrategy"]["properties"]["type"]["enum"]
    assert allowed == ["Recreate", "None"]  # KubeRay v1.7.0's CRD: the field exists, Recreate is allowed


@pytest.mark.parametrize(
    ("workload", "group"),
    [
        (("kubernetes:apps/v1:StatefulSet", "minio"), 10001),  # rustfs/rustfs: USER rustfs (10001:10001)
        (("kubernetes:apps/v1:StatefulSet", "prometheus"), 65534),  # prom/prometheus: USER nobody
        (("kubernetes:apps/v1:StatefulSet", "grafana"), 472),  # grafana/grafana: GF_UID 472
    ],
)
def test_volumes_are_writable_by_the_images_own_user(edge: Plan, workload: tuple[str, str], group: int) -> None:
    resource = recorded(edge, *workload)
    pod = resource.inputs["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == group
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert "runAsUser" not in pod["securityContext"], "the image's own user runs it"


def test_the_vllm_deployment_waits_long_enough_for_a_first_pull(edge: Plan) -> None:
    vllm = recorded(edge, "kubernetes:apps/v1:Deployment", "vllm-gb10")
    assert vllm.custom_timeouts == {"create": "60m", "update": "60m"}
    redis = recorded(edge, "kubernetes:apps/v1:StatefulSet", "redis")
    assert redis.custom_timeouts == {}, "small images keep Pulumi's 10-minute wait (a broken one fails sooner)"


def test_the_post_deploy_job_starts_after_vllm_and_every_workload(edge: Plan) -> None:
    job = recorded(edge, "kubernetes:batch/v1:Job", "post-deploy-check")
    workloads = {
        r.name
        for r in edge.recording.resources
        if r.type in {"kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"}
    }
    assert "vllm-gb10" in workloads
    # The DCGM exporter is observability, optional: a node where it cannot run still deploys and passes.
    assert workloads - {"dcgm-exporter-gb10"} <= set(job.depends_on)
    assert "dcgm-exporter-gb10" not in job.depends_on


def test_a_recreated_load_balancer_is_not_held_by_a_long_graceful_stop(edge: Plan) -> None:
    """Its ReadWriteOnce keys volume makes the Deployment Recreate: the new pod waits for the old one, so
    a 630 s soft stop there would be 630 s with no load balancer (compose keeps the soft stop)."""
    lb = recorded(edge, "kubernetes:apps/v1:Deployment", "lb")
    assert lb.inputs["spec"]["strategy"] == {"type": "Recreate"}
    pod = lb.inputs["spec"]["template"]["spec"]
    assert "terminationGracePeriodSeconds" not in pod
    assert not [c for c in pod["containers"] if "lifecycle" in c]


def test_a_rolling_workload_stops_with_its_own_signal_within_its_grace() -> None:
    from infra.render.kubernetes import ClusterPlacement, workload
    from infra.services import ServiceSpec

    spec = ServiceSpec(name="proxy", image="proxy:1", host="any", stop_signal="SIGUSR1", stop_grace_s=630)
    kind, body = workload(spec, ClusterPlacement("ns", "gpu", "gb10"))
    assert kind == "Deployment" and body["strategy"]["type"] == "RollingUpdate"
    pod = body["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 630
    (hook,) = [c["lifecycle"]["preStop"]["exec"]["command"] for c in pod["containers"]]
    assert hook[:2] == ["/bin/sh", "-c"] and hook[2].startswith("kill -s USR1 1 && while kill -0 1")
