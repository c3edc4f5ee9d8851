"""From what the stacks ship to what runs: compose services and Kubernetes pod specs as Workloads.

The rules in policies/rules.py judge Workloads; this module only reads. A compose file is the
docker-compose.yml a `command:remote:CopyToRemote` ships (with the host's cluster address under
`x-vllm-gb10`); a Kubernetes workload is any kind with a pod template, and a RayCluster's head and
worker groups. Compose services run on the host network, so where a service listens is read from
its command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

COMPOSE_FILE = "docker-compose.yml"
K8S_WORKLOADS = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
RAY_CLUSTER = "kubernetes:ray.io/v1:RayCluster"
DATA_SERVICE = re.compile(r"(^|[/-])(redis|postgres|pgvector|minio|rustfs|ray)([:/-]|$)")
# Flags that set where a data service listens: redis --bind, postgres listen_addresses, the S3
# server's (RustFS, as MinIO) --address/--console-address, Ray --node-ip-address/--dashboard-host
# (and --host of other servers).
LISTEN_FLAG = re.compile(
    r"(?<![\w-])(--bind|--host|--address|--console-address|--node-ip-address|--dashboard-host|listen_addresses)"
    r"[= ](\S+)"
)
COMPOSE_EXTENSION = "x-vllm-gb10"


@dataclass
class Workload:
    """One container, from a compose service or a Kubernetes pod spec."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str | None]  # None: filled from a Kubernetes Secret reference
    memory_limit: str | None
    gpu: bool
    health_check: bool
    restart: str | None
    published: list[tuple[str, str]] = field(default_factory=list)  # (host ip, port)
    host_network: bool = False
    one_shot: bool = False
    cluster_address: str | None = None  # compose: the host's cluster address, from the file's x-vllm-gb10
    privileged: bool = False
    capabilities: list[str] = field(default_factory=list)  # added Linux capabilities (cap_add / securityContext)
    devices: list[str] = field(default_factory=list)  # host devices mapped in (compose `devices`, the host side)
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (host path or volume, container path)
    cap_drop: list[str] = field(default_factory=list)  # dropped Linux capabilities
    read_only: bool = False  # the root filesystem is read-only
    no_new_privileges: bool = False

    @property
    def command_text(self) -> str:
        return " ".join(self.command)

    @property
    def is_data_service(self) -> bool:
        if re.search(r"minio/mc|(^|/)mc:", self.image):
            return False  # the bucket set-up job publishes nothing
        return bool(DATA_SERVICE.search(self.name) or DATA_SERVICE.search(self.image.split("@")[0]))

    @property
    def listen_addresses(self) -> list[str]:
        """The addresses the command line tells the service to listen on (no port)."""
        found = []
        for match in LISTEN_FLAG.finditer(self.command_text):
            if match.group(1) == "--address" and "ray start" in self.command_text:
                continue  # `ray start --address` names the head to join, not an address to listen on
            found += [_address_only(a) for a in match.group(2).strip("'\"").split(",")]
        return found


def _address_only(value: str) -> str:
    """`10.0.0.1:9000` -> `10.0.0.1`, `[::]:9000` -> `::`, `:9000` -> `` (any); a bare address stays."""
    if value.startswith("["):
        return value[1 : value.find("]")]
    if value.count(":") == 1:
        return value.split(":")[0]
    return value


def compose_document(resource_type: str, props: Any) -> dict[str, Any] | None:
    if resource_type != "command:remote:CopyToRemote" or not str(props.get("remotePath", "")).endswith(COMPOSE_FILE):
        return None
    text = getattr(props.get("source"), "text", None)
    if not isinstance(text, str):
        return None
    document = yaml.safe_load(text)
    return document if isinstance(document, dict) else None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _compose_ports(ports: Any) -> list[tuple[str, str]]:
    published = []
    for port in ports or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                published.append((str(port.get("host_ip", "")), str(port["published"])))
            continue
        parts = str(port).rsplit(":", 2)
        if len(parts) == 3:
            published.append((parts[0], parts[1]))
        elif len(parts) == 2:
            published.append(("", parts[0]))
    return published


def compose_workloads(document: dict[str, Any]) -> Iterator[Workload]:
    cluster_address = (document.get(COMPOSE_EXTENSION) or {}).get("clusterAddress")
    for name, service in (document.get("services") or {}).items():
        deploy = (service.get("deploy") or {}).get("resources") or {}
        devices = ((deploy.get("reservations") or {}).get("devices")) or []
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        restart = service.get("restart")
        yield Workload(
            name=name,
            image=str(service.get("image", "")),
            command=_as_list(service.get("entrypoint")) + _as_list(service.get("command")),
            env={k: "" if v is None else str(v) for k, v in env.items()},
            memory_limit=(deploy.get("limits") or {}).get("memory") or service.get("mem_limit"),
            gpu=any("gpu" in (d.get("capabilities") or []) for d in devices) or service.get("runtime") == "nvidia",
            health_check=bool(service.get("healthcheck")) and not service["healthcheck"].get("disable"),
            restart=restart,
            published=_compose_ports(service.get("ports")),
            host_network=service.get("network_mode") == "host",
            one_shot=restart == "on-failure",
            cluster_address=None if cluster_address is None else str(cluster_address),
            privileged=service.get("privileged") is True,
            capabilities=_as_list(service.get("cap_add")),
            devices=[_device_path(d) for d in service.get("devices") or []],
            mounts=[_mount(m) for m in service.get("volumes") or []],
            cap_drop=_as_list(service.get("cap_drop")),
            read_only=service.get("read_only") is True,
            no_new_privileges=any(
                str(o).replace("=", ":") in {"no-new-privileges", "no-new-privileges:true"}
                for o in service.get("security_opt") or []
            ),
        )


def _mount(volume: Any) -> tuple[str, str]:
    """A compose volume entry's (source, target): `src:dst[:mode]` or `{source, target, …}`."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), str(volume.get("target", ""))
    parts = str(volume).split(":")
    if str(volume).startswith("${"):  # an interpolated source: `${VAR:-/default}:/target[:mode]`
        end = str(volume).index("}") + 1
        source, rest = str(volume)[:end], str(volume)[end + 1 :].split(":")
        return source, rest[0]
    return parts[0], parts[1] if len(parts) > 1 else parts[0]


def _device_path(device: Any) -> str:
    """A compose device mapping's host side: `/dev/x:/dev/x:rwm` or `{source: /dev/x, …}` -> `/dev/x`."""
    if isinstance(device, dict):
        return str(device.get("source", ""))
    return str(device).split(":", 1)[0]


def dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def pod_spec(resource_type: str, props: Any) -> dict[str, Any] | None:
    path = K8S_WORKLOADS.get(resource_type)
    spec = dig(props, path) if path else None
    return spec if isinstance(spec, dict) else None


def pod_specs(resource_type: str, props: Any, name: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every pod template: one for a workload, head and groups for a RayCluster."""
    if resource_type == RAY_CLUSTER:
        spec = props.get("spec") or {}
        found = [(f"{name}/head", dig(spec, ("headGroupSpec", "template", "spec")))]
        found += [
            (f"{name}/{group.get('groupName', 'workers')}", dig(group, ("template", "spec")))
            for group in spec.get("workerGroupSpecs") or []
        ]
        return [(n, s) for n, s in found if isinstance(s, dict)]
    spec = pod_spec(resource_type, props)
    return [(name, spec)] if spec is not None else []


def pod_workloads(resource_type: str, name: str, spec: dict[str, Any]) -> Iterator[Workload]:
    restart = spec.get("restartPolicy", "Always")
    init_names = {c.get("name") for c in spec.get("initContainers") or []}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        env = {}
        for item in container.get("env") or []:
            env[item.get("name", "")] = None if item.get("valueFrom") else str(item.get("value", ""))
        yield Workload(
            name=f"{name}/{container.get('name', '')}",
            image=str(container.get("image", "")),
            command=_as_list(container.get("command")) + _as_list(container.get("args")),
            env=env,
            memory_limit=limits.get("memory"),
            gpu="nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests,
            health_check=bool(container.get("readinessProbe") or container.get("livenessProbe")),
            restart=restart,
            # Init containers run to completion before the pod starts (Kubernetes allows them no probes).
            one_shot=resource_type == "kubernetes:batch/v1:Job" or container.get("name") in init_names,
            privileged=dig(container, ("securityContext", "privileged")) is True,
            capabilities=_as_list(dig(container, ("securityContext", "capabilities", "add"))),
            mounts=[
                (str(dig(v, ("hostPath", "path"))), str(m.get("mountPath", "")))
                for m in container.get("volumeMounts") or []
                for v in spec.get("volumes") or []
                if v.get("name") == m.get("name") and dig(v, ("hostPath", "path"))
            ],
        )


def workloads(resource_type: str, props: Any, name: str) -> list[Workload]:
    document = compose_document(resource_type, props)
    if document is not None:
        return list(compose_workloads(document))
    return [
        w for where, spec in pod_specs(resource_type, props, name) for w in pod_workloads(resource_type, where, spec)
    ]
