"""vLLM engine arguments for the stack: the KV policy (runtime.kvcache) plus explicit overrides.

A stack says what it wants (model, context, concurrency, host profile); the policy decides KV dtype
and sizes; `gpuMemoryUtilization`, `kvCacheDtype` and `kvCacheMemoryBytes` override it when set,
and `vllmExtraArgs` are appended last. Runs before any resource, so a target that cannot work
fails with the stack file and key named.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.config import (
    PROJECT,
    ConfigError,
    OfferedModel,
    Parallelism,
    Platform,
    Role,
    StackConfig,
    stack_file,
)
from infra.memory import colocated, gpu_node_reserved_gib, reserved_gib
from runtime.headroom import Need
from runtime.kvcache import (
    PROFILES,
    HostProfile,
    KvPlan,
    ModelConfigError,
    ModelShape,
    PlanError,
    Target,
    load_model_shape,
    plan,
)
from runtime.kvcache.catalog import catalog_config, catalog_models
from runtime.kvcache.policy import FP8_BYTES, PREFIX_CACHE_HEADROOM, sequence_bytes

POLICY_KEYS = {"model": "model", "max_model_len": "maxModelLen", "concurrency": "maxNumSeqs", "reserved": "hosts"}
# Beyond what vLLM allocates for weights, KV and its overhead: the API server, tokenizers, Python.
PROCESS_HEADROOM_GIB = 4


def size_vllm(cfg: StackConfig, project_dir: Path) -> KvPlan:
    """The vLLM servers' plan: the default model on each GPU host, with that host's neighbours reserved."""
    vllm = cfg.vllm
    fail = _failing(cfg)
    config_path = model_config_path(vllm.offered[0], project_dir, fail, key_prefix="")
    if vllm.host_profile not in PROFILES:
        raise fail("hostProfile", f"{vllm.host_profile!r} is not one of {', '.join(sorted(PROFILES))}")
    _refuse_two_engines(cfg)
    check_model_ports(cfg)
    try:
        return _plan(cfg, config_path)
    except ModelConfigError as err:
        raise fail("modelConfigFile", str(err)) from None
    except PlanError as err:
        raise fail(POLICY_KEYS[err.target], str(err)) from None


def size_offered_models(cfg: StackConfig, project_dir: Path, default_plan: KvPlan) -> dict[str, KvPlan]:
    """The offline batch engine's plan per offered model (served name -> plan, the default first).

    The engine loads one model at a time, so each is sized on its own, exactly as the default model is
    (same host profile, target and reserved memory: `default_plan` is reused for the default model);
    one that cannot work is refused naming its `models` entry and what the policy says.
    """
    fail = _failing(cfg)
    plans = {cfg.vllm.served_name: default_plan}
    for i, entry in enumerate(cfg.vllm.models):
        config_path = model_config_path(entry, project_dir, fail, key_prefix=f"models[{i}].")
        try:
            plans[entry.served_name] = _plan(cfg, config_path)
        except ModelConfigError as err:
            raise fail(f"models[{i}].modelConfigFile", str(err)) from None
        except PlanError as err:
            raise fail(
                f"models[{i}]",
                f"offered model {entry.served_name!r} ({entry.model}) cannot be sized for the offline batch engine "
                f"(maxModelLen {cfg.vllm.max_model_len}, maxNumSeqs {cfg.vllm.max_num_seqs}, hostProfile "
                f"{cfg.vllm.host_profile}): {err}",
            ) from None
    return plans


def model_config_path(
    offered: OfferedModel, project_dir: Path, fail: Callable[[str, str], ConfigError], key_prefix: str
) -> Path:
    """An offered model's config.json: its modelConfigFile, else the bundled catalog's."""
    key = f"{key_prefix}modelConfigFile"
    if offered.model_config_file:
        config_path = project_dir / offered.model_config_file
        if not config_path.is_file():
            raise fail(key, f"no file {offered.model_config_file!r} under the project directory")
        return config_path
    found = catalog_config(offered.model)
    if found is None:
        raise fail(
            key,
            f"no bundled config.json for model {offered.model!r} (bundled: {', '.join(catalog_models())}); "
            f"download it (huggingface-cli download {offered.model} config.json) and set {key}",
        )
    return found


def _failing(cfg: StackConfig) -> Callable[[str, str], ConfigError]:
    where = stack_file(cfg.stack)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {PROJECT}:{key}: {message}")

    return fail


def _plan(cfg: StackConfig, config_path: Path) -> KvPlan:
    """One model on the stack's GPU hosts: the stack's target and host profile, the neighbours reserved."""
    vllm = cfg.vllm
    gpus = 1 if vllm.parallelism is Parallelism.REPLICA else len(cfg.hosts_with(Role.GPU))
    reserved = reserved_gib(cfg) if cfg.platform is Platform.COMPOSE else gpu_node_reserved_gib()
    shape = load_model_shape(config_path).per_gpu(gpus, vllm.parallelism.value)
    target = Target(vllm.max_model_len, vllm.max_num_seqs)
    return plan(shape, PROFILES[vllm.host_profile], target, reserved_gib=reserved)


def _refuse_two_engines(cfg: StackConfig) -> None:
    """The offline batch engine is a second vLLM: beside a vLLM server on one GB10 it would get no memory
    (vLLM refuses, or the box freezes), so it needs a host of its own."""
    if cfg.platform is not Platform.COMPOSE or cfg.batch.engine != "offline":
        return
    batch = cfg.host_with(Role.BATCH)
    if Role.GPU in batch.roles:
        raise ConfigError(
            f"{stack_file(cfg.stack)}: {PROJECT}:batchEngine: offline runs a second vLLM engine on host {batch.name}, "
            f"which already serves vLLM (role gpu): two engines on one GB10 cannot be sized together; give the batch "
            f"role to a host without the gpu role, or use batchEngine http"
        )


def vllm_memory_limit(cfg: StackConfig, kv_plan: KvPlan, args: dict[str, Any]) -> str:
    """vllmMemoryLimit, else what the engine may use (its gpu_memory_utilization of the host) plus headroom."""
    if cfg.vllm.memory_limit:
        return cfg.vllm.memory_limit
    util = float(args.get("gpu_memory_utilization", kv_plan.gpu_memory_utilization))
    return f"{math.ceil(util * PROFILES[cfg.vllm.host_profile].gpu_memory_gib) + PROCESS_HEADROOM_GIB}g"


def engine_args(cfg: StackConfig, kv_plan: KvPlan) -> dict[str, Any]:
    """The policy's engine arguments with the stack's explicit overrides applied."""
    args = dict(kv_plan.engine_args)
    vllm = cfg.vllm
    if vllm.gpu_memory_utilization:
        args["gpu_memory_utilization"] = vllm.gpu_memory_utilization
    if vllm.kv_cache_dtype:
        args["kv_cache_dtype"] = vllm.kv_cache_dtype
    if vllm.kv_cache_memory_bytes:
        args["kv_cache_memory_bytes"] = vllm.kv_cache_memory_bytes
    return args


GIB = 1024**3


def headroom_need(cfg: StackConfig, kv_plan: KvPlan, args: dict[str, Any]) -> Need | None:
    """What an engine's host must have available before it starts (runtime.headroom): the plan's weights, its
    KV cache (kv_cache_memory_bytes as the engine gets it, else the policy's KV budget), the profile's vLLM
    overhead, and memoryReserveGib. None on a discrete GPU, where weights and KV are not the host's memory."""
    profile = PROFILES[cfg.vllm.host_profile]
    if not profile.unified:
        return None
    kv = int(args.get("kv_cache_memory_bytes") or kv_plan.kv_budget_bytes)
    return Need(
        weights=kv_plan.weights_bytes,
        kv=kv,
        overhead=round(profile.overhead_gib * GIB),
        reserve=round(cfg.vllm.memory_reserve_gib * GIB),
    )


@dataclass(frozen=True)
class ModelServerPlan:
    """One offered model's vLLM server on each gpu host: its port, its KV plan and its engine arguments."""

    served_name: str
    model: str
    port: int
    kv_plan: KvPlan
    engine_args: dict[str, Any]
    memory_limit: str
    headroom: Need | None = None  # what its host must have available when it starts (unified memory)


def model_port(cfg: StackConfig, index: int) -> int:
    """The port of the offered model at `index` (0: the default model, on vllmPort; then vllmPort + index)."""
    return cfg.vllm.port + index


def check_model_ports(cfg: StackConfig) -> None:
    """Each offered model's server port (vllmPort, vllmPort + 1, ...) must be free of the stack's other ports:
    a configured one (named by its key) or one the components fix (the batch services' internal ports, the
    exporters', the Ray agents'). Compose only: kubernetes gives each service its own address."""
    if cfg.platform is not Platform.COMPOSE:
        return
    from infra.components.batch import API_INTERNAL_PORT, WORKER_METRICS_PORT
    from infra.components.monitoring import DCGM_PORT, NODE_PORT
    from infra.components.ray_cluster import WORKER_AGENT_PORT
    from infra.components.vllm import RAY_AGENT_PORT

    taken: dict[int, str] = {
        WORKER_METRICS_PORT: "the batch worker's /metrics port",
        API_INTERNAL_PORT: "the batch API's internal port",
        DCGM_PORT: "the DCGM exporter's port",
        NODE_PORT: "the node exporter's port",
        52365: "the Ray head's dashboard agent port",
        WORKER_AGENT_PORT: "the Ray workers' dashboard agent port",
        RAY_AGENT_PORT: "vLLM's Ray agent port",
    }
    keyed = {
        "lbPort": cfg.lb.port,
        "lbStatsPort": cfg.lb.stats_port,
        "redisPort": cfg.data.redis_port,
        "postgresPort": cfg.data.postgres_port,
        "minioPort": cfg.data.minio_port,
        "minioConsolePort": cfg.data.minio_console_port,
        "rayGcsPort": cfg.ray.gcs_port,
        "rayDashboardPort": cfg.ray.dashboard_port,
        "rayClientPort": cfg.ray.client_port,
        "rayMetricsPort": cfg.ray.metrics_port,
        "batchApiPort": cfg.batch.api_port,
        "prometheusPort": cfg.monitoring.prometheus_port,
        "grafanaPort": cfg.monitoring.grafana_port,
    }
    taken |= {port: f"{PROJECT}:{key}" for key, port in keyed.items()}
    for i, host in enumerate(cfg.hosts):
        if Role.GPU in host.roles:
            taken.setdefault(host.ssh_port, f"{PROJECT}:hosts[{i}].sshPort (host {host.name})")
    fail = _failing(cfg)
    for index, offered in enumerate(cfg.vllm.offered):
        port = model_port(cfg, index)
        owner = taken.get(port)
        if owner is None:
            continue
        if index == 0:
            raise fail("vllmPort", f"port {port} of the default model's vLLM servers is also {owner}; choose another")
        raise fail(
            f"models[{index - 1}]",
            f"offered model {offered.served_name!r} gets port {port} (vllmPort {cfg.vllm.port} + {index}) for its "
            f"vLLM servers, which is also {owner}; move vllmPort or that port so that vllmPort.."
            f"vllmPort+{len(cfg.vllm.offered) - 1} are free",
        )


def size_model_servers(cfg: StackConfig, project_dir: Path, default_plan: KvPlan) -> list[ModelServerPlan]:
    """The vLLM servers on each gpu host, one per offered model, the default first.

    One offered model: the default's plan as it always was (`default_plan`, the host's whole share).
    Several (compose, replica): they share each gpu host's memory, so they are sized together. Every
    model needs at least its weights, vLLM's overhead and one full-context sequence of KV in fp8; if
    those add up to more than the host's usable memory (the profile's utilisation ceiling less what the
    services beside vLLM reserve) the stack is refused naming the models and the figures. Otherwise each
    model gets that minimum plus a part of the rest in proportion to what its target (maxNumSeqs full
    contexts in auto KV, plus 25% for prefix caching) still wants, in whole percent of the host; the KV
    policy then sizes each model within its share (auto or fp8 KV, kv_cache_memory_bytes). An explicit
    gpuMemoryUtilization is each server's share, and they must add up to no more than the usable memory.
    """
    offered = cfg.vllm.offered
    default = offered[0]
    if len(offered) == 1:
        args = engine_args(cfg, default_plan)
        return [
            ModelServerPlan(
                default.served_name,
                default.model,
                model_port(cfg, 0),
                default_plan,
                args,
                vllm_memory_limit(cfg, default_plan, args),
                headroom_need(cfg, default_plan, args),
            )
        ]
    vllm, fail = cfg.vllm, _failing(cfg)
    profile = PROFILES[vllm.host_profile]
    keys = ["", *(f"models[{i}]." for i in range(len(vllm.models)))]
    shapes: list[ModelShape] = []
    for entry, prefix in zip(offered, keys, strict=True):
        try:
            config_path = model_config_path(entry, project_dir, fail, key_prefix=prefix)
            shapes.append(load_model_shape(config_path).per_gpu(1, vllm.parallelism.value))
        except ModelConfigError as err:
            raise fail(f"{prefix}modelConfigFile", str(err)) from None
    reserved = reserved_gib(cfg) if profile.unified else 0.0
    pool = math.floor((profile.max_gpu_memory_utilization - reserved / profile.gpu_memory_gib) * 100 + 1e-9)
    total_bytes = profile.gpu_memory_gib * GIB

    def percent(nbytes: float) -> int:
        return max(1, math.ceil((nbytes + 4096) / total_bytes * 100 - 1e-9))

    overhead = profile.overhead_gib * GIB
    minimum, wanted, parts = [], [], []
    block = Target().block_size
    for shape in shapes:
        one_fp8 = sequence_bytes(shape, vllm.max_model_len, FP8_BYTES, block)
        target = sequence_bytes(shape, vllm.max_model_len, shape.dtype_bytes, block) * vllm.max_num_seqs
        minimum.append(percent(shape.weights_bytes + overhead + one_fp8))
        wanted.append(max(minimum[-1], percent(shape.weights_bytes + overhead + target * PREFIX_CACHE_HEADROOM)))
        parts.append((shape.weights_bytes / GIB, one_fp8 / GIB))
    if vllm.gpu_memory_utilization:
        shares = [round(vllm.gpu_memory_utilization * 100)] * len(offered)
        if sum(shares) > pool:
            each = ", ".join(f"{m.served_name!r}" for m in offered)
            gib = vllm.gpu_memory_utilization * profile.gpu_memory_gib
            raise fail(
                "gpuMemoryUtilization",
                f"the offered models {each} get gpuMemoryUtilization {vllm.gpu_memory_utilization:.2f} each "
                f"({gib:.1f} GiB) on every gpu host: together {len(offered) * gib:.1f} GiB, but only "
                f"{_usable(cfg, profile, reserved, pool)}; lower gpuMemoryUtilization or offer fewer models",
            )
    elif sum(minimum) > pool:
        each = ", ".join(
            f"{m.served_name!r} ({m.model}) at least {need * profile.gpu_memory_gib / 100:.1f} GiB ("
            f"{weights:.1f} GiB weights + {profile.overhead_gib:g} GiB vLLM overhead + {kv:.2f} GiB KV for one "
            f"{vllm.max_model_len}-token sequence in fp8)"
            for m, need, (weights, kv) in zip(offered, minimum, parts, strict=True)
        )
        raise fail(
            "models",
            f"the offered models share each gpu host's memory and cannot fit together: {each}; together "
            f"{sum(minimum) * profile.gpu_memory_gib / 100:.1f} GiB, but only {_usable(cfg, profile, reserved, pool)}; "
            f"offer fewer or smaller models, lower maxModelLen, or move roles off the gpu hosts",
        )
    elif sum(wanted) <= pool:
        spare = pool - sum(wanted)
        shares = [w + spare * w // sum(wanted) for w in wanted]
    else:
        spare, extra = pool - sum(minimum), [w - m for w, m in zip(wanted, minimum, strict=True)]
        shares = [m + spare * e // sum(extra) for m, e in zip(minimum, extra, strict=True)]
    servers = []
    for index, (entry, shape, share) in enumerate(zip(offered, shapes, shares, strict=True)):
        own = dataclasses.replace(profile, max_gpu_memory_utilization=share / 100)
        try:
            kv_plan = plan(shape, own, Target(vllm.max_model_len, vllm.max_num_seqs))
        except PlanError as err:
            key = POLICY_KEYS[err.target] if index == 0 else f"models[{index - 1}]"
            raise fail(
                key,
                f"offered model {entry.served_name!r} ({entry.model}) within its share of each gpu host "
                f"(gpu_memory_utilization {share / 100:.2f}, beside {len(offered) - 1} more offered model(s)): {err}",
            ) from None
        kv_plan.notes.insert(
            0,
            f"{len(offered)} offered models share each gpu host: this one gets gpu_memory_utilization "
            f"{share / 100:.2f} of the {pool / 100:.2f} left beside the other services",
        )
        args = engine_args(cfg, kv_plan)
        limit = vllm_memory_limit(cfg, kv_plan, args)
        servers.append(
            ModelServerPlan(
                entry.served_name,
                entry.model,
                model_port(cfg, index),
                kv_plan,
                args,
                limit,
                headroom_need(cfg, kv_plan, args),
            )
        )
    return servers


def _usable(cfg: StackConfig, profile: HostProfile, reserved: float, pool: int) -> str:
    """`N GiB is usable for vLLM on <host> (...)`: the gpu host whose neighbours reserve the most."""
    gpu_hosts = cfg.hosts_with(Role.GPU)
    crowded = max(gpu_hosts, key=lambda h: sum(colocated(cfg, h.name).values())).name if gpu_hosts else "?"
    return (
        f"{pool * profile.gpu_memory_gib / 100:.1f} GiB is usable for vLLM on gpu host {crowded} "
        f"(gpu_memory_utilization {profile.max_gpu_memory_utilization:.2f} of {profile.gpu_memory_gib:g} GiB, "
        f"less {reserved:.1f} GiB reserved for the services beside vLLM)"
    )
