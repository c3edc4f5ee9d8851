"""What a model's config.json (and safetensors index) says about its memory needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1}


class ModelConfigError(ValueError):
    """config.json lacks what the policy needs, or holds something it cannot read."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int
    max_position_embeddings: int
    sliding_window: int | None  # tokens a sliding-window layer keeps per sequence
    sliding_layers: int  # how many of num_layers use the sliding window
    mla_latent_dim: int | None  # MLA (DeepSeek): one latent vector per token and layer instead of K and V
    weights_bytes: int
    weights_estimated: bool  # True when no safetensors index gave the exact size

    @property
    def full_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    def kv_bytes_per_token(self, kv_dtype_bytes: int | None = None) -> int:
        """2 x layers x kv_heads x head_dim x dtype bytes (all layers, as if none were sliding)."""
        return self.num_layers * self.layer_bytes_per_token(kv_dtype_bytes or self.dtype_bytes)

    def per_gpu(self, gpus: int, kind: str) -> ModelShape:
        """The share one GPU holds when the model is split: tensor parallel splits heads and weights,
        pipeline parallel splits layers and weights."""
        if gpus == 1:
            return self
        weights = -(-self.weights_bytes // gpus)
        if kind == "tensor":
            if self.num_kv_heads % gpus:
                raise ModelConfigError(f"{self.name}: {self.num_kv_heads} KV heads do not split over {gpus} GPUs")
            return replace(self, num_kv_heads=self.num_kv_heads // gpus, weights_bytes=weights)
        if kind == "pipeline":
            layers = -(-self.num_layers // gpus)
            sliding = -(-self.sliding_layers // gpus)
            return replace(self, num_layers=layers, sliding_layers=sliding, weights_bytes=weights)
        raise ValueError(f"unknown parallelism {kind!r}")

    def layer_bytes_per_token(self, kv_dtype_bytes: int) -> int:
        """KV bytes one layer stores per token."""
        if self.mla_latent_dim is not None:
            return self.mla_latent_dim * kv_dtype_bytes
        return 2 * self.num_kv_heads * self.head_dim * kv_dtype_bytes


def _require(config: dict[str, Any], key: str, where: str) -> Any:
    value = config.get(key)
    if value is None:
        raise ModelConfigError(f"{where}: missing {key!r}")
    return value


def _positive_int(value: Any, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelConfigError(f"{where}: {key!r} must be a positive integer, not {value!r}")
    return value


def _estimate_weights(
    config: dict[str, Any], layers: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int
) -> int:
    """Dense decoder parameters: embeddings, attention and gated MLP per layer (no MoE)."""
    hidden: int = config["hidden_size"]
    vocab: int = config.get("vocab_size", 32000)
    intermediate: int = config.get("intermediate_size", 4 * hidden)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return (embeddings + layers * (attention + mlp)) * dtype_bytes


def load_model_shape(config_path: Path, index_path: Path | None = None) -> ModelShape:
    """Read config.json; the weights' size comes from model.safetensors.index.json when present."""
    where = str(config_path)
    try:
        config = json.loads(config_path.read_text())
    except OSError as err:
        raise ModelConfigError(f"{where}: cannot read: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ModelConfigError(f"{where}: not JSON: {err.msg} at line {err.lineno}") from None
    config = config.get("text_config", config) if isinstance(config, dict) else config
    if not isinstance(config, dict):
        raise ModelConfigError(f"{where}: expected a JSON object")

    layers = _positive_int(_require(config, "num_hidden_layers", where), "num_hidden_layers", where)
    heads = _positive_int(_require(config, "num_attention_heads", where), "num_attention_heads", where)
    kv_heads = _positive_int(config.get("num_key_value_heads") or heads, "num_key_value_heads", where)
    if config.get("head_dim"):
        head_dim = _positive_int(config["head_dim"], "head_dim", where)
    else:
        hidden = _positive_int(_require(config, "hidden_size", where), "hidden_size", where)
        head_dim = hidden // heads
    max_position = _positive_int(_require(config, "max_position_embeddings", where), "max_position_embeddings", where)
    dtype_name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    if dtype_name not in DTYPE_BYTES:
        raise ModelConfigError(f"{where}: unknown dtype {dtype_name!r} (known: {', '.join(DTYPE_BYTES)})")
    dtype_bytes = DTYPE_BYTES[dtype_name]

    window = config.get("sliding_window")
    sliding_layers = 0
    if window and config.get("use_sliding_window") is not False:
        layer_types = config.get("layer_types")
        if isinstance(layer_types, list):  # Gemma 2/3, Qwen3 style: one type per layer
            sliding_layers = sum(1 for t in layer_types if t == "sliding_attention")
        else:  # Mistral style: every layer; Qwen2 style: layers from max_window_layers on
            sliding_layers = max(0, layers - int(config.get("max_window_layers") or 0))

    mla = None
    if config.get("kv_lora_rank"):
        mla = int(config["kv_lora_rank"]) + int(config.get("qk_rope_head_dim") or 0)

    weights, estimated = None, True
    if index_path is None and (config_path.parent / "model.safetensors.index.json").is_file():
        index_path = config_path.parent / "model.safetensors.index.json"
    single_file = config_path.parent / "model.safetensors"
    if index_path is None and single_file.is_file():
        weights, estimated = single_file.stat().st_size, False
    if index_path is not None and index_path.is_file():
        try:
            weights = int(json.loads(index_path.read_text())["metadata"]["total_size"])
            estimated = False
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ModelConfigError(f"{index_path}: no metadata.total_size ({err})") from None
    if weights is None:
        if "hidden_size" not in config:
            raise ModelConfigError(f"{where}: no hidden_size to estimate the weights from, and no safetensors index")
        weights = _estimate_weights(config, layers, heads, kv_heads, head_dim, dtype_bytes)

    return ModelShape(
        name=str(config.get("_name_or_path") or config_path.parent.name),
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
        max_position_embeddings=max_position,
        sliding_window=int(window) if window and sliding_layers else None,
        sliding_layers=sliding_layers,
        mla_latent_dim=mla,
        weights_bytes=weights,
        weights_estimated=estimated,
    )
