"""Kubernetes object bodies for a ServiceSpec: pod template, workload, Service, Ingress, RayCluster.

Pure functions returning manifest-shaped dicts (values may still be Pulumi inputs); the kubernetes
platform turns them into resources. Names come from the spec, so DNS names are predictable:
`<spec.name>.<namespace>.svc.cluster.local`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from infra.services import ConfigFile, HealthCheck, ServiceSpec, Sidecar, Volume, files_digest

PART_OF = "vllm-gb10"
GPU_RESOURCE = "nvidia.com/gpu"
# pulumi-kubernetes: create the workload and go on, without waiting for it to become ready (its docs,
# "pulumi.com/skipAwait"); for an optional (observability-only) service that may not run on every box.
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
DEFAULT_CPU_REQUEST = "250m"
# Least time a start-up probe allows before the kubelet restarts the container: a Redis replaying
# its AOF or a MinIO scanning its drive takes minutes, and a start-up probe that fails once would
# restart it forever. Passing start-up probes cost nothing, so the budget is generous.
MIN_STARTUP_BUDGET_S = 300


@dataclass(frozen=True)
class ClusterPlacement:
    """Where GPU pods go: the GB10 node's label, and the pull secret for the registry, if any."""

    namespace: str
    gpu_label_key: str
    gpu_label_value: str
    storage_class: str = ""
    image_pull_secret: str = ""


def quantity(size: str) -> str:
    """Docker-style sizes (`4g`, `512m`) as Kubernetes binary quantities (`4Gi`, `512Mi`)."""
    found = re.fullmatch(r"(\d+)([kmg])", size.strip().lower())
    if found is None:
        raise ValueError(f"size {size!r} is not like 4g or 512m")
    return f"{found[1]}{ {'k': 'Ki', 'm': 'Mi', 'g': 'Gi'}[found[2]] }"


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def metadata(name: str, placement: ClusterPlacement) -> dict[str, Any]:
    return {"name": name, "namespace": placement.namespace, "labels": labels(name)}


def secret_name(spec: ServiceSpec) -> str:
    return f"{spec.name}-env"


def files_name(spec: ServiceSpec) -> str:
    return f"{spec.name}-files"


def claim_name(spec: ServiceSpec, volume: Volume) -> str:
    return f"{spec.name}-{volume.name}"


def gpu_affinity(placement: ClusterPlacement) -> dict[str, Any]:
    term = {"key": placement.gpu_label_key, "operator": "In", "values": [placement.gpu_label_value]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
        }
    }


def probe(check: HealthCheck, *, failure_threshold: int | None = None) -> dict[str, Any]:
    action: dict[str, Any]
    if check.http_path is not None and check.http_port is not None:
        action = {"httpGet": {"path": check.http_path, "port": check.http_port}}
    else:
        action = {"exec": {"command": list(check.command)}}
    return {
        **action,
        "periodSeconds": check.interval_s,
        "timeoutSeconds": check.timeout_s,
        "failureThreshold": failure_threshold or check.retries,
    }


def startup_failure_threshold(check: HealthCheck) -> int:
    """Failures the start-up probe tolerates: the spec's start period, at least MIN_STARTUP_BUDGET_S,
    plus the retries a running service gets."""
    budget = max(check.start_period_s, MIN_STARTUP_BUDGET_S)
    return math.ceil(budget / check.interval_s) + check.retries


def resources(spec: ServiceSpec) -> dict[str, Any]:
    """Memory requests equal limits unless the spec says less (no overcommit on unified memory)."""
    memory = quantity(spec.memory_limit)
    request = quantity(spec.memory_request) if spec.memory_request else memory
    requests: dict[str, Any] = {
        "memory": request,
        "cpu": str(spec.cpu_limit) if spec.cpu_limit else DEFAULT_CPU_REQUEST,
    }
    limits: dict[str, Any] = {"memory": memory}
    if spec.cpu_limit is not None:
        limits["cpu"] = str(spec.cpu_limit)
    if spec.gpu:
        requests[GPU_RESOURCE] = 1
        limits[GPU_RESOURCE] = 1
    return {"requests": requests, "limits": limits}


def container(spec: ServiceSpec) -> dict[str, Any]:
    if spec.docker_socket:
        raise ValueError(f"service {spec.name}: a Docker socket is for compose hosts; kubernetes nodes run containerd")
    if spec.rdma:  # only tensor/pipeline parallelism asks for it, which the kubernetes platform refuses
        raise ValueError(f"service {spec.name}: RDMA devices need a device plugin on kubernetes; not rendered")
    environment = dict(spec.environment)
    if spec.gpu_visible:  # the NVIDIA runtime shows every GPU without the device plugin handing one out
        environment |= {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
    env += [
        {"name": s.env, "valueFrom": {"secretKeyRef": {"name": secret_name(spec), "key": s.env}}} for s in spec.secrets
    ]
    body: dict[str, Any] = {"name": spec.name, "image": spec.image, "resources": resources(spec)}
    if spec.entrypoint is not None:
        body["command"] = list(spec.entrypoint)
    if spec.command:
        body["args"] = list(spec.command)
    if env:
        body["env"] = env
    if spec.ports:
        body["ports"] = [{"name": p.name, "containerPort": p.container} for p in spec.ports]
    mounts: list[dict[str, Any]] = [{"name": v.name, "mountPath": v.mount_path} for v in spec.volumes]
    mounts += [_file_mount(f) for f in spec.files]
    mounts += [{"name": h.name, "mountPath": h.mount_path, "readOnly": True} for h in spec.host_paths]
    if spec.shm_size:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        body["volumeMounts"] = mounts
    check = spec.healthcheck
    if check is not None and not spec.one_shot:
        # The start-up probe covers model downloads and graph capture; liveness only starts after it.
        body["startupProbe"] = probe(check, failure_threshold=startup_failure_threshold(check))
        body["readinessProbe"] = probe(check)
        body["livenessProbe"] = probe(check)
    if spec.stop_signal:
        # The kubelet stops with SIGTERM whatever the image says; the hook sends the graceful signal
        # first and returns once the main process has exited (or the grace period ends it).
        wait = f"kill -s {spec.stop_signal.removeprefix('SIG')} 1 && while kill -0 1 2>/dev/null; do sleep 1; done"
        body["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", wait]}}}
    return body


def sidecar_containers(spec: ServiceSpec, sidecar: Sidecar) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the sidecar's container, its init container or None)."""
    known = {v.name for v in spec.volumes}
    unknown = [name for name, _ in sidecar.mounts if name not in known]
    if unknown:
        raise ValueError(f"sidecar {sidecar.name} of {spec.name} mounts volumes the service lacks: {unknown}")
    memory = quantity(sidecar.memory_limit)
    body: dict[str, Any] = {
        "name": sidecar.name,
        "image": sidecar.image,
        "command": list(sidecar.command),
        "resources": {"requests": {"memory": memory, "cpu": "10m"}, "limits": {"memory": memory}},
    }
    if sidecar.mounts:
        body["volumeMounts"] = [{"name": name, "mountPath": path} for name, path in sidecar.mounts]
    init = None
    if sidecar.init:
        init = {**body, "name": f"{sidecar.name}-init", "command": list(sidecar.init)}
    if sidecar.liveness:
        body["livenessProbe"] = probe(HealthCheck(command=sidecar.liveness, interval_s=30, timeout_s=10))
    return body, init


def _file_mount(file: ConfigFile) -> dict[str, Any]:
    return {"name": "files", "mountPath": file.mount_path, "subPath": file.filename, "readOnly": True}


def pod_spec(spec: ServiceSpec, placement: ClusterPlacement, *, claims: bool) -> dict[str, Any]:
    """The pod's spec; `claims`: volumes come from PVC objects (Deployment), not claim templates."""
    volumes: list[dict[str, Any]] = []
    if claims:
        volumes += [{"name": v.name, "persistentVolumeClaim": {"claimName": claim_name(spec, v)}} for v in spec.volumes]
    if spec.files:
        volumes.append({"name": "files", "configMap": {"name": files_name(spec)}})
    volumes += [{"name": h.name, "hostPath": {"path": h.host_path, "type": "Directory"}} for h in spec.host_paths]
    if spec.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(spec.shm_size)}})
    containers, init_containers = [container(spec)], []
    for sidecar in spec.sidecars:
        main, init = sidecar_containers(spec, sidecar)
        containers.append(main)
        if init is not None:
            init_containers.append(init)
    body: dict[str, Any] = {
        "containers": containers,
        "restartPolicy": "OnFailure" if spec.one_shot else "Always",
        "enableServiceLinks": False,  # docker-style *_PORT variables would clash with BATCH_* settings
    }
    if init_containers:
        body["initContainers"] = init_containers
    if spec.stop_grace_s is not None:
        body["terminationGracePeriodSeconds"] = spec.stop_grace_s
    if spec.pod_user is not None:
        user = spec.pod_user
        body["securityContext"] = {"runAsUser": user, "runAsGroup": user, "fsGroup": user, "runAsNonRoot": True}
    elif spec.volume_group is not None:
        # The kubelet makes the volumes group-writable by this group and adds it to the containers'
        # groups; OnRootMismatch skips the recursive chown once the volume's root is right.
        body["securityContext"] = {"fsGroup": spec.volume_group, "fsGroupChangePolicy": "OnRootMismatch"}
    if volumes:
        body["volumes"] = volumes
    if spec.gpu or spec.gpu_visible or spec.pin_to_gpu_node:
        body["affinity"] = gpu_affinity(placement)
        body["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if placement.image_pull_secret:
        body["imagePullSecrets"] = [{"name": placement.image_pull_secret}]
    return body


def claim_spec(volume: Volume, placement: ClusterPlacement) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{volume.size_gi}Gi"}},
    }
    if placement.storage_class:
        body["storageClassName"] = placement.storage_class
    return body


FILES_ANNOTATION = "vllm-gb10.dev/files-sha256"


def template_metadata(spec: ServiceSpec) -> dict[str, Any]:
    """Pod template metadata. A ConfigMap change alone restarts no pod (the kubelet updates mounted
    files late, and HAProxy, Prometheus and Grafana read theirs at start): the files' digest as an
    annotation changes the template, so exactly the workloads whose files changed roll out."""
    meta: dict[str, Any] = {"labels": labels(spec.name)}
    if spec.files:
        meta["annotations"] = {FILES_ANNOTATION: files_digest(spec.files)}
    return meta


def workload(spec: ServiceSpec, placement: ClusterPlacement) -> tuple[str, dict[str, Any]]:
    """(kind, spec) of the workload that runs `spec`: Job, StatefulSet or Deployment."""
    selector = {"matchLabels": labels(spec.name)}
    if spec.one_shot:
        template = {"metadata": template_metadata(spec), "spec": pod_spec(spec, placement, claims=True)}
        return "Job", {"backoffLimit": 10, "template": template}
    if spec.stateful:
        template = {"metadata": template_metadata(spec), "spec": pod_spec(spec, placement, claims=False)}
        body = {"serviceName": spec.name, "replicas": 1, "selector": selector, "template": template}
        if spec.volumes:
            body["volumeClaimTemplates"] = [
                {"metadata": {"name": v.name, "labels": labels(spec.name)}, "spec": claim_spec(v, placement)}
                for v in spec.volumes
            ]
        return "StatefulSet", body
    template = {"metadata": template_metadata(spec), "spec": pod_spec(spec, placement, claims=True)}
    # One GPU on the node: a rolling update would start the new pod beside the old one and wait
    # for a GPU forever. Recreate stops the old pod first. Pods with a ReadWriteOnce claim likewise.
    exclusive = spec.gpu or bool(spec.volumes)
    strategy = (
        {"type": "Recreate"}
        if exclusive
        else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    )
    if exclusive:
        # The old pod must be gone before the new one starts: a long graceful stop would be that long
        # with no pod serving new requests, so a Recreate workload stops as the platform stops it.
        template["spec"].pop("terminationGracePeriodSeconds", None)
        for container_body in template["spec"]["containers"]:
            container_body.pop("lifecycle", None)
    body = {"replicas": 1, "selector": selector, "strategy": strategy, "template": template}
    return "Deployment", body


def service_spec(spec: ServiceSpec) -> dict[str, Any]:
    """A ClusterIP Service for every port: other services reach `spec` by its name."""
    ports = [
        {"name": p.name, "port": p.published or p.container, "targetPort": p.container, "protocol": "TCP"}
        for p in spec.ports
    ]
    return {"type": "ClusterIP", "selector": labels(spec.name), "ports": ports}


MAX_PORT = 65535


def network_policy_spec(spec: ServiceSpec) -> dict[str, Any]:
    """Ingress to `spec`'s pods: its ports from the pods of `spec.admitted` only. A NetworkPolicy that
    selects a pod denies whatever no rule allows, so a second rule keeps every other port (TCP) and UDP as
    open as without it: a vLLM leader pod is also a Ray node, whose ports this must not cut."""
    if spec.admitted is None or not spec.ports:
        raise ValueError(f"service {spec.name}: a network policy needs admitted services and ports")
    guarded = sorted({p.container for p in spec.ports})
    sources = [{"podSelector": {"matchLabels": labels(name)}} for name in spec.admitted]
    others: list[dict[str, Any]] = []
    start = 1
    for port in [*guarded, MAX_PORT + 1]:
        if start < port:
            others.append({"protocol": "TCP", "port": start, "endPort": port - 1})
        start = port + 1
    others.append({"protocol": "UDP", "port": 1, "endPort": MAX_PORT})
    return {
        "podSelector": {"matchLabels": labels(spec.name)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": sources, "ports": [{"protocol": "TCP", "port": p} for p in guarded]},
            {"ports": others},
        ],
    }


TLS_SECRET = "public-tls"  # the Ingress's certificate (a kubernetes.io/tls Secret)


def ingress_spec(public: list[tuple[str, int]], domain: str, ingress_class: str) -> dict[str, Any]:
    """One rule `<name>.<domain>` per public (service, port), all served over TLS with the certificate
    in Secret TLS_SECRET; no class: the cluster's default IngressClass."""
    rules = [
        {
            "host": f"{name}.{domain}",
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"number": port}}},
                    }
                ]
            },
        }
        for name, port in sorted(public)
    ]
    body: dict[str, Any] = {
        "tls": [{"hosts": [f"{name}.{domain}" for name, _ in sorted(public)], "secretName": TLS_SECRET}],
        "rules": rules,
    }
    if ingress_class:
        body["ingressClassName"] = ingress_class
    return body


def ingress_annotations(ingress_class: str) -> dict[str, Any]:
    """ingress-nginx's own knobs, only for that controller: batch uploads reach 200 MB and long
    generations stream for minutes."""
    if ingress_class != "nginx":
        return {}
    return {
        "annotations": {
            "nginx.ingress.kubernetes.io/proxy-body-size": "200m",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "600",
        }
    }


def http_route_spec(name: str, port: int, *, hostname: str, gateway: str, gateway_namespace: str) -> dict[str, Any]:
    """A Gateway API HTTPRoute sending every path of `hostname` to Service `name` on `port`."""
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}
    if gateway_namespace:
        parent["namespace"] = gateway_namespace
    return {
        "parentRefs": [parent],
        "hostnames": [hostname],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": name, "port": port}],
            }
        ],
    }
