"""Checks of the policy against vLLM itself: KV capacity at a fixed budget, and the fp8 quality gate.

Both load a real model with vLLM (CPU build here, CUDA on a GPU host); import vllm lazily so that
`plan` works without vLLM installed.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from runtime.kvcache.model import load_model_shape
from runtime.kvcache.policy import FP8_BYTES, tokens_for_budget

T = TypeVar("T")
SAMPLE_TEXT = (
    "Grace Blackwell boxes serve language models with unified memory. A batch of requests is split into "
    "chunks and checkpointed after each chunk, so that a worker that dies resumes where it stopped. Sticky "
    "sessions keep the prefix cache warm on one backend, and the load balancer spills a session to the next "
    "backend on the ring only when the preferred one is over its bound. "
) * 8


def _with_engine(model: Path, work: Callable[[Any], T], **engine_args: Any) -> T:
    """Run `work` on a vLLM engine that is released before returning (one model in memory at a time;
    no reference to the engine escapes)."""
    from vllm import LLM

    llm = LLM(model=str(model), enforce_eager=True, **engine_args)
    try:
        return work(llm)
    finally:
        del llm
        gc.collect()


def probe_capacity(model: Path, kv_cache_memory_bytes: int, kv_cache_dtype: str, max_model_len: int) -> dict[str, Any]:
    """vLLM's KV capacity for an explicit KV budget, beside the policy's prediction for it."""
    engine_args = {"kv_cache_memory_bytes": kv_cache_memory_bytes, "kv_cache_dtype": kv_cache_dtype}

    def blocks(llm: Any) -> tuple[int, int]:
        cache = llm.llm_engine.vllm_config.cache_config
        return cache.block_size, cache.num_gpu_blocks

    block_size, num_blocks = _with_engine(model, blocks, max_model_len=max_model_len, **engine_args)
    shape = load_model_shape(model / "config.json")
    width = FP8_BYTES if kv_cache_dtype.startswith("fp8") else shape.dtype_bytes
    return {
        "kv_cache_dtype": kv_cache_dtype,
        "kv_cache_memory_bytes": kv_cache_memory_bytes,
        "block_size": block_size,
        "num_blocks": num_blocks,
        "vllm_tokens": num_blocks * block_size,
        "predicted_tokens": tokens_for_budget(shape, kv_cache_memory_bytes, width, block_size),
    }


def default_memory_utilization() -> float:
    """On vLLM's CPU backend the fraction reserves host memory: keep it small there."""
    from vllm.platforms import current_platform

    return 0.2 if current_platform.is_cpu() else 0.85


def perplexity(
    model: Path, kv_cache_dtype: str, text: str, chunk_tokens: int, max_model_len: int, memory_utilization: float
) -> float:
    """Perplexity of `text` from vLLM's prompt logprobs.

    Chunked prefill in `chunk_tokens` pieces makes every later chunk attend to the earlier ones
    through the KV cache, so the cache's dtype affects the result as it does in serving.
    """
    from vllm import SamplingParams

    def prompt_logprobs(llm: Any) -> tuple[list[int], Any]:
        ids = llm.get_tokenizer().encode(text)[: max_model_len - 1]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0)
        return ids, llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]

    ids, output = _with_engine(
        model,
        prompt_logprobs,
        kv_cache_dtype=kv_cache_dtype,
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        max_num_batched_tokens=chunk_tokens,
        enable_prefix_caching=False,
        gpu_memory_utilization=memory_utilization,
    )
    nll = [-entry[token].logprob for token, entry in zip(ids[1:], output.prompt_logprobs[1:], strict=True)]
    return math.exp(sum(nll) / len(nll))


def evaluate(
    model: Path, text: str, chunk_tokens: int, max_model_len: int, gate: float, memory_utilization: float | None = None
) -> dict[str, Any]:
    """Perplexity with auto and fp8 KV, and whether fp8's relative change stays under `gate`."""
    util = memory_utilization or default_memory_utilization()
    ppl = {dtype: perplexity(model, dtype, text, chunk_tokens, max_model_len, util) for dtype in ("auto", "fp8")}
    change = (ppl["fp8"] - ppl["auto"]) / ppl["auto"]
    return {"perplexity": ppl, "relative_change": change, "gate": gate, "passed": change < gate}
