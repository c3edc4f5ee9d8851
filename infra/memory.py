"""One memory budget per GB10 host: what the services beside vLLM may use, and the check that the
limits placed on a host fit in it.

On GB10 the CPU and GPU share one 128 GB pool, so every container on the box takes from vLLM's
memory: the KV policy sizes vLLM with the co-located services' limits subtracted (runtime.kvcache
`reserved_gib`), and `check_host_budgets` refuses a stack whose limits on one host add up to more
than the host has, naming the services and the sums. The limits below are the ones the components
set; a unit test holds them equal to what the rendered compose files say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from infra.config import PROJECT, ConfigError, Parallelism, Role, StackConfig, stack_file

# Container memory limits of the services beside vLLM, by service (compose limit strings).
LIMITS: dict[str, str] = {
    "redis": "4g",
    "minio": "4g",
    "minio-setup": "256m",
    "postgres": "8g",
    "postgres-setup": "128m",  # psql making the offload role, beside the Ray head that waits for it
    "prometheus": "4g",
    "grafana": "1g",
    "lb": "1g",
    "batch-api": "2g",
    "batch-worker": "4g",
    "ray-head": "8g",
    "ray-worker": "16g",  # the offload job (UMAP/HDBSCAN of 12k x 4096 peaks at ~1.3 GB; bench.offload)
    "dcgm-exporter": "512m",
    "node-exporter": "256m",
    "memguard": "128m",  # the memory guard (runtime.memguard): one per gpu host
    "post-deploy-check": "256m",
}
# Which services each role brings to its host (compose placement follows the roles).
ROLE_SERVICES: dict[Role, tuple[str, ...]] = {
    Role.DATA: ("redis", "minio", "postgres", "prometheus", "grafana"),
    Role.LB: ("lb", "post-deploy-check"),
    Role.BATCH: ("batch-api", "batch-worker", "minio-setup"),
    Role.RAY_HEAD: ("ray-head", "postgres-setup"),
    Role.GPU: ("ray-worker", "dcgm-exporter", "memguard"),
}
EVERY_HOST: tuple[str, ...] = ("node-exporter",)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmg])$")
_UNIT_GIB = {"k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0}


def gib(limit: str) -> float:
    """A compose memory limit ("512m", "4g") in GiB."""
    match = _SIZE.match(limit.strip().lower())
    if match is None:
        raise ValueError(f"not a memory limit: {limit!r}")
    return float(match.group(1)) * _UNIT_GIB[match.group(2)]


def colocated(cfg: StackConfig, host: str) -> dict[str, float]:
    """GiB reserved by the services beside vLLM on `host` (compose), by service."""
    (found,) = [h for h in cfg.hosts if h.name == host]
    names = [*EVERY_HOST, *(s for role in sorted(found.roles) for s in ROLE_SERVICES.get(role, ()))]
    if cfg.vllm.parallelism is not Parallelism.REPLICA:
        names.remove("ray-worker")  # in tensor/pipeline mode the GPU hosts' Ray nodes are vLLM itself
    return {name: gib(LIMITS[name]) for name in names}


def reserved_gib(cfg: StackConfig) -> float:
    """What vLLM must leave to its neighbours on its most crowded GPU host (every server is sized alike)."""
    gpu_hosts = cfg.hosts_with(Role.GPU)
    return max((sum(colocated(cfg, h.name).values()) for h in gpu_hosts), default=0.0)


def gpu_node_reserved_gib() -> float:
    """Kubernetes: the pods pinned to the GB10 node beside vLLM (the others may land elsewhere)."""
    return sum(gib(LIMITS[name]) for name in (*ROLE_SERVICES[Role.GPU], *EVERY_HOST))


def check_host_budgets(stack: str, placed: dict[str, Iterable[tuple[str, str]]], host_gib: float) -> None:
    """Refuse limits on one host beyond `host_gib`: `placed` is host -> (service, limit) as rendered."""
    for host, services in placed.items():
        sizes = {name: gib(limit) for name, limit in services}
        total = sum(sizes.values())
        if total > host_gib:
            detail = ", ".join(f"{name} {size:g}" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]))
            raise ConfigError(
                f"{stack_file(stack)}: {PROJECT}:hosts: the memory limits on host {host} add up to {total:.1f} GiB, "
                f"more than its {host_gib:g} GiB ({detail} GiB); lower vllmMemoryLimit or move roles to another host"
            )
