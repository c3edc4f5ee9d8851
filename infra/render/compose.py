"""docker-compose.yml for one host, from resolved ServiceSpecs (images and files already text).

The file carries no secret: each secret is a `${VAR:?}` interpolation filled from the env file
that the platform delivers over SSH stdin. Every literal `$` is escaped for the same reason.

Every service runs on the host network (the only kind a single Docker Engine simulating several
hosts can offer, and the same on real hosts), so nothing is published: each service binds its
own address on its command line, and the `x-vllm-gb10` block records the host's cluster address
for the policy pack to judge those addresses against.
"""

from __future__ import annotations

from typing import Any

import yaml

from infra.services import ServiceSpec, files_digest

PROJECT_NAME = "vllm-gb10"
FILES_LABEL = "dev.vllm-gb10.files-sha256"
EXTENSION = "x-vllm-gb10"
RDMA_DEVICES = "/dev/infiniband"  # the RDMA verbs devices NCCL opens for its IB/RoCE transport
DOCKER_SOCKET = "/var/run/docker.sock"  # the Docker Engine API (root-equivalent): the memory guard's only
# The socket's path on the host: the engine the up script's compose talks to (its DOCKER_HOST, when that is a
# unix socket: the local stack's private dockerd), else Docker's default. The up script exports it.
DOCKER_SOCKET_ENV = "VGB_DOCKER_SOCKET"
DOCKER_SOCKET_SOURCE = f"${{{DOCKER_SOCKET_ENV}:-{DOCKER_SOCKET}}}"


def project_name(host: str) -> str:
    """One compose project per host, so hosts sharing a Docker Engine never remove each other's
    containers as orphans."""
    return f"{PROJECT_NAME}-{host}"


def _escape(value: str) -> str:
    return value.replace("$", "$$")


def service_entry(spec: ServiceSpec) -> dict[str, Any]:
    """The compose entry of one service (its image, command, environment, mounts, labels, ...)."""
    out: dict[str, Any] = {"image": spec.image, "container_name": f"{PROJECT_NAME}-{spec.name}", "network_mode": "host"}
    if spec.entrypoint is not None:
        out["entrypoint"] = [_escape(a) for a in spec.entrypoint]
    if spec.command:
        out["command"] = [_escape(a) for a in spec.command]
    env = {k: _escape(str(v)) for k, v in sorted(spec.environment.items())}
    for secret in spec.secrets:
        env[secret.env] = f"${{{secret.env}:?{secret.env} missing from the secrets env file}}"
    if env:
        out["environment"] = env
    mounts = [f"{v.name}:{v.mount_path}" for v in spec.volumes]
    mounts += [f"./{f.filename}:{f.mount_path}:ro" for f in spec.files]
    mounts += [f"{h.host_path}:{h.mount_path}{'' if h.writable else ':ro'}" for h in spec.host_paths]
    if spec.docker_socket:
        mounts.append(f"{DOCKER_SOCKET_SOURCE}:{DOCKER_SOCKET}")
        out["user"] = "0:0"
        out["cap_drop"] = ["ALL"]
        out["security_opt"] = ["no-new-privileges:true"]
        out["read_only"] = True
    if mounts:
        out["volumes"] = mounts
    if spec.healthcheck is not None:
        hc = spec.healthcheck
        out["healthcheck"] = {
            "test": ["CMD", *(_escape(a) for a in hc.command)],
            "interval": f"{hc.interval_s}s",
            "timeout": f"{hc.timeout_s}s",
            "retries": hc.retries,
            "start_period": f"{hc.start_period_s}s",
        }
    if spec.depends_on:
        out["depends_on"] = {name: {"condition": "service_healthy"} for name in spec.depends_on}
    out["restart"] = "on-failure" if spec.one_shot else "unless-stopped"
    limits: dict[str, Any] = {"memory": spec.memory_limit}
    if spec.cpu_limit is not None:
        limits["cpus"] = str(spec.cpu_limit)
    resources: dict[str, Any] = {"limits": limits}
    if spec.gpu or spec.gpu_visible:  # docker does not hand a GPU out exclusively: both are a reservation
        resources["reservations"] = {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
    out["deploy"] = {"resources": resources}
    if spec.shm_size:
        out["shm_size"] = spec.shm_size
    if spec.rdma:
        out["devices"] = [f"{RDMA_DEVICES}:{RDMA_DEVICES}"]
        out["ulimits"] = {"memlock": -1}
        out["cap_add"] = ["IPC_LOCK"]
    out["logging"] = {"driver": "json-file", "options": {"max-size": "50m", "max-file": "5"}}
    out["labels"] = {"dev.vllm-gb10.service": spec.name, "dev.vllm-gb10.host": spec.host}
    if spec.files and spec.reload is None:  # a reloadable service takes its files in place (up_script)
        out["labels"][FILES_LABEL] = files_digest(spec.files)
    if spec.stop_signal:
        out["stop_signal"] = spec.stop_signal
    if spec.stop_grace_s is not None:
        out["stop_grace_period"] = f"{spec.stop_grace_s}s"
    return out


def compose_document(specs: list[ServiceSpec], host: str, cluster_address: str) -> dict[str, Any]:
    """The compose document for the specs placed on `host`."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate service names on one host: {names}")
    one_shots = {s.name for s in specs if s.one_shot}
    services = {}
    for spec in specs:
        missing = set(spec.depends_on) - set(names)
        if missing:
            raise ValueError(f"{spec.name} depends on services not on this host: {sorted(missing)}")
        optional = sorted(set(spec.depends_on) & {s.name for s in specs if s.optional})
        if optional:
            raise ValueError(f"{spec.name} depends on {optional}, which are optional (a deploy goes on without them)")
        service = service_entry(spec)
        for dep in spec.depends_on:
            if dep in one_shots:
                service["depends_on"][dep]["condition"] = "service_completed_successfully"
        services[spec.name] = service
    # `up --wait` waits for a one-shot to complete only when a service waits for it so; it takes any
    # other exited container for a failure.
    awaited = {dep for spec in specs for dep in spec.depends_on}
    for name in sorted(one_shots - awaited):
        raise ValueError(f"one-shot {name} on host {host}: no service on this host depends on it")
    volumes = sorted({v.name for s in specs for v in s.volumes})
    doc: dict[str, Any] = {"name": project_name(host), EXTENSION: {"host": host, "clusterAddress": cluster_address}}
    doc["services"] = services
    if volumes:
        doc["volumes"] = {name: {} for name in volumes}
    return doc


def render_compose(specs: list[ServiceSpec], host: str, cluster_address: str) -> str:
    doc = compose_document(specs, host, cluster_address)
    header = "# Rendered by infra/render/compose.py - do not edit by hand.\n"
    return header + str(yaml.safe_dump(doc, sort_keys=False, width=120))
