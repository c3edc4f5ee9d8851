"""Every CrossGuard rule: a resource that passes and one that violates, built with the SDK's args."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)

from infra.plan.policy_check import resource_options
from policies.rules import POLICIES, default_config

ROOT = Path(__file__).resolve().parents[2]
BY_NAME = {p.name: p for p in POLICIES}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZCdjWjVb9EHw8Qr0tp4/Y5r7rwUVz3cO333wUBrp4B"
COPY = "command:remote:CopyToRemote"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def good_service(**changes: Any) -> dict:
    service = {
        "image": "redis:7.4.6-bookworm",
        "command": [
            "sh",
            "-c",
            "exec redis-server --appendonly yes --sanitize-dump-payload yes --maxmemory 3221225472 "
            '--maxmemory-policy noeviction --requirepass "$$REDIS_PASSWORD"',
        ],
        "environment": {"REDIS_PASSWORD": "${REDIS_PASSWORD:?missing}"},
        "ports": ["10.0.0.1:6379:6379"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"]},
        "restart": "unless-stopped",
        "deploy": {"resources": {"limits": {"memory": "4g"}}},
    }
    service.update(changes)
    return {key: value for key, value in service.items() if value is not None}


def compose(services: dict[str, dict], host: str = "10.0.0.1", cluster_address: str | None = None) -> dict:
    document: dict[str, Any] = {"name": "vllm-gb10-stella", "services": services}
    if cluster_address is not None:
        document["x-vllm-gb10"] = {"host": "stella", "clusterAddress": cluster_address}
    return {
        "remotePath": "/opt/vllm-gb10/stella/docker-compose.yml",
        "source": pulumi.StringAsset(yaml.safe_dump(document)),
        "connection": {"host": host, "hostKey": HOST_KEY},
    }


def host_network(command: list[str], **changes: Any) -> dict:
    """A service as the compose platform renders it: on the host network, binding on its command line."""
    return good_service(network_mode="host", ports=None, command=command, **changes)


def deployment(container: dict, **pod: Any) -> dict:
    return {"metadata": {"name": "app"}, "spec": {"template": {"spec": {"containers": [container], **pod}}}}


def violations(policy: str, resource_type: str, props: dict, **config: Any) -> list[str]:
    found: list[str] = []
    args = ResourceValidationArgs(
        resource_type,
        props,
        f"urn:{resource_type}::r",
        "r",
        resource_options(),
        None,
        {**default_config()[policy], **config},
    )

    def report(message: str, urn: str | None = None) -> None:
        assert isinstance(message, str) and message, f"{policy} reported {message!r}: a violation must say what"
        found.append(message)

    BY_NAME[policy].validate(args, report)
    return found


def stack_violations(policy: str, resources: list[tuple[str, dict]], **config: Any) -> list[str]:
    """`<name of the resource reported>: <message>` for each violation of a stack policy."""
    found: list[str] = []
    items = [
        PolicyResource(t, props, f"urn:{t}::r{i}", f"r{i}", resource_options(), None, None, [], {})
        for i, (t, props) in enumerate(resources)
    ]
    args = StackValidationArgs(items, {**default_config()[policy], **config})

    def report(message: str, urn: str | None = None) -> None:
        assert isinstance(message, str) and message, f"{policy} reported {message!r}: a violation must say what"
        found.append(f"{urn.split('::')[-1] if urn else 'stack'}: {message}")

    BY_NAME[policy].validate(args, report)
    return found


def vllm_service(*flags: str) -> dict:
    command = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m", *flags]
    return good_service(image="reg:5000/vllm-gb10:0.1.0@sha256:" + "0" * 64, command=command, environment=None)


# --- images-pinned


def test_images_pinned() -> None:
    assert violations("images-pinned", COPY, compose({"redis": good_service()})) == []
    digest = good_service(image="reg/vllm@sha256:" + "a" * 64)
    assert violations("images-pinned", COPY, compose({"vllm": digest})) == []
    for image in ("redis", "redis:latest", "registry.lan:5000/vllm"):
        assert violations("images-pinned", COPY, compose({"x": good_service(image=image)})), image
    assert violations("images-pinned", "docker-build:index:Image", {"tags": ["r:5000/x:latest"]})
    assert violations("images-pinned", "docker-build:index:Image", {"tags": []})
    assert violations("images-pinned", "docker-build:index:Image", {"tags": ["r:5000/x:0.1.0"]}) == []
    assert violations("images-pinned", DEPLOYMENT, deployment({"name": "c", "image": "nginx"}))


# --- no-plaintext-secrets


def test_no_plaintext_secrets() -> None:
    ok = good_service(environment={"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?x}", "S3_ACCESS_KEY_ID": "vllm"})
    assert violations("no-plaintext-secrets", COPY, compose({"db": ok})) == []
    literal = good_service(environment={"POSTGRES_PASSWORD": "hunter2"})
    assert violations("no-plaintext-secrets", COPY, compose({"db": literal}))
    url = good_service(environment={"BATCH_REDIS_URL": "redis://:hunter2@10.0.0.1:6379/0"})
    assert violations("no-plaintext-secrets", COPY, compose({"api": url}))
    requirepass = good_service(command=["redis-server", "--requirepass", "hunter2"])
    assert violations("no-plaintext-secrets", COPY, compose({"redis": requirepass}))
    from_secret = {"name": "c", "image": "x:1", "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {}}}]}
    assert violations("no-plaintext-secrets", DEPLOYMENT, deployment(from_secret)) == []
    inline = {"name": "c", "image": "x:1", "env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}
    assert violations("no-plaintext-secrets", DEPLOYMENT, deployment(inline))
    assert violations("no-plaintext-secrets", "kubernetes:core/v1:ConfigMap", {"data": {"API_KEY": "x"}})
    assert violations("no-plaintext-secrets", "docker-build:index:Image", {"buildArgs": {"HF_TOKEN": "x"}})


# --- data-services-private


def test_data_services_private() -> None:
    policy = "data-services-private"
    assert violations(policy, COPY, compose({"redis": good_service()})) == []
    for ports in (["6379:6379"], ["0.0.0.0:6379:6379"], [{"target": 6379, "published": 6379}]):
        assert violations(policy, COPY, compose({"redis": good_service(ports=ports)})), ports
    public_lb = good_service(image="haproxy:3.2.4", ports=["0.0.0.0:8080:8080"])
    assert violations(policy, COPY, compose({"lb": public_lb})) == [], "only data services are private"
    assert (
        violations(policy, COPY, compose({"redis": good_service(ports=["6379:6379"])}), allowPublicDataServices=True)
        == []
    )
    ray = good_service(image="reg/vllm-gb10:0.1.0", command=["ray", "start", "--head", "--dashboard-host=0.0.0.0"])
    assert violations(policy, COPY, compose({"ray-head": ray}))
    service = {"metadata": {"name": "redis"}, "spec": {"type": "LoadBalancer"}}
    assert violations(policy, "kubernetes:core/v1:Service", service)
    assert violations(policy, "kubernetes:core/v1:Service", {**service, "spec": {"type": "ClusterIP"}}) == []


def test_data_services_on_the_host_network_listen_on_the_cluster_address_only() -> None:
    """Nothing is published on the host network: the listen address on the command line decides."""

    def found(name: str, command: list[str], image: str = "redis:7.4.6-bookworm", **config: Any) -> list[str]:
        service = host_network(command, image=image, restart="on-failure" if name.endswith("setup") else None)
        return violations("data-services-private", COPY, compose({name: service}, cluster_address="10.0.0.1"), **config)

    def redis(address: str) -> list[str]:
        return ["sh", "-c", f'exec redis-server --bind {address} --appendonly yes --requirepass "$$P"']

    assert found("redis", redis("10.0.0.1")) == []
    for address in ("0.0.0.0", "::", "192.168.1.10"):  # every interface, or an address outside the cluster
        assert found("redis", redis(address)), address
    assert found("redis", redis("0.0.0.0"), allowPublicDataServices=True) == []
    assert found("redis", ["redis-server", "--appendonly", "yes"]), "no --bind: every interface"
    postgres, pg_image = ["postgres", "-p", "5432", "-c"], "pgvector/pgvector:0.8.1-pg17"
    assert found("postgres", [*postgres, "listen_addresses=10.0.0.1"], pg_image) == []
    assert found("postgres", [*postgres, "listen_addresses=*"], pg_image)
    minio, minio_image = ["server", "/data", "--address", "10.0.0.1:9000", "--console-address"], "minio/minio:R"
    assert found("minio", [*minio, "10.0.0.1:9001"], minio_image) == []
    assert found("minio", [*minio, ":9001"], minio_image)
    worker = ["ray", "start", "--address=10.0.0.2:6380", "--node-ip-address=10.0.0.1"]
    assert found("ray-worker", worker, "reg/vllm-gb10:0.1.0") == [], "ray's --address is the head to join"
    bucket = ["python", "-m", "runtime.batch.bucket", "--endpoint", "http://10.0.0.1:9000"]
    assert found("minio-setup", bucket, "reg/vllm-gb10-runtime:0.1.0") == [], "a one-shot listens on nothing"
    assert found("lb", ["haproxy", "-f", "/cfg"], "haproxy:3.2.4") == [], "only data services are private"


# --- gpu-on-gb10


def test_gpu_on_gb10() -> None:
    gpu = good_service(deploy={"resources": {"limits": {"memory": "100g"}, "reservations": {
        "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}})  # fmt: skip
    preflight = {"connection": {"host": "10.0.0.1"}, "create": "REQUIRE_GPU=1\nGPU_PATTERN=GB10\n..."}
    files = ("command:remote:CopyToRemote", compose({"vllm": gpu}, host="10.0.0.1"))
    assert stack_violations("gpu-on-gb10", [files, ("command:remote:Command", preflight)]) == []
    assert stack_violations("gpu-on-gb10", [files])
    other = {"connection": {"host": "10.0.0.9"}, "create": "REQUIRE_GPU=1\nGPU_PATTERN=GB10\n"}
    assert stack_violations("gpu-on-gb10", [files, ("command:remote:Command", other)])
    container = {"name": "vllm", "image": "v:1", "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "100Gi"}}}
    pinned = deployment(container, nodeSelector={"kubernetes.io/hostname": "hw-brain-01"})
    assert stack_violations("gpu-on-gb10", [(DEPLOYMENT, pinned)]) == []
    assert stack_violations("gpu-on-gb10", [(DEPLOYMENT, deployment(container))])
    expression = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["hw-brain-01"]}
    required = {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    assert stack_violations("gpu-on-gb10", [(DEPLOYMENT, deployment(container, affinity=affinity))]) == []


def test_gpu_on_gb10_names_what_it_found_and_takes_its_config() -> None:
    policy = "gpu-on-gb10"
    gpu = good_service(deploy={"resources": {"limits": {"memory": "100g"}, "reservations": {
        "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}})  # fmt: skip
    files = ("command:remote:CopyToRemote", compose({"vllm": gpu, "redis": good_service()}, host="10.0.0.1"))

    def preflight(create: str) -> tuple[str, dict]:
        return "command:remote:Command", {"connection": {"host": "10.0.0.1"}, "create": create}

    unchecked = "r0: GPU services ['vllm'] on 10.0.0.1, which no preflight checks for a GB10 GPU"
    assert stack_violations(policy, [files]) == [unchecked]
    # Half a preflight is none: a GPU not required, or required without the pattern.
    assert stack_violations(policy, [files, preflight("REQUIRE_GPU=0\nGPU_PATTERN=GB10\n")]) == [unchecked]
    assert stack_violations(policy, [files, preflight("REQUIRE_GPU=1\nGPU_PATTERN=H100\n")]) == [unchecked]
    h100 = [files, preflight("REQUIRE_GPU=1\nGPU_PATTERN=H100\n")]
    assert stack_violations(policy, h100, gpuPattern="H100") == []
    copy_to_command = [files, ("command:remote:CopyToRemote", preflight("REQUIRE_GPU=1\nGPU_PATTERN=GB10\n")[1])]
    assert stack_violations(policy, copy_to_command) == [unchecked], "only a Command runs a preflight"

    container = {"name": "vllm", "image": "v:1", "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "100Gi"}}}
    elsewhere = deployment(container, nodeSelector={"gpu": "spark"})
    assert stack_violations(policy, [(DEPLOYMENT, elsewhere)]) == [
        "r0: r0: GPU pod not pinned to the GB10 node (kubernetes.io/hostname in ['hw-brain-01'])"
    ]
    assert stack_violations(policy, [(DEPLOYMENT, elsewhere)], nodeLabelKey="gpu", nodeLabelValues=["spark"]) == []
    expression = {"key": "gpu", "operator": "In", "values": ["other", "spark"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expression]}]}}}  # fmt: skip
    by_affinity = deployment(container, affinity=affinity)
    assert stack_violations(policy, [(DEPLOYMENT, by_affinity)], nodeLabelKey="gpu", nodeLabelValues=["spark"]) == []
    not_in = deployment(container, affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{**expression, "operator": "NotIn"}]}]}}})  # fmt: skip
    assert stack_violations(policy, [(DEPLOYMENT, not_in)], nodeLabelKey="gpu", nodeLabelValues=["spark"])
    cpu_only = deployment({"name": "c", "image": "x:1", "resources": {"limits": {"memory": "1Gi"}}})
    assert stack_violations(policy, [(DEPLOYMENT, cpu_only)]) == []


def test_a_policy_without_its_config_fails_by_name_not_with_a_default_of_its_own() -> None:
    """The engine fills each key's schema default (default_config): a rule has no second default."""
    args = StackValidationArgs([], {"nodeLabelKey": "k", "nodeLabelValues": []})
    with pytest.raises(KeyError, match="gpuPattern"):
        BY_NAME["gpu-on-gb10"].validate(args, lambda message, urn=None: None)


# --- vllm-memory-utilization


def test_vllm_memory_utilization() -> None:
    policy = "vllm-memory-utilization"
    assert violations(policy, COPY, compose({"vllm": vllm_service("--gpu-memory-utilization", "0.85")})) == []
    assert violations(policy, COPY, compose({"vllm": vllm_service("--gpu-memory-utilization", "0.90")}))
    assert violations(policy, COPY, compose({"vllm": vllm_service()}))
    swap = vllm_service("--gpu-memory-utilization", "0.8", "--swap-space", "16")
    assert violations(policy, COPY, compose({"vllm": swap})) == [
        "vllm: --swap-space does nothing in vLLM's V1 engine; size the KV cache instead"
    ]
    relaxed = compose({"vllm": vllm_service("--gpu-memory-utilization", "0.90")})
    assert violations(policy, COPY, relaxed, maxGpuMemoryUtilization=0.9) == []


# --- ssh-host-key-pinned


def test_ssh_host_key_pinned() -> None:
    pinned = {"connection": {"host": "stella.lan", "hostKey": HOST_KEY}, "create": "true"}
    assert violations("ssh-host-key-pinned", "command:remote:Command", pinned) == []
    unpinned = {"connection": {"host": "stella.lan"}, "create": "true"}
    assert violations("ssh-host-key-pinned", "command:remote:Command", unpinned)


# --- memory-limits


def test_memory_limits() -> None:
    assert violations("memory-limits", COPY, compose({"redis": good_service()})) == []
    assert violations("memory-limits", COPY, compose({"redis": good_service(deploy={})}))
    assert violations("memory-limits", DEPLOYMENT, deployment({"name": "c", "image": "x:1"}))
    limited = {"name": "c", "image": "x:1", "resources": {"limits": {"memory": "1Gi"}}}
    assert violations("memory-limits", DEPLOYMENT, deployment(limited)) == []


# --- redis-persistence


def test_redis_persistence() -> None:
    assert violations("redis-persistence", COPY, compose({"redis": good_service()})) == []
    for command in (
        ["redis-server", "--save", ""],
        ["redis-server", "--appendonly", "no"],
        ["sh", "-c", "exec redis-server --appendonly yes --port 6379 --appendonly no"],  # the last one counts
    ):
        volatile = good_service(command=command)
        assert violations("redis-persistence", COPY, compose({"redis": volatile})), command
    quoted = good_service(command=["sh", "-c", "exec redis-server --appendonly 'yes'"])
    assert violations("redis-persistence", COPY, compose({"redis": quoted})) == []


# --- redis-hardened


def test_redis_hardened() -> None:
    assert violations("redis-hardened", COPY, compose({"redis": good_service()})) == []
    base = "exec redis-server --appendonly yes"
    for command, missing in (
        (base + " --maxmemory 1gb --maxmemory-policy noeviction", "--sanitize-dump-payload yes"),
        (base + " --sanitize-dump-payload yes --maxmemory-policy noeviction", "no --maxmemory"),
        (base + " --sanitize-dump-payload yes --maxmemory 0 --maxmemory-policy noeviction", "no --maxmemory"),
        (base + " --sanitize-dump-payload yes --maxmemory 1gb", "--maxmemory-policy noeviction"),
        (base + " --sanitize-dump-payload yes --maxmemory 1gb --maxmemory-policy allkeys-lru", "noeviction"),
        # the last of a repeated option counts
        (base + " --sanitize-dump-payload yes --maxmemory 1gb --maxmemory-policy noeviction --sanitize-dump-payload no",
         "--sanitize-dump-payload yes"),
    ):  # fmt: skip
        found = violations("redis-hardened", COPY, compose({"redis": good_service(command=["sh", "-c", command])}))
        assert len(found) == 1 and missing in found[0], (command, found)
    quoted = "exec redis-server --sanitize-dump-payload 'yes' --maxmemory '3gb' --maxmemory-policy \"noeviction\""
    assert violations("redis-hardened", COPY, compose({"redis": good_service(command=["sh", "-c", quoted])})) == []
    other = good_service(image="reg/web:1.0", command=["web"])  # not Redis: not judged
    assert violations("redis-hardened", COPY, compose({"web": other})) == []


# --- advisory


def _minio_pair(days: int | None, mc: bool = False) -> dict:
    if mc:
        command = [f"mc ilm rule add --expire-days {days} store/batch"] if days else ["true"]
        image = "minio/mc:RELEASE.2025-08-13T08-35-41Z"
    else:  # our runtime image's set-up job
        command = ["python", "-m", "runtime.batch.bucket", "--bucket", "batch"]
        command += ["--expire-days", str(days)] if days else []
        image = "reg/vllm-gb10-runtime:0.1.0"
    setup = good_service(image=image, restart="on-failure", healthcheck=None, command=command)
    return compose({"minio": good_service(image="minio/minio:RELEASE.2025-09-07T16-13-09Z"), "minio-setup": setup})


def _batch_stack(setup_args: list[str], bucket: str = "batch", endpoint: str = "http://10.0.0.1:9000") -> dict:
    setup = good_service(
        image="reg/vllm-gb10-runtime:0.1.0",
        restart="on-failure",
        healthcheck=None,
        command=["python", "-m", "runtime.batch.bucket", *setup_args],
    )
    api = good_service(
        image="reg/vllm-gb10-runtime:0.1.0",
        command=["python", "-m", "runtime.batch.api"],
        environment={"BATCH_S3_BUCKET": bucket, "BATCH_S3_ENDPOINT_URL": endpoint},
    )
    server = good_service(image="rustfs/rustfs:1.0.0")
    return compose({"rustfs": server, "minio-setup": setup, "batch-api": api})


def test_result_lifecycle_is_judged_on_the_bucket_the_results_go_to() -> None:
    right = ["--endpoint", "http://10.0.0.1:9000", "--bucket", "batch", "--expire-days", "7"]
    assert stack_violations("result-lifecycle", [(COPY, _batch_stack(right))]) == []
    assert stack_violations("result-lifecycle", [(COPY, _batch_stack(right, bucket="results"))]) == [
        "stack: batch results go to bucket 'results' at http://10.0.0.1:9000, which no set-up gives a lifecycle rule "
        "(set-ups: 'batch' at http://10.0.0.1:9000)"
    ]
    other_server = stack_violations("result-lifecycle", [(COPY, _batch_stack(right, endpoint="http://10.0.0.2:9000"))])
    assert len(other_server) == 1 and "at http://10.0.0.2:9000, which no set-up" in other_server[0]
    no_rule = stack_violations("result-lifecycle", [(COPY, _batch_stack(right[:4]))])
    assert (
        no_rule[0]
        == "stack: minio-setup: the bucket set-up puts no lifecycle rule (--expire-days): batch results never expire"
    )
    assert stack_violations("result-lifecycle", [(COPY, _batch_stack([*right[:4], "--expire-days=30"]))])[0] == (
        "stack: minio-setup: S3 results expire after 30 days, more than 7"
    )


def _scoped_stack(batch_key: str | None, backup_key: str | None = "vllm-gb10-backup", made: bool = True) -> dict:
    """A RustFS with its root user, the bucket set-up (making the scoped users unless not `made`), the API."""
    command = ["python", "-m", "runtime.batch.bucket", "--endpoint", "http://10.0.0.1:9000", "--bucket", "batch"]
    command += ["--batch-user", "vllm-gb10-batch", "--backup-user", "vllm-gb10-backup"] if made else []
    setup = good_service(image="reg/vllm-gb10-runtime:0.1.0", restart="on-failure", healthcheck=None, command=command)
    env = {"BATCH_S3_BUCKET": "batch", "BATCH_S3_ENDPOINT_URL": "http://10.0.0.1:9000"}
    env |= {
        k: v for k, v in (("BATCH_S3_ACCESS_KEY_ID", batch_key), ("BATCH_BACKUP_S3_ACCESS_KEY_ID", backup_key)) if v
    }
    api = good_service(
        image="reg/vllm-gb10-runtime:0.1.0", command=["python", "-m", "runtime.batch.api"], environment=env
    )
    root = {"RUSTFS_ACCESS_KEY": "vllm-gb10", "RUSTFS_SECRET_KEY": "${RUSTFS_SECRET_KEY:?missing}"}
    server = good_service(image="rustfs/rustfs:1.0.0", environment=root)
    return compose({"rustfs": server, "minio-setup": setup, "batch-api": api})


def test_s3_scoped_credentials() -> None:
    policy = "s3-scoped-credentials"
    assert stack_violations("s3-scoped-credentials", [(COPY, _scoped_stack("vllm-gb10-batch"))]) == []
    assert stack_violations(policy, [(COPY, _scoped_stack("vllm-gb10-batch", backup_key=None))]) == []
    assert stack_violations(policy, [(COPY, _scoped_stack("vllm-gb10"))]) == [
        "stack: batch-api: BATCH_S3_ACCESS_KEY_ID is the S3 server's root user (vllm-gb10), not a bucket-scoped one"
    ]
    assert stack_violations(policy, [(COPY, _scoped_stack("vllm-gb10-batch", backup_key="vllm-gb10"))]) == [
        "stack: batch-api: BATCH_BACKUP_S3_ACCESS_KEY_ID is the S3 server's root user (vllm-gb10), "
        "not a bucket-scoped one"
    ]
    assert stack_violations(policy, [(COPY, _scoped_stack(None))]) == [
        "stack: batch-api: no BATCH_S3_ACCESS_KEY_ID: it cannot be told apart from the S3 server's root user"
    ]
    assert stack_violations(policy, [(COPY, _scoped_stack("vllm-gb10-batch", made=False))])[0] == (
        "stack: batch-api: BATCH_S3_ACCESS_KEY_ID 'vllm-gb10-batch' is no user a bucket set-up of 'batch' at "
        "http://10.0.0.1:9000 makes (--batch-user/--backup-user; made: none)"
    )


@pytest.mark.parametrize("mc", [False, True])
def test_result_lifecycle(mc: bool) -> None:
    assert stack_violations("result-lifecycle", [(COPY, _minio_pair(7, mc))]) == []
    assert stack_violations("result-lifecycle", [(COPY, _minio_pair(30, mc))])
    assert stack_violations("result-lifecycle", [(COPY, _minio_pair(None, mc))])
    assert stack_violations("result-lifecycle", [(COPY, _minio_pair(30, mc))], maxDays=30) == []


def test_health_checks() -> None:
    assert violations("health-checks", COPY, compose({"redis": good_service()})) == []
    assert violations("health-checks", COPY, compose({"redis": good_service(healthcheck=None)}))
    job = good_service(healthcheck=None, restart="on-failure")
    assert violations("health-checks", COPY, compose({"setup": job})) == [], "one-shot jobs need none"
    probed = {"name": "lb", "image": "haproxy", "livenessProbe": {"httpGet": {"path": "/", "port": 1}}}
    init = {"name": "keys-init", "image": "runtime", "command": ["python", "-m", "runtime.lbkeys", "init"]}
    # Kubernetes allows an init container no probes: it runs to completion before the pod starts.
    assert violations("health-checks", DEPLOYMENT, deployment(probed, initContainers=[init])) == []
    sidecar = {"name": "keys", "image": "runtime", "command": ["sleep", "infinity"]}
    unprobed_pod = deployment(probed)
    unprobed_pod["spec"]["template"]["spec"]["containers"].append(sidecar)
    assert violations("health-checks", DEPLOYMENT, unprobed_pod) == ["r/keys: no health check"]


def test_restart_policies() -> None:
    assert violations("restart-policies", COPY, compose({"redis": good_service()})) == []
    assert violations("restart-policies", COPY, compose({"redis": good_service(restart="no")}))


def ray_node(**env: str) -> dict:
    return host_network(
        ["ray", "start", "--address=10.0.0.1:6380", "--node-ip-address=10.0.0.1", "--block"],
        image="registry.lan:5000/vllm-gb10:0.1.0",
        environment=env,
    )


def test_ray_token_auth() -> None:
    secured = ray_node(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="${RAY_AUTH_TOKEN:?missing}")
    assert violations("ray-token-auth", COPY, compose({"ray-worker": secured})) == []
    assert violations("ray-token-auth", COPY, compose({"redis": good_service()})) == [], "not a Ray node"
    assert violations("ray-token-auth", COPY, compose({"ray-worker": ray_node()})) == [
        "ray-worker: a Ray node without RAY_AUTH_MODE=token runs code for anyone on the network",
        "ray-worker: RAY_AUTH_TOKEN must come from the secrets file (${RAY_AUTH_TOKEN:?…})",
    ]
    literal = ray_node(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="abc123")
    assert violations("ray-token-auth", COPY, compose({"ray-worker": literal})) == [
        "ray-worker: RAY_AUTH_TOKEN must come from the secrets file (${RAY_AUTH_TOKEN:?…})"
    ]
    cluster = {"spec": {"authOptions": {"mode": "token"}, "headGroupSpec": {}}}
    assert violations("ray-token-auth", "kubernetes:ray.io/v1:RayCluster", cluster) == []
    assert violations("ray-token-auth", "kubernetes:ray.io/v1:RayCluster", {"spec": {"headGroupSpec": {}}}) == [
        "RayCluster r: spec.authOptions.mode is None, not 'token' (KubeRay 1.5.1+)"
    ]


def test_public_endpoints_tls() -> None:
    policy = "public-endpoints-tls"
    cfg = "frontend openai\n    bind 0.0.0.0:8080{tls}\n\nfrontend stats\n    bind 10.0.0.1:8404\n"

    def haproxy(tls: str) -> dict:
        return {"remotePath": "/opt/vllm-gb10/stella/haproxy.cfg", "source": pulumi.StringAsset(cfg.format(tls=tls))}

    assert violations(policy, COPY, haproxy(" ssl crt /tmp/tls/server.pem alpn h2,http/1.1")) == []
    assert violations(policy, COPY, haproxy("")) == [
        "/opt/vllm-gb10/stella/haproxy.cfg: frontend openai `bind 0.0.0.0:8080` serves clients without TLS"
    ]
    api = host_network(["python", "-m", "runtime.batch.api", "--host", "0.0.0.0"], environment=None)
    grafana = good_service(image="grafana/grafana:13.2.3", command=None, environment={"GF_SERVER_PROTOCOL": "https"})
    secured = {**api, "environment": {"TLS_CERT_PEM_B64": "${TLS_CERT_PEM_B64:?missing}"}}
    assert violations(policy, COPY, compose({"batch-api": secured, "grafana": grafana})) == []
    plain_grafana = {**grafana, "environment": {}}
    assert violations(policy, COPY, compose({"batch-api": api, "grafana": plain_grafana})) == [
        "batch-api: the batch API gets no certificate (TLS_CERT_PEM_B64) and serves plain HTTP",
        "grafana: Grafana serves plain HTTP (GF_SERVER_PROTOCOL is not https)",
    ]
    ingress = "kubernetes:networking.k8s.io/v1:Ingress"
    rules = [{"host": "lb.lan"}, {"host": "grafana.lan"}]
    covered = {"spec": {"rules": rules, "tls": [{"hosts": ["lb.lan", "grafana.lan"], "secretName": "public-tls"}]}}
    assert violations(policy, ingress, covered) == []
    partial = {"spec": {"rules": rules, "tls": [{"hosts": ["lb.lan"], "secretName": "public-tls"}]}}
    assert violations(policy, ingress, partial) == ["Ingress r: host 'grafana.lan' is served without TLS (spec.tls)"]


@pytest.mark.parametrize(
    ("arg", "what"),
    [
        ("--api-key=abc", "--api-key is given a literal key"),
        ("hf_" + "Ab1" * 10, "a Hugging Face token"),
        ("sk-" + "z" * 20, "an API key (sk-…)"),
    ],
)
def test_no_secret_literals_on_command_lines(arg: str, what: str) -> None:
    vllm = host_network(["python3", "-m", "vllm.entrypoints.openai.api_server", "--host", "10.0.0.1", arg])
    assert violations("no-plaintext-secrets", COPY, compose({"vllm": vllm})) == [
        f"vllm: its command line holds {what}; pass secrets through the secrets file or a Secret"
    ]
    fine = host_network(["python3", "-m", "vllm.entrypoints.openai.api_server", "--api-key", "$VLLM_API_KEY"])
    assert violations("no-plaintext-secrets", COPY, compose({"vllm": fine})) == []


def test_every_policy_is_tested_and_levels_are_as_the_issue_says() -> None:
    # Read from this module's source, so the check holds whatever ran before it (alone, or with -k).
    source = Path(__file__).read_text()
    tested = set(re.findall(r"(?:violations\(\s*|policy = )\"([\w-]+)\"", source))
    assert tested == set(BY_NAME), f"policies no test calls: {set(BY_NAME) - tested}"
    advisory = {p.name for p in POLICIES if p.enforcement_level == EnforcementLevel.ADVISORY}
    assert advisory == {"result-lifecycle", "health-checks", "restart-policies"}
    tunable = {p.name for p in POLICIES if p.config_schema}
    assert {"data-services-private", "vllm-memory-utilization", "result-lifecycle", "gpu-on-gb10"} <= tunable
    stack_wide = {"gpu-on-gb10", "result-lifecycle", "s3-scoped-credentials"}
    assert all(isinstance(p, ResourceValidationPolicy) for p in POLICIES if p.name not in stack_wide)


def test_policy_pack_requirements_match_the_lock() -> None:
    lock = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    images = ("requirements-runtime.txt", "requirements-offload.txt")
    for name in ("policies/requirements.txt", "requirements.txt", *images):
        for line in (ROOT / name).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                package, version = line.split("==")
                package = package.split("[")[0]  # ray[default] pins ray
                assert lock[package.lower().replace("_", "-")] == version, f"{name}: {line}"


def test_rules_module_builds_no_policy_pack() -> None:
    source = (ROOT / "policies" / "rules.py").read_text()
    assert "PolicyPack(" not in source.replace("`PolicyPack`", "")
    assert "PolicyPack(" in (ROOT / "policies" / "__main__.py").read_text()


def test_default_config_is_a_fresh_copy() -> None:
    """A caller that changes what it got (the plan CLI applies a stack's policy config) changes no one else's."""
    first = default_config()
    first["result-lifecycle"]["maxDays"] = 1  # the returned object itself, not a copy of it
    first["data-services-private"].clear()
    again = default_config()
    assert again["result-lifecycle"]["maxDays"] == 7
    assert again["data-services-private"] == {"allowPublicDataServices": False}


# --- least-privilege


def test_least_privilege_allows_only_nccls_rdma_devices_and_ipc_lock() -> None:
    rdma = good_service(devices=["/dev/infiniband:/dev/infiniband"], ulimits={"memlock": -1}, cap_add=["IPC_LOCK"])
    assert violations("least-privilege", COPY, compose({"vllm": rdma, "redis": good_service()})) == []
    cases = [
        (good_service(privileged=True), "x: runs privileged (every device and capability of the host); map what"),
        (good_service(cap_add=["SYS_ADMIN"]), "x: adds capability SYS_ADMIN; only IPC_LOCK, with the RDMA devices"),
        (good_service(cap_add=["IPC_LOCK"]), "x: adds IPC_LOCK without the RDMA devices it is for (/dev/infiniband)"),
        (good_service(devices=["/dev/mem:/dev/mem"]), "x: maps host device /dev/mem; only the RDMA devices"),
    ]
    for service, words in cases:
        (found,) = violations("least-privilege", COPY, compose({"x": service}))
        assert found.startswith(words), found
    pod = deployment({"name": "c", "image": "x:1", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}})
    assert violations("least-privilege", DEPLOYMENT, pod) == [
        "r/c: adds capability NET_ADMIN; only IPC_LOCK, with the RDMA devices"
    ]


# --- docker-socket


def guard_service(**changes: Any) -> dict:
    """The memory guard as the compose platform renders it (infra/components/memguard.py)."""
    service = good_service(
        image="registry.lan:5000/vllm-gb10-runtime:0.1.0",
        command=["python", "-m", "runtime.memguard"],
        environment={
            "MEMGUARD_COMPOSE_PROJECT": "vllm-gb10-stella",
            "MEMGUARD_SHED_SERVICES": '["ray-worker-stella"]',
            "MEMGUARD_REDIS_URL": "${MEMGUARD_REDIS_URL:?missing}",
        },
        volumes=["/proc:/host/proc:ro", "${VGB_DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock"],
        user="0:0",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
    )
    service.update(changes)
    return {key: value for key, value in service.items() if value is not None}


def test_docker_socket_only_the_confined_guard_sheds_its_own_projects_services() -> None:
    ray = good_service(image="registry.lan:5000/vllm-gb10:0.1.0", command=["ray", "start"])
    fine = compose({"memguard-stella": guard_service(), "ray-worker-stella": ray, "redis": good_service()})
    assert violations("docker-socket", COPY, fine) == []
    socket = ["/var/run/docker.sock:/var/run/docker.sock"]
    cases = [
        ({"x": good_service(volumes=socket)}, "x: mounts the Docker socket; only the memory guard (runtime.memguard)"),
        ({"m": guard_service(cap_drop=None), "ray-worker-stella": ray}, "m: has the Docker socket without every cap"),
        ({"m": guard_service(security_opt=None), "ray-worker-stella": ray}, "m: has the Docker socket without no new"),
        ({"m": guard_service(read_only=None), "ray-worker-stella": ray}, "m: has the Docker socket without a read"),
        (
            {"m": guard_service(environment={"MEMGUARD_COMPOSE_PROJECT": "vllm-gb10-nova",
                                             "MEMGUARD_SHED_SERVICES": "[]"})},
            "m: sheds in compose project 'vllm-gb10-nova', not its own ('vllm-gb10-stella')",
        ),
        (
            {"m": guard_service(environment={"MEMGUARD_COMPOSE_PROJECT": "vllm-gb10-stella",
                                             "MEMGUARD_SHED_SERVICES": '["redis"]'}), "redis": good_service()},
            "m: MEMGUARD_SHED_SERVICES names 'redis', a data store or the guard itself",
        ),
        (
            {"m": guard_service()},
            "m: MEMGUARD_SHED_SERVICES names 'ray-worker-stella', which is no service of this host",
        ),
    ]  # fmt: skip
    for services, words in cases:
        (found,) = violations("docker-socket", COPY, compose(services))
        assert found.startswith(words), found
    pod = deployment(
        {"name": "c", "image": "x:1", "volumeMounts": [{"name": "s", "mountPath": "/run/containerd.sock"}]},
        volumes=[{"name": "s", "hostPath": {"path": "/run/containerd/containerd.sock"}}],
    )
    assert violations("docker-socket", DEPLOYMENT, pod) == [
        "r/c: mounts the container runtime's socket (/run/containerd.sock), which is root on the node"
    ]


# --- every rule's words: which service, what is wrong, what to do


REDIS_URL = "redis://:hunter2@10.0.0.1:6379/0"
MESSAGES = [
    ("images-pinned", COPY, compose({"x": good_service(image="redis:latest")}),
     "x: image 'redis:latest' is not pinned (use a version tag or a digest, never latest)"),
    ("images-pinned", "docker-build:index:Image", {"tags": []},
     "image build has no tag: push a versioned tag, never an untagged or latest image"),
    ("images-pinned", DEPLOYMENT, deployment({"name": "c", "image": "nginx"}),
     "r/c: image 'nginx' is not pinned (use a version tag or a digest, never latest)"),
    ("no-plaintext-secrets", COPY, compose({"db": good_service(environment={"POSTGRES_PASSWORD": "hunter2"})}),
     "db: environment POSTGRES_PASSWORD holds a literal secret; take it from the secrets file or a Secret"),
    ("no-plaintext-secrets", COPY, compose({"redis": good_service(command=["redis-server", "--requirepass", "x"])}),
     "redis: --requirepass is given a literal password"),
    ("no-plaintext-secrets", COPY, compose({"api": good_service(environment={"BATCH_REDIS_URL": REDIS_URL})}),
     "api: environment BATCH_REDIS_URL holds a literal secret; take it from the secrets file or a Secret"),
    ("no-plaintext-secrets", "kubernetes:core/v1:ConfigMap", {"data": {"API_KEY": "x"}},
     "ConfigMap key API_KEY looks like a secret; use a Secret"),
    ("no-plaintext-secrets", "docker-build:index:Image", {"buildArgs": {"HF_TOKEN": "x"}},
     "build arg HF_TOKEN looks like a secret; build args stay in the image history (use secrets)"),
    ("data-services-private", COPY, compose({"redis": good_service(ports=["6379:6379"])}),
     "redis: port 6379 is published on every interface; bind it to the cluster address"),
    ("ssh-host-key-pinned", "command:remote:Command", {"connection": {"host": "stella.lan"}, "create": "true"},
     "SSH connection to stella.lan does not pin a host key (hostKey)"),
    ("memory-limits", COPY, compose({"redis": good_service(deploy={})}), "redis: no memory limit"),
    ("memory-limits", DEPLOYMENT, deployment({"name": "c", "image": "x:1"}), "r/c: no memory limit"),
    ("vllm-memory-utilization", COPY, compose({"vllm": vllm_service("--gpu-memory-utilization", "0.90")}),
     "vllm: --gpu-memory-utilization 0.90 is above 0.85 (GB10 unified memory)"),
    ("vllm-memory-utilization", COPY, compose({"vllm": vllm_service()}),
     "vllm: --gpu-memory-utilization not set; vLLM's default (0.92) runs out of memory on GB10"),
    ("redis-persistence", COPY, compose({"redis": good_service(command=["redis-server", "--appendonly", "no"])}),
     "redis: Redis runs without AOF persistence (--appendonly yes); queued jobs would be lost"),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "resource_type", "props", "message"), MESSAGES, ids=lambda v: str(v)[:40])
def test_each_violation_names_the_service_what_is_wrong_and_what_to_do(
    policy: str, resource_type: str, props: dict, message: str
) -> None:
    assert violations(policy, resource_type, props) == [message]


def test_rules_judge_every_service_and_variable_not_just_the_first() -> None:
    """A service or variable a rule skips must not end its look at the others."""
    env = {"EMPTY_PASSWORD": "", "FROM_FILE_PASSWORD": "${P:?x}", "POSTGRES_PASSWORD": "hunter2"}
    assert violations("no-plaintext-secrets", COPY, compose({"db": good_service(environment=env)})) == [
        "db: environment POSTGRES_PASSWORD holds a literal secret; take it from the secrets file or a Secret"
    ]
    web = good_service(image="reg/web:1.0", ports=["8080:8080"])  # not a data service: skipped
    redis = good_service(ports=["6379:6379"])
    assert violations("data-services-private", COPY, compose({"web": web, "redis": redis})) == [
        "redis: port 6379 is published on every interface; bind it to the cluster address"
    ]
    worker = good_service(image="reg/vllm-gb10-runtime:0.1.0", command=["python", "-m", "runtime.batch.worker"])
    head = good_service(image="reg/vllm-gb10:0.1.0", command=["ray", "start", "--head"], environment={})
    assert violations("ray-token-auth", COPY, compose({"worker": worker, "ray-head": head})) == [
        "ray-head: a Ray node without RAY_AUTH_MODE=token runs code for anyone on the network",
        "ray-head: RAY_AUTH_TOKEN must come from the secrets file (${RAY_AUTH_TOKEN:?…})",
    ]
    literal = good_service(image="reg/vllm-gb10:0.1.0", command=["ray", "start", "--head"],
                           environment={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "hunter2"})  # fmt: skip
    assert violations("ray-token-auth", COPY, compose({"ray-head": literal})) == [
        "ray-head: RAY_AUTH_TOKEN must come from the secrets file (${RAY_AUTH_TOKEN:?…})"
    ]
    public = violations("data-services-private", COPY, compose({"redis": redis}), allowPublicDataServices=True)
    assert public == [], "the stack file's exemption"


def test_lb_guards() -> None:
    """Each of issue 32's load balancer protections, taken out of the rendered config, is reported."""
    from infra.render.haproxy import Backend, LoadBalancerConfig, render_haproxy_cfg

    policy = "lb-guards"
    rendered = render_haproxy_cfg(
        LoadBalancerConfig(backends=(Backend("stella", "10.0.0.1:8000"),), tls_pem="/tmp/tls/server.pem")
    )

    def copy(text: str) -> dict:
        return {"remotePath": "/opt/vllm-gb10/stella/haproxy.cfg", "source": pulumi.StringAsset(text)}

    where = "/opt/vllm-gb10/stella/haproxy.cfg"
    assert violations(policy, COPY, copy(rendered)) == []
    configmap = "kubernetes:core/v1:ConfigMap"
    assert violations(policy, configmap, {"data": {"haproxy.cfg": rendered}}) == []
    layer7 = rendered.replace("observe layer4", "observe layer7")
    assert violations(policy, configmap, {"data": {"haproxy.cfg": layer7}}) == [
        "ConfigMap r haproxy.cfg: `observe layer7` lets a client's request that vLLM answers with 5xx "
        "mark a server down"
    ]
    buffered = rendered.replace("    retries 3\n", "    retries 3\n    option http-buffer-request\n")
    assert violations(policy, COPY, copy(buffered)) == [
        f"{where}: `option http-buffer-request` buffers a body before the API key is checked"
    ]
    open_routes = "\n".join(line for line in rendered.splitlines() if "return status 404" not in line)
    assert violations(policy, COPY, copy(open_routes)) == [
        f"{where}: no route allow-list: every path a client sends reaches vLLM with vLLM's key"
    ]
    cbc = re.sub(r"ssl-default-bind-ciphers (\S+)", r"ssl-default-bind-ciphers \1:ECDHE-RSA-AES128-SHA", rendered)
    assert violations(policy, COPY, copy(cbc)) == [
        f"{where}: TLS 1.2 offers suites other than ECDHE with AEAD: ECDHE-RSA-AES128-SHA"
    ]
    defaults = "\n".join(line for line in rendered.splitlines() if "ssl-default-bind-ciphers " not in line)
    assert violations(policy, COPY, copy(defaults)) == [
        f"{where}: TLS 1.2 offers suites other than ECDHE with AEAD: the default"
    ]
