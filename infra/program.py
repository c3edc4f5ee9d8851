"""The Pulumi program: stack config in, components declared, endpoints out.

`declare` is a plain function so the Pulumi entry point (infra/__main__.py), the offline plan
(infra.plan) and the tests all run the same code.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from infra.components.batch import BatchService
from infra.components.host import ExpectedMemory, Gb10Host
from infra.components.image import PYTHON_IMAGE, ContainerImage, ContainerImageArgs
from infra.components.load_balancer import LoadBalancer
from infra.components.memguard import MemoryGuard
from infra.components.monitoring import Monitoring
from infra.components.object_store import ObjectStoreServer
from infra.components.post_deploy_check import PostDeployCheck
from infra.components.postgres import Postgres
from infra.components.ray_cluster import RayCluster
from infra.components.redis import Redis
from infra.components.tls import PublicTls
from infra.components.vllm import ModelServer, VllmService, replica_server_names, vllm_node
from infra.config import PROJECT, ConfigError, Parallelism, Platform, Role, StackConfig, load, stack_file
from infra.memory import LIMITS
from infra.platforms import Rollout, ServicePlatform
from infra.platforms.compose import ComposePlatform
from infra.platforms.image_refs import tag_only, with_image_refs
from infra.platforms.kubernetes import KubernetesPlatform
from infra.render.monitoring import ScrapeJob
from infra.services import Secret
from infra.vllm_sizing import engine_args, headroom_need, size_model_servers, size_offered_models, size_vllm
from runtime.headroom import Need
from runtime.kvcache import PROFILES

REPO_ROOT = Path(__file__).resolve().parent.parent
# The pods that reach vLLM's API port directly (kubernetes admits only these): the load balancer, the batch
# worker (its http engine goes through the balancer, its offline engine needs none), Prometheus (/metrics)
# and the post-deploy check (/health of each server). tests/unit/test_edge_program.py checks each names a pod.
VLLM_CLIENTS = ("lb", "batch-worker", "prometheus", "post-deploy-check")
VLLM = "vllm"  # the vLLM component: its services are vllm-<host>[-<port>], which the Ray workers wait for


@dataclass(frozen=True)
class StackSecrets:
    private_keys: dict[str, pulumi.Output[str]]  # config key -> key text
    hf_token: pulumi.Output[str] | None
    registry_password: pulumi.Output[str] | None
    tls_certificate: pulumi.Output[str] | None = None
    tls_private_key: pulumi.Output[str] | None = None


def read_config() -> StackConfig:
    prefix = f"{PROJECT}:"
    present = [k.removeprefix(prefix) for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)]
    return load(lambda key: pulumi.runtime.get_config(prefix + key), pulumi.get_stack(), present)


def read_secrets(cfg: StackConfig) -> StackSecrets:
    config = pulumi.Config(PROJECT)
    keys = {h.private_key_secret for h in cfg.hosts}
    return StackSecrets(
        private_keys={k: config.require_secret(k) for k in sorted(keys)},
        hf_token=config.get_secret("hfToken"),
        registry_password=config.get_secret("registryPassword"),
        tls_certificate=config.get_secret("tlsCertificate"),
        tls_private_key=config.get_secret("tlsPrivateKey"),
    )


def internal_tls_names(cfg: StackConfig) -> list[str]:
    """Where the stack's own clients reach the TLS endpoints (compose: each host's cluster address);
    an operator's certificate must cover them too. Kubernetes: inside the cluster it is plain HTTP."""
    if cfg.platform is Platform.KUBERNETES:
        return []
    return [str(h.cluster_address) for h in cfg.hosts if h.cluster_address is not None]


def tls_names(cfg: StackConfig) -> list[str]:
    """What the public endpoints are reached by: each host's address, name, public address and cluster
    address (the batch worker and the post-deploy check reach the load balancer there) on compose, or
    the Ingress domain on kubernetes; then `tlsNames`."""
    if cfg.platform is Platform.KUBERNETES:
        domain = cfg.k8s.ingress_domain
        names = [f"*.{domain}", domain]
    else:
        names = []
        for host in cfg.hosts:
            names += [host.address, host.name]
            if not host.public_address.is_unspecified:
                names.append(str(host.public_address))
            if host.cluster_address is not None:
                names.append(str(host.cluster_address))
    return list(dict.fromkeys([*names, *cfg.tls.names]))


def _images(cfg: StackConfig, secrets: StackSecrets) -> tuple[ContainerImage, ContainerImage]:
    """The vLLM image from `vllmDockerfile` (a local stack builds a CPU one) and the runtime image."""
    if not (REPO_ROOT / cfg.image.vllm_dockerfile).is_file():
        raise ConfigError(
            f"{stack_file(cfg.stack)}: {PROJECT}:vllmDockerfile: no file {cfg.image.vllm_dockerfile!r} in the project"
        )
    context = os.path.relpath(REPO_ROOT, os.getcwd())

    def image_args(dockerfile: str, repository: str, **build_args: str) -> ContainerImageArgs:
        args: ContainerImageArgs = {
            "context": context,
            "dockerfile": dockerfile,
            "repository": repository,
            "tag": cfg.image.image_tag,
            "platform": cfg.image.platform,
            "builder": cfg.image.builder,
            "registry_username": cfg.image.registry_username,
            "registry_password": secrets.registry_password,
        }
        if not cfg.image.pull_by_digest:  # the local stand-in carries the tag; no digest can match it
            build_args = {"PYTHON_IMAGE": tag_only(PYTHON_IMAGE), **build_args}
        if build_args:
            args["build_args"] = build_args
        return args

    vllm = ContainerImage(
        "vllm-image",
        image_args(
            os.path.join(context, cfg.image.vllm_dockerfile),
            f"{cfg.image.registry}/vllm-gb10",
            VLLM_VERSION=cfg.image.vllm_version,
            CUDA_ARCH=cfg.image.cuda_arch,
        ),
    )
    runtime = ContainerImage(
        "runtime-image",
        image_args(os.path.join(context, "images", "Dockerfile.runtime"), f"{cfg.image.registry}/vllm-gb10-runtime"),
    )
    return vllm, runtime


@dataclass(frozen=True)
class RolePlacement:
    """Which host (compose) or placement name (kubernetes) runs each role."""

    data: str
    lb: str
    batch: str
    ray_head: str
    gpu: list[str]
    nodes: list[str]  # every host (compose) or the GB10 node (kubernetes): node exporters


def _compose(cfg: StackConfig, secrets: StackSecrets) -> tuple[ComposePlatform, Any, Any, RolePlacement]:
    """GB10 hosts over SSH; the images are built here and pushed to the registry."""
    vllm_image, runtime_image = _images(cfg, secrets)  # first: it checks vllmDockerfile
    profile = PROFILES[cfg.vllm.host_profile]
    # A GB10's memory is its profile's (the preflight reads MemTotal); a discrete GPU's is not the host's RAM.
    expected_memory = (
        ExpectedMemory(profile.name, profile.gpu_memory_gib, stack_file(cfg.stack)) if profile.unified else None
    )
    hosts = {
        h.name: Gb10Host(
            h.name,
            {
                "host": h,
                "private_key": secrets.private_keys[h.private_key_secret],
                "require_gpu": Role.GPU in h.roles,
                "min_free_disk_gb": cfg.ops.min_free_disk_gb,
                "remote_dir": cfg.ops.remote_dir,
                "expected_memory": expected_memory if Role.GPU in h.roles else None,
            },
        )
        for h in cfg.hosts
    }
    placement = RolePlacement(
        data=cfg.host_with(Role.DATA).name,
        lb=cfg.host_with(Role.LB).name,
        batch=cfg.host_with(Role.BATCH).name,
        ray_head=cfg.host_with(Role.RAY_HEAD).name,
        gpu=[h.name for h in cfg.hosts_with(Role.GPU)],
        nodes=[h.name for h in cfg.hosts],
    )
    gb10_gib = PROFILES[cfg.vllm.host_profile].gpu_memory_gib
    budgets = {h.name: gb10_gib for h in cfg.hosts_with(Role.GPU)}  # other hosts' size is not configured
    return ComposePlatform(hosts, stack=cfg.stack, memory_gib=budgets), vllm_image.ref, runtime_image.ref, placement


K8S_GPU_PLACEMENT = "gb10"  # names the GB10 node's pods (vllm-gb10, ray-worker-gb10) whatever its label


def _kubernetes(cfg: StackConfig, secrets: StackSecrets) -> tuple[KubernetesPlatform, str, str, RolePlacement]:
    """Objects in the cluster's namespace; the images are pulled from the registry (built by stella)."""
    pull_secret = None
    if cfg.image.registry_username and secrets.registry_password is not None:
        pull_secret = secrets.registry_password.apply(
            lambda password: docker_config_json(cfg.image.registry, cfg.image.registry_username, password)
        )
    platform = KubernetesPlatform(cfg.k8s, image_pull_secret=pull_secret)
    registry, tag = cfg.image.registry, cfg.image.image_tag
    placement = RolePlacement(
        data="cluster",
        lb="cluster",
        batch="cluster",
        ray_head="cluster",
        gpu=[K8S_GPU_PLACEMENT],
        nodes=[K8S_GPU_PLACEMENT],
    )
    vllm_ref, runtime_ref = (
        platform.pin(f"{registry}/vllm-gb10:{tag}"),
        platform.pin(f"{registry}/vllm-gb10-runtime:{tag}"),
    )
    return platform, vllm_ref, runtime_ref, placement


def docker_config_json(registry: str, username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"username": username, "password": password, "auth": token}}})


def _largest(needs: Iterable[Need | None]) -> Need | None:
    """The offline engine's start-time need: the largest offered model's (it holds one model at a time)."""
    found = [need for need in needs if need is not None]
    return max(found, key=lambda need: need.total) if found else None


def declare(cfg: StackConfig, secrets: StackSecrets) -> dict[str, Any]:
    """Declare every resource of the stack; return the stack outputs."""
    kv_plan = size_vllm(cfg, REPO_ROOT)
    vllm_engine_args = engine_args(cfg, kv_plan)
    # The vLLM servers on each gpu host: one per offered model, sized together when there are several.
    model_servers = size_model_servers(cfg, REPO_ROOT, kv_plan)
    offered = cfg.vllm.offered
    # The offline batch engine loads each offered model in turn, each sized on its own (the default's is kv_plan).
    offline_plans = size_offered_models(cfg, REPO_ROOT, kv_plan) if cfg.batch.engine == "offline" else {}
    offline_engine_args = {name: engine_args(cfg, p) for name, p in offline_plans.items()}
    platform: ServicePlatform
    if cfg.platform is Platform.COMPOSE:
        platform, vllm_image_ref, runtime_image_ref, placement = _compose(cfg, secrets)
    else:
        platform, vllm_image_ref, runtime_image_ref, placement = _kubernetes(cfg, secrets)
    platform = with_image_refs(platform, cfg.image.pull_by_digest)
    public_tls = PublicTls(
        "tls",
        {
            "names": tls_names(cfg),
            "certificate": secrets.tls_certificate,
            "private_key": secrets.tls_private_key,
            "internal_names": internal_tls_names(cfg),
        },
    )
    # compose: the load balancer, batch API and Grafana serve TLS themselves; kubernetes: the Ingress does.
    served_tls = public_tls.server if platform.serves_tls else None
    if not platform.serves_tls:
        platform.terminate_tls(public_tls.cert_pem, public_tls.key_pem)
    data_host = placement.data
    public = cfg.data.public

    redis = Redis(
        "redis",
        {
            "platform": platform,
            "host": data_host,
            "port": cfg.data.redis_port,
            "public": public,
            "memory_limit": LIMITS["redis"],
            "maxmemory_percent": cfg.data.redis_maxmemory_percent,
        },
    )
    store = ObjectStoreServer(
        "minio",
        {
            "platform": platform,
            "host": data_host,
            "port": cfg.data.minio_port,
            "console_port": cfg.data.minio_console_port,
            "bucket": cfg.data.bucket,
            "retention_days": cfg.data.result_retention_days,
            "public": public,
            "memory_limit": LIMITS["minio"],
            "setup_image": runtime_image_ref,
            "setup_host": placement.batch,  # beside the batch service, which waits for it
        },
    )
    postgres = Postgres(
        "postgres",
        {
            "platform": platform,
            "host": data_host,
            "port": cfg.data.postgres_port,
            "database": cfg.data.postgres_db,
            "user": cfg.data.postgres_user,
            "public": public,
            "memory_limit": LIMITS["postgres"],
            "setup_host": placement.ray_head,  # beside the Ray head, which waits for the offload role
        },
    )

    gpu_hosts = placement.gpu
    distributed = cfg.vllm.parallelism is not Parallelism.REPLICA
    vllm_limit = model_servers[0].memory_limit
    ray = RayCluster(
        "ray",
        {
            "platform": platform,
            "image": vllm_image_ref,
            "head_host": placement.ray_head,
            # In tensor/pipeline mode the vLLM container is the Ray node of the leading GPU host, and
            # the other GPU hosts' Ray workers run vLLM's workers: same model cache, token and memory.
            "worker_hosts": gpu_hosts[1:] if distributed else gpu_hosts,
            "settings": cfg.ray,
            "vllm_node": vllm_node(cfg.vllm, secrets.hf_token, vllm_limit) if distributed else None,
            # The offload job's own role, not the database owner (a superuser).
            "job_secrets": (Secret("OFFLOAD_DSN", postgres.offload_url),),
            "head_depends_on": (postgres.setup_service,),
            # GB10 (unified memory): Ray's memory monitor off on the gpu hosts' nodes (compose: the head too
            # where it shares a gpu host; kubernetes: the GB10 node's worker).
            "unified_memory_hosts": frozenset(gpu_hosts if PROFILES[cfg.vllm.host_profile].unified else ()),
            "worker_depends_on": {}
            if distributed
            else {host: replica_server_names(VLLM, host, [s.port for s in model_servers[1:]]) for host in gpu_hosts},
        },
    )
    vllm = VllmService(
        VLLM,
        {
            "platform": platform,
            "image": vllm_image_ref,
            "hosts": gpu_hosts,
            "settings": cfg.vllm,
            "engine_args": model_servers[0].engine_args,
            "hf_token": secrets.hf_token,
            "ray_gcs_address": ray.gcs_address,
            "ray_client_environment": ray.client_environment,
            "ray_client_secrets": ray.client_secrets,
            "ray_head_service": ray.head_service,
            "memory_limit": vllm_limit,
            "headroom": model_servers[0].headroom,
            "more_models": [
                ModelServer(s.served_name, s.model, s.port, s.engine_args, s.memory_limit, s.headroom)
                for s in model_servers[1:]
            ],
            "clients": VLLM_CLIENTS,
        },
    )
    lb = LoadBalancer(
        "lb",
        {
            "platform": platform,
            "host": placement.lb,
            "backends": vllm.backends,
            "model_backends": vllm.model_backends,
            "settings": cfg.lb,
            "backend_key": vllm.api_key,
            "tls": served_tls,
            "keys_image": runtime_image_ref,  # kubernetes: the key manager sidecar (runtime.lbkeys)
        },
    )
    if lb.keys_dir is not None:  # its admin socket is where runtime.lbdrain drains and readies servers
        platform.roll(
            Rollout(
                lb_host=placement.lb,
                keys_dir=lb.keys_dir,
                # haproxy.cfg names each server after its host, in every offered model's backend
                servers={h: (h,) for h in vllm.services_by_host},
                services=vllm.services_by_host,
                tool_image=runtime_image_ref,
                drain_timeout_s=cfg.lb.drain_timeout_s,
            )
        )
    offline = cfg.batch.engine == "offline"
    # A memory guard on each host that runs GPU work: the gpu hosts, and the batch host of an offline engine
    # (kubernetes: the GB10 node, where both run).
    guard_hosts = [*gpu_hosts]
    if offline and cfg.platform is Platform.COMPOSE and placement.batch not in guard_hosts:
        guard_hosts.append(placement.batch)
    worker_host = placement.batch if cfg.platform is Platform.COMPOSE else K8S_GPU_PLACEMENT
    worker_guard = worker_host if worker_host in guard_hosts and (offline or cfg.platform is Platform.COMPOSE) else None
    batch = BatchService(
        "batch",
        {
            "platform": platform,
            "host": placement.batch,
            "api_image": runtime_image_ref,
            "worker_image": vllm_image_ref if cfg.batch.engine == "offline" else runtime_image_ref,
            "settings": cfg.batch,
            "model": cfg.vllm.served_name,
            "models": [m.served_name for m in offered],
            "vllm_base_url": lb.internal_url,
            "vllm_api_key": lb.worker_key,
            "redis_url": redis.batch_url,  # its ACL user: the batch keys and data commands only
            "redis_maxmemory_bytes": redis.maxmemory_bytes,
            "s3_endpoint": store.endpoint,
            "s3_bucket": store.bucket,
            # The scoped users the bucket set-up makes, never the root key (README "Object store").
            "s3_access_key": store.batch_access_key,
            "s3_secret_key": store.batch_secret_key,
            "backup_access_key": store.backup_access_key,
            "backup_secret_key": store.backup_secret_key,
            "retention_days": cfg.data.result_retention_days,
            "model_path": cfg.vllm.model,
            "engine_args": vllm_engine_args,
            "model_paths": {m.served_name: m.model for m in offered},
            "model_engine_args": offline_engine_args,
            "hf_token": secrets.hf_token,
            # Both fail their health checks while Redis is down: on its host they start once it is healthy.
            "depends_on": (store.setup_service, redis.service),
            "tls": served_tls,
            "headroom": _largest(headroom_need(cfg, p, offline_engine_args[name]) for name, p in offline_plans.items()),
            "memguard_host": worker_guard,
        },
    )
    vllm_servers = {h: replica_server_names(VLLM, h, [s.port for s in model_servers[1:]]) for h in gpu_hosts}
    if distributed:  # one server on the leading host; the others' Ray workers run its workers
        vllm_servers = {h: (f"{VLLM}-{h}",) if i == 0 else (ray.worker_services[h],) for i, h in enumerate(gpu_hosts)}

    def shed_order(host: str) -> tuple[str, ...]:
        """`memguardShed` on `host`: each role's services there, in the configured order."""
        roles = {
            "ray-worker": () if distributed else tuple(s for h, s in ray.worker_services.items() if h == host),
            "batch-worker": (batch.worker_service,) if offline and host == placement.batch else (),
            "vllm": vllm_servers.get(host, ()),
        }
        return tuple(service for role in cfg.memguard.shed for service in roles[role])

    memguard = MemoryGuard(
        "memguard",
        {
            "platform": platform,
            "image": runtime_image_ref,
            "hosts": guard_hosts,
            "settings": cfg.memguard,
            "redis_url": redis.memguard_url,
            "shed": {host: shed_order(host) for host in guard_hosts},
        },
    )
    monitoring = Monitoring(
        "monitoring",
        {
            "platform": platform,
            "host": data_host,
            "gpu_hosts": gpu_hosts,
            "node_hosts": placement.nodes,
            "jobs": [
                ScrapeJob("vllm", tuple(a for backends in vllm.model_backends.values() for _, a in backends)),
                ScrapeJob("haproxy", (lb.stats_address,)),
                ScrapeJob("batch-api", (batch.metrics_targets["batch-api"],)),
                ScrapeJob("batch-worker", (batch.metrics_targets["batch-worker"],)),
                ScrapeJob("ray", tuple(ray.metrics_targets)),
                ScrapeJob("memguard", tuple(memguard.metrics_targets)),
            ],
            "settings": cfg.monitoring,
            "tls": served_tls,
        },
    )
    PostDeployCheck(
        "post-deploy-check",
        {
            "platform": platform,
            "host": placement.lb,
            "image": runtime_image_ref,
            "vllm_urls": vllm.urls,
            "lb_url": lb.internal_url,
            "lb_api_key": lb.api_key,
            "batch_api_url": batch.internal_url,
            "model": cfg.vllm.served_name,
            "ca_b64": served_tls.ca_b64 if served_tls else None,
        },
    )
    platform.finish()
    return {
        "grafanaUrl": monitoring.grafana_url,
        "grafanaAdminPassword": monitoring.grafana_password,
        "prometheusUrl": monitoring.prometheus_url,
        "loadBalancerUrl": lb.url,
        "loadBalancerStatsUrl": lb.stats_url,
        "loadBalancerApiKey": lb.api_key,
        "vllmUrls": vllm.urls,
        "servedModelName": cfg.vllm.served_name,
        "batchApiUrl": batch.url,
        "batchApiKey": batch.api_key,
        "rayDashboardUrl": ray.dashboard_url,
        "rayJobsAddress": ray.dashboard_url,
        "rayClientAddress": ray.client_address,
        "rayAuthToken": ray.auth_token,
        "minioEndpoint": store.endpoint,
        "minioBucket": store.bucket,
        "minioAccessKey": store.access_key,
        "minioSecretKey": store.secret_key,
        "postgresUrl": postgres.url,
        "redisUrl": redis.url,
        "vllmImage": vllm_image_ref,
        "runtimeImage": runtime_image_ref,
        # Clients trust it for the https endpoints; empty with the operator's own certificate (tlsCertificate).
        "tlsCaCertificate": public_tls.ca_pem,
    }


def main() -> None:
    cfg = read_config()
    for name, value in declare(cfg, read_secrets(cfg)).items():
        pulumi.export(name, value)
