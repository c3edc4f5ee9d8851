"""The edge stack's custom resources against the upstream CRDs of the releases it pins (vendored in
tests/unit/crds, see its README), and what KubeRay and Prometheus need of the Ray objects: probes
that a pod answers by itself, and every port Prometheus scrapes present on its Service."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infra.plan import Plan, build_plan
from infra.platforms.kubernetes import RAY_AGENT_PORT, RAY_HEALTH_PATH, RAY_VERSION
from tests.plans import stack_plan

CRDS = Path(__file__).resolve().parent / "crds"
ROOT = Path(__file__).resolve().parents[2]
GATEWAY_API = "v1.6.1"


@pytest.fixture(scope="module")
def edge() -> Plan:
    return stack_plan("edge")


def custom(plan: Plan, kind: str) -> list[dict]:
    found = [yaml.safe_load(t) for p, t in plan.files.items() if p.startswith("k8s/") and "/helm-" not in p]
    return [m for m in found if m["kind"] == kind]


def strict(schema: Any) -> Any:
    """The CRD schema, refusing fields it does not name (what the API server's strict field
    validation does; `x-kubernetes-preserve-unknown-fields` objects stay open)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(path: Path, version: str) -> jsonschema.Validator:
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    # metadata is checked by the API server itself, not the CRD; here: a name and a namespace
    schema["properties"]["metadata"] = {"type": "object", "required": ["name", "namespace"]}
    return jsonschema.Draft7Validator(schema)


def kuberay_crd() -> Path:
    version = yaml.safe_load((ROOT / "Pulumi.edge.yaml").read_text())["config"]["vllm-gb10:kuberayVersion"]
    path = CRDS / f"kuberay-v{version}" / "ray.io_rayclusters.yaml"
    assert path.is_file(), f"kuberayVersion {version}: vendor that release's CRD as {path.relative_to(ROOT)}"
    return path


def errors(validator: jsonschema.Validator, manifest: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def test_the_raycluster_validates_against_the_pinned_kuberay_crd(edge: Plan) -> None:
    (cluster,) = custom(edge, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert errors(crd_validator(kuberay_crd(), "v1"), cluster) == []
    assert cluster["spec"]["rayVersion"] == RAY_VERSION


def test_the_kuberay_crd_check_catches_what_kuberay_would_refuse(edge: Plan) -> None:
    validator = crd_validator(kuberay_crd(), "v1")
    (cluster,) = custom(edge, "RayCluster")
    for breakage in (
        lambda c: c["spec"].update(headGroupSpecs=c["spec"].pop("headGroupSpec")),  # a typo
        lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}),  # must be a string
        lambda c: c["spec"]["workerGroupSpecs"][0].pop("groupName"),  # required
        lambda c: c["spec"].update(authOptions={"mode": "password"}),  # token or disabled
    ):
        broken = copy.deepcopy(cluster)
        breakage(broken)
        assert errors(validator, broken), breakage


def test_the_ray_version_is_the_one_our_images_install() -> None:
    pins = re.findall(r"^ray(?:\[[\w,]+\])?==([\d.]+)$", (ROOT / "requirements-offload.txt").read_text(), re.M)
    assert pins == [RAY_VERSION]


def test_ray_pods_are_probed_locally_never_through_the_head_service(edge: Plan) -> None:
    """The head's probes ran `ray health-check` through Service ray-head, which routes only to Ready
    pods: the head never became Ready (issue 15, item 3). KubeRay's own probes ask the pod's dashboard
    agent; ours do the same."""
    (cluster,) = custom(edge, "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert probe.get("httpGet") == {"path": RAY_HEALTH_PATH, "port": RAY_AGENT_PORT}, (kind, probe)
            assert "host" not in probe["httpGet"] and "exec" not in probe
        assert "svc.cluster.local" not in yaml.safe_dump(container.get("livenessProbe"))
    # The agent listens on Ray's default port in every pod: nothing moves it away from the probes.
    for group in groups:
        assert "dashboard-agent-listen-port" not in group["rayStartParams"]


def scrape_targets(plan: Plan) -> set[tuple[str, int]]:
    (config_map,) = [m for m in custom(plan, "ConfigMap") if m["metadata"]["name"] == "prometheus-files"]
    prometheus = yaml.safe_load(config_map["data"]["prometheus.yml"])
    namespace = config_map["metadata"]["namespace"]
    found = set()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host.endswith(f".{namespace}.svc.cluster.local"), target
                found.add((host.split(".", 1)[0], int(port)))
    return found


def test_every_port_prometheus_scrapes_is_on_its_service(edge: Plan) -> None:
    """Prometheus scraped ray-head:8090, which the Service did not expose (issue 15, item 8)."""
    services = {m["metadata"]["name"]: m for m in custom(edge, "Service")}
    targets = scrape_targets(edge)
    assert ("ray-head", 8090) in targets
    missing = [t for t in sorted(targets) if t[1] not in {p["port"] for p in services[t[0]]["spec"]["ports"]}]
    assert missing == []
    (cluster,) = custom(edge, "RayCluster")
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 8090} in head["ports"]
    assert {"name": "metrics", "port": 8090, "targetPort": 8090, "protocol": "TCP"} in services["ray-head"]["spec"][
        "ports"
    ]


def test_http_routes_validate_against_the_gateway_api_crd(edge: Plan) -> None:
    validator = crd_validator(CRDS / f"gateway-api-{GATEWAY_API}" / "gateway.networking.k8s.io_httproutes.yaml", "v1")
    routes = custom(edge, "HTTPRoute")
    assert {r["metadata"]["name"] for r in routes} == {"lb", "batch-api", "grafana"}
    for route in routes:
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert errors(validator, route) == [], route["metadata"]["name"]
    broken = copy.deepcopy(routes[0])
    broken["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"  # Ingress's word, not Gateway API's
    assert errors(validator, broken)


def test_a_gateway_in_the_stack_namespace_needs_no_namespace_in_the_parent_ref() -> None:
    plan = build_plan("edge", overrides={"gatewayNamespace": ""})
    for route in custom(plan, "HTTPRoute"):
        assert route["spec"]["parentRefs"] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}
        ]
