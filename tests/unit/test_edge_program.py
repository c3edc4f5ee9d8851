"""The edge stack (kubernetes platform) under Pulumi's mock monitor: every manifest it writes is
checked against the Kubernetes OpenAPI schemas (kubernetes-validate, no cluster needed), then for
what matters on a one-GPU GB10 node: GPU requests, node affinity, PVCs, private data services,
Secret objects, the KubeRay operator and RayCluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra.config import ConfigError
from infra.plan import Plan, build_plan
from infra.plan.recorder import MASK, unmarked_secrets
from infra.plan.stackfile import stand_in_digest
from tests.plans import stack_plan

K8S_VERSION = "1.33"
NODE_LABEL = ("kubernetes.io/hostname", "hw-brain-01")
NAMESPACE = "app-cognition"
DATA_SERVICES = ("redis", "postgres", "minio")
CUSTOM_KINDS = ("RayCluster", "HTTPRoute")
DIGEST = re.compile(r"^[\w.:-]+/[\w.-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZCdjWjVb9EHw8Qr0tp4/Y5r7rwUVz3cO333wUBrp4B"


@pytest.fixture(scope="module")
def edge() -> Plan:
    return stack_plan("edge")


def manifests(plan: Plan) -> dict[str, dict]:
    """files/k8s/<kind>-<name>.yaml → the object (Helm releases are values files, not objects)."""
    return {
        path: yaml.safe_load(text)
        for path, text in plan.files.items()
        if path.startswith("k8s/") and not path.startswith("k8s/helm-")
    }


def objects(plan: Plan, kind: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests(plan).values() if m["kind"] == kind}


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def ray_pod_templates(plan: Plan) -> dict[str, dict]:
    (cluster,) = objects(plan, "RayCluster").values()
    templates = {"head": cluster["spec"]["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["spec"]["workerGroupSpecs"]})
    return templates


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_every_manifest_validates_against_the_kubernetes_schemas(edge: Plan) -> None:
    found = manifests(edge)
    kinds = {m["kind"] for m in found.values()}
    assert {"Namespace", "Deployment", "StatefulSet", "Job", "Service", "Secret", "ConfigMap"} <= kinds
    assert {"PersistentVolumeClaim", "HTTPRoute", "RayCluster"} <= kinds
    for path, manifest in found.items():
        if manifest["kind"] in CUSTOM_KINDS:
            continue  # custom resources: checked against their vendored CRDs (test_edge_crds.py)
        validate(manifest)
        assert manifest["kind"] == "Namespace" or manifest["metadata"]["namespace"] == NAMESPACE, path


def test_the_raycluster_pod_templates_validate_as_pod_templates(edge: Plan) -> None:
    for group, template in ray_pod_templates(edge).items():
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template})


def test_the_schema_check_catches_a_broken_manifest(edge: Plan) -> None:
    broken = json.loads(json.dumps(objects(edge, "Deployment")["lb"]))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"gigabytes": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = json.loads(json.dumps(objects(edge, "Service")["redis"]))
    broken["spec"]["portz"] = broken["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_plan_cli_writes_every_manifest_under_files(edge: Plan, tmp_path) -> None:
    from infra.plan.__main__ import main

    assert main(["--stack", "edge", "--out", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path / "edge" / "files").as_posix() for p in (tmp_path / "edge").rglob("*.yaml"))
    assert written == sorted(edge.files)
    assert len([p for p in written if p.startswith("k8s/")]) == len(edge.files)


def test_vllm_requests_the_gpu_on_the_gb10_node_and_never_rolls_two_gpu_pods(edge: Plan) -> None:
    vllm = objects(edge, "Deployment")["vllm-gb10"]
    spec = pod(vllm)
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": NODE_LABEL[0], "operator": "In", "values": [NODE_LABEL[1]]}]}]
    assert vllm["spec"]["replicas"] == 1 and vllm["spec"]["strategy"] == {"type": "Recreate"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}, probe
    # The start-up probe allows the model download and graph capture (15 min) before liveness counts.
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 900
    assert "--gpu-memory-utilization" in container["args"]


def test_only_gpu_pods_request_a_gpu_and_all_of_them_are_pinned(edge: Plan) -> None:
    templates = {
        n: w["spec"]["template"]
        for kind in ("Deployment", "StatefulSet", "Job")
        for n, w in objects(edge, kind).items()
    }
    templates.update({f"ray-{g}": t for g, t in ray_pod_templates(edge).items()})
    gpu = {
        name for name, t in templates.items() if "nvidia.com/gpu" in t["spec"]["containers"][0]["resources"]["limits"]
    }
    assert gpu == {"vllm-gb10", "ray-gb10"}
    for name in gpu:
        assert "affinity" in templates[name]["spec"], name


def test_model_cache_and_data_services_have_persistent_volumes(edge: Plan) -> None:
    claims = objects(edge, "PersistentVolumeClaim")
    assert claims["vllm-gb10-model-cache"]["spec"]["resources"]["requests"]["storage"] == "200Gi"
    volumes = pod(objects(edge, "Deployment")["vllm-gb10"])["volumes"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "vllm-gb10-model-cache"}} in volumes
    stateful = objects(edge, "StatefulSet")
    assert set(stateful) == {*DATA_SERVICES, "prometheus", "grafana"}
    for name in stateful:
        (template,) = stateful[name]["spec"]["volumeClaimTemplates"]
        mounts = pod(stateful[name])["containers"][0]["volumeMounts"]
        assert template["metadata"]["name"] in {m["name"] for m in mounts}, name


PUBLIC = {"lb.cognition.lan": ("lb", 8080), "batch-api.cognition.lan": ("batch-api", 8100)}
PUBLIC["grafana.cognition.lan"] = ("grafana", 3000)


def test_no_service_is_exposed_by_nodeport_or_loadbalancer_and_the_public_ones_use_gateway_routes(edge: Plan) -> None:
    """ingress-nginx is out of maintenance: edge attaches HTTPRoutes (Gateway API v1) to the configured Gateway."""
    services = objects(edge, "Service")
    assert {s["spec"]["type"] for s in services.values()} == {"ClusterIP"}
    assert set(DATA_SERVICES) | {"ray-head"} <= set(services)
    assert objects(edge, "Ingress") == {}
    routes = objects(edge, "HTTPRoute")
    hosts = {}
    for route in routes.values():
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateway"}
        ]
        ((hostname,), (rule,)) = route["spec"]["hostnames"], route["spec"]["rules"]
        (backend,) = rule["backendRefs"]
        hosts[hostname] = (backend["name"], backend["port"])
        assert services[backend["name"]]["spec"]["ports"][0]["port"] == backend["port"]
    assert hosts == PUBLIC
    assert edge.outputs["loadBalancerUrl"] == "https://lb.cognition.lan/v1"
    assert edge.outputs["batchApiUrl"] == "https://batch-api.cognition.lan/v1"


@pytest.mark.parametrize("ingress_class", ["", "traefik", "nginx"])
def test_without_a_gateway_one_ingress_of_the_configured_class(ingress_class: str) -> None:
    plan = build_plan("edge", overrides={"gatewayName": "", "ingressClass": ingress_class})
    assert objects(plan, "HTTPRoute") == {}
    (ingress,) = objects(plan, "Ingress").values()
    validate(ingress)
    # empty: the cluster's default IngressClass; ingress-nginx's annotations only for that controller
    assert ingress["spec"].get("ingressClassName", "") == ingress_class
    assert ("annotations" in ingress["metadata"]) is (ingress_class == "nginx")
    hosts = {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ingress["spec"]["rules"]}
    assert hosts == {h: {"name": n, "port": {"number": p}} for h, (n, p) in PUBLIC.items()}
    # Every host over TLS, with the certificate the stack made for *.<ingressDomain> (key kept secret).
    (tls,) = ingress["spec"]["tls"]
    assert sorted(tls["hosts"]) == sorted(PUBLIC) and tls["secretName"] == "public-tls"
    certificate = objects(plan, "Secret")["public-tls"]
    assert certificate["type"] == "kubernetes.io/tls" and certificate["stringData"]["tls.key"] == MASK
    assert "BEGIN CERTIFICATE" in certificate["stringData"]["tls.crt"]
    (request,) = [r for r in plan.resources if r["type"] == "tls:index/certRequest:CertRequest"]
    assert request["inputs"]["dnsNames"] == ["*.cognition.lan", "cognition.lan"]


def test_secrets_are_secret_objects_referenced_by_name_and_marked_secret(edge: Plan) -> None:
    secrets = objects(edge, "Secret")
    assert {"redis-env", "postgres-env", "minio-env", "batch-api-env", "batch-worker-env"} <= set(secrets)
    for name, secret in secrets.items():
        assert set(secret["stringData"].values()) == {MASK}, name
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, workload in objects(edge, kind).items():
            for item in pod(workload)["containers"][0].get("env", []):
                if "valueFrom" in item:
                    assert item["valueFrom"]["secretKeyRef"]["name"] in secrets, name
                else:
                    assert not any(s in item["value"] for s in edge.known_secrets), f"{name}: {item['name']}"
    leaks = [
        f"{r.type} {r.name}: {p}"
        for r in edge.recording.resources
        for p in unmarked_secrets(r.inputs, edge.known_secrets)
    ]
    assert not leaks
    plain = json.dumps([edge.resources, edge.outputs, edge.files])
    assert not [s for s in edge.known_secrets if s in plain]
    assert "SCRAM-SHA-256$" not in plain, "the offload role's verifier is derived from a secret, and one too"


def test_kuberay_operator_comes_first_and_the_raycluster_has_a_head_and_a_gpu_worker_group(edge: Plan) -> None:
    release = yaml.safe_load(edge.files["k8s/helm-kuberay-operator.yaml"])
    assert release["chart"] == "kuberay-operator" and release["version"] == edge_config("kuberayVersion")
    # 1.5.1 brought spec.authOptions (Ray token auth); 1.7.x is current
    assert tuple(int(p) for p in release["version"].split(".")) >= (1, 7, 0)
    assert release["repositoryOpts"]["repo"] == "https://ray-project.github.io/kuberay-helm/"
    (cluster,) = objects(edge, "RayCluster").values()
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["dashboard-port"] == "8265"
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1 and workers["rayStartParams"] == {"num-gpus": "1", "metrics-export-port": "8090"}
    vllm_image = pod(objects(edge, "Deployment")["vllm-gb10"])["containers"][0]["image"]
    assert workers["template"]["spec"]["containers"][0]["image"] == vllm_image
    (raw,) = [r for r in edge.recording.resources if r.type == "kubernetes:ray.io/v1:RayCluster"]
    assert edge.outputs["rayJobsAddress"] == "http://ray-head.app-cognition.svc.cluster.local:8265"
    assert objects(edge, "Service")["ray-head"]["spec"]["selector"] == {
        "ray.io/cluster": "ray",
        "ray.io/node-type": "head",
    }
    assert raw.parent == "ray"  # the component's child, declared after the operator (depends_on in the program)


def edge_config(key: str) -> str:
    """A key of Pulumi.edge.yaml; the image digests, which the file leaves to `pulumi config set`, as
    the plan stands them in."""
    config = yaml.safe_load((ROOT / "Pulumi.edge.yaml").read_text())["config"]
    return str(config.get(f"vllm-gb10:{key}") or stand_in_digest(key))


def test_this_stack_builds_nothing_and_pulls_pinned_images(edge: Plan) -> None:
    assert not [r for r in edge.resources if r["type"].startswith("docker-build:") or r["type"].startswith("command:")]
    images = {
        c["image"]
        for kind in ("Deployment", "StatefulSet", "Job")
        for w in objects(edge, kind).values()
        for c in pod(w)["containers"]
    }
    images |= {t["spec"]["containers"][0]["image"] for t in ray_pod_templates(edge).values()}
    ours = {i for i in images if i.rsplit("/", 1)[-1].split(":")[0] in ("vllm-gb10", "vllm-gb10-runtime")}
    # Our images come from the registry stack stella pushes to, by digest (the tag stays for readers).
    stella = yaml.safe_load((ROOT / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:registry"]
    assert edge_config("registry") == stella
    assert ours == {
        f"{stella}/vllm-gb10:0.1.0@{edge_config('vllmImageDigest')}",
        f"{stella}/vllm-gb10-runtime:0.1.0@{edge_config('runtimeImageDigest')}",
    }
    assert all(DIGEST.match(i) for i in ours), ours
    assert not [i for i in images if i.endswith(":latest") or ":" not in i.rsplit("/", 1)[-1]]


@pytest.mark.parametrize("key", ["vllmImageDigest", "runtimeImageDigest"])
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "required on kubernetes"),
        ("sha256:abc", "pattern"),
        ("0.1.0", "pattern"),
        ("sha256:" + "A" * 64, "pattern"),
        ("sha256:" + "0" * 64, "the all-zero digest is a placeholder, not an image"),
    ],
)
def test_image_digests_are_required_and_must_be_sha256(key: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_plan("edge", overrides={key: value})
    assert f"Pulumi.edge.yaml: vllm-gb10:{key}" in str(error.value) and words in str(error.value)


def test_every_container_has_requests_limits_and_a_restarting_owner(edge: Plan) -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in objects(edge, kind).items():
            for container in pod(workload)["containers"] + pod(workload).get("initContainers", []):
                assert {"memory", "cpu"} <= set(container["resources"]["requests"]), name
                assert "memory" in container["resources"]["limits"], name
            assert pod(workload)["restartPolicy"] == "Always", name
    for name, job in objects(edge, "Job").items():
        assert pod(job)["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1, name


def test_the_policy_pack_passes_the_edge_stack(edge: Plan) -> None:
    assert edge.violations == []


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (
            {"hosts": json.dumps([{"name": "box", "address": "10.0.0.1", "hostKey": HOST_KEY, "roles": ["gpu"]}])},
            "hosts",
            "remove hosts",
        ),
        ({"parallelism": "tensor"}, "parallelism", "one vLLM replica"),
        ({"namespace": "App_Cognition"}, "namespace", "pattern"),
    ],
)
def test_bad_edge_config_fails_naming_the_key(overrides: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_plan("edge", overrides=overrides)
    assert f"Pulumi.edge.yaml: vllm-gb10:{key}" in str(error.value) and words in str(error.value)


def test_node_label_and_namespace_come_from_config() -> None:
    plan = build_plan(
        "edge",
        overrides={"gpuNodeLabelKey": "nvidia.com/gpu.product", "gpuNodeLabelValue": "NVIDIA-GB10", "namespace": "lab"},
    )
    terms = pod(objects(plan, "Deployment")["vllm-gb10"])["affinity"]["nodeAffinity"]
    expression = terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (expression["key"], expression["values"]) == ("nvidia.com/gpu.product", ["NVIDIA-GB10"])
    assert (
        plan.outputs["redisUrl"] == MASK
        and plan.outputs["rayClientAddress"] == "ray://ray-head.lab.svc.cluster.local:10001"
    )
    assert {m["metadata"].get("namespace") for m in manifests(plan).values()} == {"lab", None}


def _containers(plan: Plan) -> dict[str, dict]:
    """Every long-running container of the stack by pod name, RayCluster groups included."""
    kinds = ("Deployment", "StatefulSet")
    found = {n: pod(w)["containers"][0] for kind in kinds for n, w in objects(plan, kind).items()}
    found.update({f"ray-{g}": t["spec"]["containers"][0] for g, t in ray_pod_templates(plan).items()})
    return found


def test_start_up_probes_give_slow_starts_minutes_not_one_try(edge: Plan) -> None:
    """A Redis replaying its AOF, a MinIO scanning its drive: a start-up probe that fails once restarts
    them forever (issue 15, item 3). Every start-up probe allows at least five minutes."""
    short = {
        name: (c["startupProbe"]["failureThreshold"], c["startupProbe"]["periodSeconds"])
        for name, c in _containers(edge).items()
        if "startupProbe" in c
        and (
            c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] < 300
            or c["startupProbe"]["failureThreshold"] < c["livenessProbe"]["failureThreshold"]
        )
    }
    assert short == {}
    assert {"redis", "minio", "postgres"} <= {n for n, c in _containers(edge).items() if "startupProbe" in c}


def test_the_raycluster_requires_ray_token_auth_from_a_generated_secret(edge: Plan) -> None:
    (cluster,) = objects(edge, "RayCluster").values()
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
    secret = objects(edge, "Secret")["ray-auth-token"]
    assert secret["stringData"] == {"auth_token": MASK}  # KubeRay's key; the value is a secret in state
    for group in (cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]):
        (container,) = group["template"]["spec"]["containers"]
        names = {e["name"] for e in container.get("env", [])}
        assert "OFFLOAD_DSN" in names  # the offload job's DSN from the node, never from a job's runtime_env
        assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, "KubeRay sets these from authOptions"
    assert "rayAuthToken" in edge.recording.secret_outputs


def test_a_changed_config_file_rolls_out_exactly_the_workloads_that_mount_it(edge: Plan) -> None:
    """A ConfigMap change alone restarts nothing: the files' digest in the pod template does."""

    def annotations(plan: Plan) -> dict[str, dict]:
        return {
            name: w["spec"]["template"]["metadata"].get("annotations", {})
            for kind in ("Deployment", "StatefulSet")
            for name, w in objects(plan, kind).items()
        }

    before = annotations(edge)
    assert {name for name, a in before.items() if a} == {"lb", "prometheus", "grafana"}  # the ones with files
    after = annotations(build_plan("edge", overrides={"lbBalanceFactor": "175"}))
    assert {name for name in before if before[name] != after[name]} == {"lb"}


def test_users_load_balancer_keys_live_on_a_volume_shared_with_the_key_manager_sidecar(edge: Plan) -> None:
    """Per-user keys on edge as on compose: the map and HAProxy's admin socket on one volume, which the
    sidecar `keys` (runtime image, HAProxy's uid) seeds before HAProxy starts and `kubectl exec` uses."""
    from infra.components.load_balancer import HAPROXY_UID
    from runtime import lbkeys

    deployment = objects(edge, "Deployment")["lb"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "one pod at a time on a ReadWriteOnce claim"
    spec = pod(deployment)
    haproxy, keys = spec["containers"]
    (init,) = spec["initContainers"]
    assert keys["image"] == init["image"] and re.search(r"/vllm-gb10-runtime:[^@]+@sha256:", keys["image"])
    assert keys["command"] == ["python", "-m", "runtime.lbkeys", "hold"]
    assert init["command"] == ["python", "-m", "runtime.lbkeys", "init"]
    assert keys["livenessProbe"]["exec"]["command"] == ["python", "-m", "runtime.lbkeys", "list"]
    claim = {v["name"]: v for v in spec["volumes"]}["lb-keys"]["persistentVolumeClaim"]["claimName"]
    assert claim in objects(edge, "PersistentVolumeClaim")
    haproxy_dir = {m["name"]: m["mountPath"] for m in haproxy["volumeMounts"]}["lb-keys"]
    for container in (keys, init):  # the CLI's default --dir, so `kubectl exec … -c keys -- … create NAME` needs none
        assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {"lb-keys": lbkeys.DEFAULT_DIR}
    # The map and socket haproxy.cfg names are on the shared volume, where the CLI's defaults point.
    cfg = yaml.safe_load(edge.files["k8s/configmap-lb-files.yaml"])["data"]["haproxy.cfg"]
    assert lbkeys.HAPROXY_MAP_PATH == f"{haproxy_dir}/{lbkeys.MAP_FILE}"
    assert f"map({lbkeys.HAPROXY_MAP_PATH})" in cfg
    assert f"stats socket {haproxy_dir}/{lbkeys.SOCKET_FILE} " in cfg
    # One uid for both, so the sidecar may use the socket HAProxy makes (mode 0600) and write the map.
    assert spec["securityContext"] == {
        "runAsUser": HAPROXY_UID, "runAsGroup": HAPROXY_UID, "fsGroup": HAPROXY_UID, "runAsNonRoot": True
    }  # fmt: skip


def test_only_vllms_clients_reach_its_api_port(edge: Plan) -> None:
    """Issue 32: vLLM's key guards only /v1 (/invocations reaches the chat handler, /tokenize, /metrics
    and /scale_elastic_ep are open), so its API port admits the pods of its clients only; every other
    port stays open (a vLLM leader pod is also a Ray node). Each admitted name labels a real pod."""
    from infra.program import VLLM_CLIENTS

    (policy,) = [p for p in objects(edge, "NetworkPolicy").values() if p["metadata"]["name"].startswith("vllm-")]
    validate(policy)
    vllm = objects(edge, "Deployment")[policy["metadata"]["name"]]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= vllm["spec"]["template"]["metadata"]["labels"].items()
    api_port = vllm["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    guarded, others = policy["spec"]["ingress"]
    assert guarded["ports"] == [{"port": api_port, "protocol": "TCP"}]
    admitted = {s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in guarded["from"]}
    assert admitted == set(VLLM_CLIENTS)
    pods = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for kind in ("Deployment", "StatefulSet", "Job")
        for w in objects(edge, kind).values()
    }
    assert admitted <= pods, f"admitted names without a pod: {admitted - pods}"
    assert "from" not in others  # any source, on every port but the API port
    tcp = [(r["port"], r["endPort"]) for r in others["ports"] if r["protocol"] == "TCP"]
    assert tcp == [(1, api_port - 1), (api_port + 1, 65535)]
    assert {"protocol": "UDP", "port": 1, "endPort": 65535} in others["ports"]


def test_a_network_policy_guards_each_of_several_ports() -> None:
    from infra.render.kubernetes import network_policy_spec
    from infra.services import Port, ServiceSpec

    spec = ServiceSpec("vllm-a", "img", "a", ports=(Port(8001, 8001), Port(8000, 8000)), admitted=("lb",))
    guarded, others = network_policy_spec(spec)["ingress"]
    assert [p["port"] for p in guarded["ports"]] == [8000, 8001]
    tcp = [(r["port"], r["endPort"]) for r in others["ports"] if r["protocol"] == "TCP"]
    assert tcp == [(1, 7999), (8002, 65535)]
    with pytest.raises(ValueError, match="service vllm-a: a network policy needs admitted services and ports"):
        network_policy_spec(ServiceSpec("vllm-a", "img", "a", admitted=("lb",)))
