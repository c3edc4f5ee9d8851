"""What a service is, independent of how it runs (docker compose or Kubernetes).

Components describe their containers as `ServiceSpec`s; a platform (infra/platforms) realises
them. Secrets never appear in a spec as text: a `Secret` names an environment variable whose value
the platform delivers out of band (compose: an env file fed over SSH stdin; Kubernetes: a Secret).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pulumi


class Exposure(StrEnum):
    """How far a service's port reaches."""

    INTERNAL = "internal"  # the host's cluster address (compose) / ClusterIP (kubernetes)
    PUBLIC = "public"  # the host's publicAddress (compose) / exposed outside the cluster (kubernetes)


def host_port(address: str, port: int) -> str:
    """`address:port` as listen flags and URLs take it (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Secret:
    """An environment value that must stay secret; `env` is the variable it is delivered as."""

    env: str
    value: pulumi.Output[str]


@dataclass(frozen=True)
class Port:
    """A port the service listens on; kubernetes makes Services of them (compose uses the host network)."""

    container: int
    published: int | None = None  # the Service port; None: the container port
    exposure: Exposure = Exposure.INTERNAL
    name: str = "http"


@dataclass(frozen=True)
class Volume:
    """Persistent storage: a named volume (compose) or a PVC (kubernetes)."""

    name: str
    mount_path: str
    size_gi: int = 10


@dataclass(frozen=True)
class ConfigFile:
    """A rendered file mounted read-only into the container (shipped beside the compose file)."""

    filename: str
    mount_path: str
    content: pulumi.Input[str]


@dataclass(frozen=True)
class HostPath:
    """A host directory mounted read-only (node exporter reads /proc, /sys and the root fs), or a
    writable state directory beside the compose project (`./name`: the load balancer's keys), which
    the up script creates with `seed_files` in it and no later `up` overwrites."""

    name: str
    host_path: str
    mount_path: str
    writable: bool = False
    seed_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sidecar:
    """A helper container in the service's pod (kubernetes only; compose refuses one): its own image
    and command, the service's volumes at its own paths (`mounts`: volume name -> path). `init`, if
    given, runs to completion in the same image before the pod's containers start. The load
    balancer's key manager is one: `kubectl exec … -c keys -- python -m runtime.lbkeys create NAME`."""

    name: str
    image: pulumi.Input[str]
    command: tuple[str, ...]
    mounts: tuple[tuple[str, str], ...] = ()
    init: tuple[str, ...] = ()
    liveness: tuple[str, ...] = ()  # a command the kubelet runs every 30 s; failing, it restarts the sidecar
    memory_limit: str = "64m"


@dataclass(frozen=True)
class Reload:
    """How a service takes changed mounted files without a restart (compose): the up script runs
    `check` in the running container, sends it `signal`, and waits for `success_log` in its log
    (`failure_log` fails the `up` with its log lines). The files are then no reason to recreate it.
    Kubernetes rolls the pod instead (a ConfigMap reaches a mounted file late)."""

    signal: str
    check: tuple[str, ...]
    success_log: str
    failure_log: str
    timeout_s: int = 60


@dataclass(frozen=True)
class HealthCheck:
    command: tuple[str, ...]
    interval_s: int = 15
    timeout_s: int = 5
    retries: int = 5
    start_period_s: int = 30
    http_path: str | None = None  # for probes that can use HTTP directly (kubernetes)
    http_port: int | None = None


def http_health_check(
    port: int, path: str = "/health", *, host: str, python: str = "python3", https: bool = False, **timing: int
) -> HealthCheck:
    """An HTTP GET probe run inside the container with its own Python (no curl in slim images).

    `host` (Platform.probe_address, no default) is where the service answers from inside its own
    container: on the host network a service bound to the cluster address does not answer on 127.0.0.1.
    `https`: the service serves TLS itself; the probe asks whether it answers, not who it is, so it
    does not check the certificate (whose names are the public ones, not the probe address).
    """
    if https:
        url = f"https://{host_port(host, port)}{path}"
        unverified = "context=ssl._create_unverified_context()"
        probe = f"import ssl, urllib.request; urllib.request.urlopen('{url}', timeout=5, {unverified})"
    else:
        probe = f"import urllib.request; urllib.request.urlopen('http://{host_port(host, port)}{path}', timeout=5)"
    return HealthCheck(command=(python, "-c", probe), http_path=path, http_port=port, **timing)


@dataclass(frozen=True)
class ServiceSpec:
    """One long-running container (or a one-shot job when `one_shot`)."""

    name: str
    image: pulumi.Input[str]
    host: str  # host name (compose placement); kubernetes places GPU specs on the GB10 node
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secrets: tuple[Secret, ...] = ()
    ports: tuple[Port, ...] = ()
    volumes: tuple[Volume, ...] = ()
    files: tuple[ConfigFile, ...] = ()
    healthcheck: HealthCheck | None = None
    depends_on: tuple[str, ...] = ()  # names of specs on the same host that must be healthy first
    gpu: bool = False  # reserves the GPU (kubernetes: requests nvidia.com/gpu) and runs on a GB10
    gpu_visible: bool = False  # sees the GPUs without taking one (metrics exporters), on a GB10
    pin_to_gpu_node: bool = False  # kubernetes: runs on the GB10 node (compose: placement does it)
    host_paths: tuple[HostPath, ...] = ()
    memory_limit: str = "4g"
    memory_request: str | None = None  # kubernetes: what the scheduler reserves; None: the limit
    cpu_limit: float | None = None
    shm_size: str | None = None
    one_shot: bool = False  # runs to completion (e.g. bucket setup) instead of staying up
    # NCCL over RDMA (RoCE on the boxes' ConnectX link): the RDMA devices (/dev/infiniband), unlimited
    # locked memory and IPC_LOCK to pin its buffers (vLLM docs serving/parallelism_scaling.md, GPUDirect
    # RDMA; NVIDIA's Spark playbooks run such containers with --device /dev/infiniband --ulimit memlock=-1).
    # Compose only: the kubernetes platform refuses it (RDMA there needs a device plugin).
    rdma: bool = False
    stateful: bool = False
    # compose only (the memory guard): the host's Docker socket, which is root-equivalent. The container runs
    # as root (the socket is root's, its group differs per host) with every capability dropped, no new
    # privileges and a read-only root filesystem; the kubernetes platform refuses it.
    docker_socket: bool = False
    sidecars: tuple[Sidecar, ...] = ()  # kubernetes: helper containers in the pod
    # kubernetes: the pod's uid/gid and the group of its volumes (fsGroup), so a sidecar shares files
    # and sockets with the service; None: each image's own user.
    pod_user: int | None = None
    # kubernetes: the group the image's own user writes its volumes as (pod securityContext.fsGroup), so
    # a storage class that makes root-owned volumes does not leave the service unable to write its data.
    volume_group: int | None = None
    # kubernetes: the only services whose pods may reach this service's ports (a NetworkPolicy; its other
    # ports stay open); None: any pod. vLLM's key guards only /v1, so its port admits its clients only.
    admitted: tuple[str, ...] | None = None
    reload: Reload | None = None  # compose: a changed mounted file is reloaded in place, not a recreate
    # How it stops: the signal for a graceful stop and how long that may take before SIGKILL (compose:
    # stop_signal, stop_grace_period; kubernetes: a preStop hook sending it, terminationGracePeriodSeconds).
    # None: the image's STOPSIGNAL and the platform's default grace (10 s compose, 30 s kubernetes).
    stop_signal: str | None = None
    stop_grace_s: int | None = None
    # Observability only (the DCGM exporter): no other service depends on it, and a deploy goes on without it,
    # saying so (compose: it starts after the project is healthy and a failure is a warning with its last log
    # lines; kubernetes: its workload is not awaited, pulumi.com/skipAwait). Prometheus shows it down (`up`).
    optional: bool = False

    def __post_init__(self) -> None:
        names = [s.env for s in self.secrets]
        clash = set(names) & set(self.environment)
        if clash or len(names) != len(set(names)):
            raise ValueError(f"service {self.name}: secret env names clash: {sorted(clash) or names}")
        if self.optional and self.one_shot:
            raise ValueError(f"service {self.name}: a one-shot cannot be optional (something waits for it)")


def files_digest(files: tuple[ConfigFile, ...]) -> pulumi.Input[str]:
    """sha256 over the mounted files' names and contents. Neither compose nor Kubernetes looks inside
    a mounted file, but both restart a workload whose labels (compose) or pod template annotations
    (Kubernetes) change: this digest there makes a changed file reach its containers, and only theirs.
    A content that is still an Output (the load balancer's key map) gives an Output digest."""
    ordered = sorted(files, key=lambda f: f.filename)
    if any(not isinstance(f.content, str) for f in ordered):
        return pulumi.Output.all(*[f.content for f in ordered]).apply(
            lambda contents: _digest([f.filename for f in ordered], contents)
        )
    return _digest([f.filename for f in ordered], [str(f.content) for f in ordered])


def _digest(names: list[str], contents: list[str]) -> str:
    digest = hashlib.sha256()
    for name, content in zip(names, contents, strict=True):
        for part in (name, content):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def secret_output(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """`Output.secret` of a text: mypy cannot pick the SDK's type variable out of `Input`'s union."""
    text: Any = value
    return pulumi.Output.secret(text)
