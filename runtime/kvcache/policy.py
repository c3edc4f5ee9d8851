"""The KV-cache policy: which KV dtype and how much memory, so vLLM starts and serves the target.

Facts it encodes (vLLM V1; see DESIGN.md): fp8 KV halves bytes per token (`kv_cache_dtype=fp8`,
scales from the checkpoint, else 1.0); `swap_space` does nothing and `cpu_offload_gb` moves
weights, not KV; KV offload is `kv_offloading_size` + `kv_offloading_backend` and frees nothing on
unified memory; on GB10 the utilisation fraction is not a hard cap at start-up, so the KV cache
is sized explicitly with `kv_cache_memory_bytes` and utilisation stays at 0.85 or lower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.kvcache.hosts import GIB, HostProfile
from runtime.kvcache.model import ModelShape

FP8_BYTES = 1
DEFAULT_BLOCK_SIZE = 16
DEFAULT_CONTEXT_CAP = 32768  # when no max_model_len is asked for: the model's maximum, up to this
PREFIX_CACHE_HEADROOM = 1.25  # explicit KV size over the live demand, for prefix-cache reuse


class PlanError(ValueError):
    """The target cannot work on this host; the message says what would fit.

    `target` names what to change: "model" (weights), "max_model_len" or "concurrency".
    """

    def __init__(self, message: str, target: str = "model"):
        super().__init__(message)
        self.target = target


@dataclass(frozen=True)
class Target:
    max_model_len: int | None = None
    concurrency: int = 1
    block_size: int = DEFAULT_BLOCK_SIZE


def sequence_bytes(model: ModelShape, tokens: int, kv_dtype_bytes: int, block_size: int) -> int:
    """KV bytes one sequence of `tokens` holds: whole blocks; sliding layers keep only the window."""
    blocks = -(-tokens // block_size)
    full = model.full_layers * blocks
    if model.sliding_layers:
        window_blocks = -(-min(tokens, model.sliding_window or tokens) // block_size) + 1
        full += model.sliding_layers * min(blocks, window_blocks)
    return full * block_size * model.layer_bytes_per_token(kv_dtype_bytes)


def tokens_for_budget(model: ModelShape, budget_bytes: int, kv_dtype_bytes: int, block_size: int) -> int:
    """KV tokens vLLM can hold in `budget_bytes` (whole blocks across every full-attention layer)."""
    layers = model.full_layers if model.sliding_layers else model.num_layers
    block_bytes = block_size * model.layer_bytes_per_token(kv_dtype_bytes) * max(layers, 1)
    return (budget_bytes // block_bytes) * block_size


@dataclass
class KvPlan:
    model: str
    host: str
    weights_bytes: int
    weights_estimated: bool
    kv_bytes_per_token: dict[str, int]
    gpu_memory_utilization: float
    kv_budget_bytes: int
    kv_tokens: dict[str, int]
    target_tokens: int
    kv_cache_dtype: str
    fp8_needed: bool
    fits_target: bool
    max_model_len: int
    max_num_seqs: int
    full_context_sequences: dict[str, int]
    kv_cache_memory_bytes: int | None
    enable_prefix_caching: bool
    kv_offloading_size_gib: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def engine_args(self) -> dict[str, Any]:
        """vLLM engine keyword arguments (EngineArgs / LLM(...) names)."""
        args: dict[str, Any] = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "enable_prefix_caching": self.enable_prefix_caching,
        }
        if self.kv_cache_memory_bytes is not None:
            args["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        if self.kv_offloading_size_gib is not None:
            args["kv_offloading_size"] = self.kv_offloading_size_gib
            args["kv_offloading_backend"] = "native"
        return args

    @property
    def cli_flags(self) -> list[str]:
        return engine_args_to_flags(self.engine_args)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "engine_args": self.engine_args, "cli_flags": self.cli_flags}


def engine_args_to_flags(args: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        else:
            flags += [flag, f"{value:.2f}" if isinstance(value, float) else str(value)]
    return flags


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / 1024**2:.1f} MiB"


def plan(model: ModelShape, host: HostProfile, target: Target, reserved_gib: float = 0.0) -> KvPlan:
    """Decide KV dtype and sizes for `target` on `host`; raise PlanError when it cannot work.

    `reserved_gib`: memory the services beside vLLM may use on a unified-memory host. It comes out of
    vLLM's share (the profile's headroom stays for the OS); a discrete GPU's memory is vLLM's alone.
    """
    if target.concurrency < 1:
        raise PlanError(f"concurrency must be at least 1, not {target.concurrency}", "concurrency")
    max_len = target.max_model_len or min(model.max_position_embeddings, DEFAULT_CONTEXT_CAP)
    if max_len > model.max_position_embeddings:
        raise PlanError(
            f"max_model_len {max_len} is beyond {model.name}'s max_position_embeddings "
            f"{model.max_position_embeddings}; use {model.max_position_embeddings} or less",
            "max_model_len",
        )
    util = host.max_gpu_memory_utilization
    if host.unified and reserved_gib > 0:
        util = math.floor((util - reserved_gib / host.gpu_memory_gib) * 100) / 100
        if util <= 0:
            raise PlanError(
                f"the services beside vLLM reserve {reserved_gib:.1f} GiB of {host.name}'s "
                f"{host.gpu_memory_gib:g} GiB, leaving vLLM nothing within gpu_memory_utilization "
                f"{host.max_gpu_memory_utilization:.2f}; move roles to another host",
                "reserved",
            )
        notes_reserved = [
            f"{reserved_gib:.1f} GiB reserved for the services beside vLLM on this host: gpu_memory_utilization "
            f"{host.max_gpu_memory_utilization:.2f} - {reserved_gib:.1f}/{host.gpu_memory_gib:g} = {util:.2f}"
        ]
    else:
        notes_reserved = []
    usable = int(host.gpu_memory_gib * GIB * util)
    overhead = int(host.overhead_gib * GIB)
    budget = usable - model.weights_bytes - overhead
    if budget <= 0:
        need = (model.weights_bytes + overhead) / (GIB * util)
        raise PlanError(
            f"{model.name} weights ({_gib(model.weights_bytes)}) and vLLM overhead ({_gib(overhead)}) exceed "
            f"the {_gib(usable)} usable on {host.name} at gpu_memory_utilization {util:.2f}; it would fit on a "
            f"GPU with more than {need:.0f} GiB, or with weights quantized below {_gib(usable - overhead)}"
        )
    bs = target.block_size
    widths = {"auto": model.dtype_bytes, "fp8": FP8_BYTES}
    seq = {name: sequence_bytes(model, max_len, width, bs) for name, width in widths.items()}
    fit_seqs = {name: budget // seq[name] for name in widths}
    if fit_seqs["fp8"] < 1:
        longest = {
            name: max(bs, (tokens_for_budget(model, budget, width, bs) // bs) * bs) for name, width in widths.items()
        }
        raise PlanError(
            f"one sequence of {max_len} tokens needs {_gib(seq['fp8'])} of KV even in fp8, but only {_gib(budget)} "
            f"is left on {host.name} after the weights; max_model_len up to {longest['fp8']} fits with fp8 "
            f"({longest['auto']} with auto)",
            "max_model_len",
        )
    notes: list[str] = list(notes_reserved)
    if fit_seqs["auto"] >= target.concurrency:
        dtype, fp8_needed, fits = "auto", False, True
    elif fit_seqs["fp8"] >= target.concurrency:
        dtype, fp8_needed, fits = "fp8", True, True
        notes.append(f"fp8 KV needed: {target.concurrency} x {max_len} tokens fit only at 1 byte per value")
    else:
        dtype, fp8_needed, fits = "fp8", True, False
        notes.append(
            f"target {target.concurrency} x {max_len} tokens does not fit even with fp8: {fit_seqs['fp8']} sequences "
            "at full context fit; vLLM queues the rest, and more fit when prompts are shorter"
        )
    demand = seq[dtype] * target.concurrency
    kv_memory = None
    offload = None
    if host.unified:
        kv_memory = min(budget, int(demand * PREFIX_CACHE_HEADROOM))
        notes.append(
            f"unified memory: KV sized explicitly to {_gib(kv_memory)} (kv_cache_memory_bytes: the target plus 25% "
            "for prefix-cache reuse), leaving the rest of the pool to the OS and co-located services; KV offload "
            "would use the same memory, so none"
        )
    elif not fits and host.host_ram_gib:
        offload = round(min((demand - budget) / GIB, host.host_ram_gib * 0.5), 1)
        notes.append(f"KV offload of {offload} GiB to CPU RAM keeps evicted prefix blocks reusable")
    if model.weights_estimated:
        notes.append("weights size estimated from config.json (no safetensors index given)")
    return KvPlan(
        model=model.name,
        host=host.name,
        weights_bytes=model.weights_bytes,
        weights_estimated=model.weights_estimated,
        kv_bytes_per_token={name: model.kv_bytes_per_token(width) for name, width in widths.items()},
        gpu_memory_utilization=util,
        kv_budget_bytes=budget,
        kv_tokens={name: tokens_for_budget(model, budget, width, bs) for name, width in widths.items()},
        target_tokens=target.concurrency * max_len,
        kv_cache_dtype=dtype,
        fp8_needed=fp8_needed,
        fits_target=fits,
        max_model_len=max_len,
        max_num_seqs=target.concurrency,
        full_context_sequences=fit_seqs,
        kv_cache_memory_bytes=kv_memory,
        enable_prefix_caching=True,
        kv_offloading_size_gib=offload,
        notes=notes,
    )


def report(p: KvPlan) -> str:
    """A short report for a person."""
    lines = [
        f"{p.model} on {p.host}",
        f"  weights           {_gib(p.weights_bytes)}{' (estimated)' if p.weights_estimated else ''}",
        f"  KV per token      {p.kv_bytes_per_token['auto']:,} B auto, {p.kv_bytes_per_token['fp8']:,} B fp8",
        f"  KV budget         {_gib(p.kv_budget_bytes)} at gpu_memory_utilization {p.gpu_memory_utilization:.2f}",
        f"  KV tokens         {p.kv_tokens['auto']:,} auto, {p.kv_tokens['fp8']:,} fp8",
        f"  target            {p.max_num_seqs} x {p.max_model_len} = {p.target_tokens:,} tokens"
        f" -> {'fits' if p.fits_target else 'does not fit'} with kv_cache_dtype={p.kv_cache_dtype}",
        f"  full-context seqs {p.full_context_sequences['auto']} auto, {p.full_context_sequences['fp8']} fp8",
        *(f"  note: {n}" for n in p.notes),
        "  vllm flags: " + " ".join(p.cli_flags),
    ]
    return "\n".join(lines)
