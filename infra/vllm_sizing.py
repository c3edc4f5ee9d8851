"""vLLM engine arguments for the stack: the KV policy (runtime.kvcache) plus explicit overrides.

A stack says what it wants (model, context, concurrency, host profile); the policy decides KV dtype
and sizes; `gpuMemoryUtilization`, `kvCacheDtype` and `kvCacheMemoryBytes` override it when set,
and `vllmExtraArgs` are appended last. Runs before any resource, so a target that cannot work
fails with the stack file and key named.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from infra.memory import gpu_node_reserved_gib, reserved_gib
from runtime.kvcache import PROFILES, KvPlan, ModelConfigError, PlanError, Target, load_model_shape, plan
from runtime.kvcache.catalog import catalog_config, catalog_models

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
