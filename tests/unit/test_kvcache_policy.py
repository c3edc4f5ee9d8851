"""runtime.kvcache: model shapes, the sizing decisions, refusals that say what fits, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.kvcache import (
    PROFILES,
    HostProfile,
    ModelConfigError,
    PlanError,
    Target,
    engine_args_to_flags,
    load_model_shape,
    plan,
    tokens_for_budget,
)
from runtime.kvcache.catalog import catalog_config
from runtime.kvcache.hosts import GIB
from runtime.kvcache.policy import sequence_bytes

ROOT = Path(__file__).resolve().parents[2]
QWEN3_4B = catalog_config("Qwen/Qwen3-4B")
LLAMA_8B = catalog_config("meta-llama/Llama-3.1-8B-Instruct")


def write_config(tmp_path: Path, **fields: object) -> Path:
    base = {
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "hidden_size": 512,
        "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**base, **fields}))
    return path


def test_bytes_per_token_follow_two_layers_kv_heads_head_dim_dtype() -> None:
    qwen = load_model_shape(QWEN3_4B)
    assert qwen.kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2 == 147_456
    assert qwen.kv_bytes_per_token(1) == 73_728
    llama = load_model_shape(LLAMA_8B)
    assert llama.kv_bytes_per_token() == 131_072  # the published 128 KiB per token


def test_head_dim_and_kv_heads_fall_back_to_hidden_over_heads_and_mha(tmp_path: Path) -> None:
    shape = load_model_shape(write_config(tmp_path))
    assert (shape.head_dim, shape.num_kv_heads) == (64, 8)
    assert shape.kv_bytes_per_token() == 2 * 4 * 8 * 64 * 2


def test_mla_caches_one_latent_per_token_and_layer(tmp_path: Path) -> None:
    shape = load_model_shape(write_config(tmp_path, kv_lora_rank=512, qk_rope_head_dim=64))
    assert shape.kv_bytes_per_token() == 4 * 576 * 2


def test_sliding_window_layers_hold_only_the_window(tmp_path: Path) -> None:
    types = ["sliding_attention"] * 3 + ["full_attention"]
    shape = load_model_shape(write_config(tmp_path, sliding_window=256, layer_types=types))
    assert (shape.sliding_layers, shape.full_layers, shape.sliding_window) == (3, 1, 256)
    long = sequence_bytes(shape, 4096, 2, 16)
    assert long < 4 * 4096 * shape.layer_bytes_per_token(2)  # less than if every layer held it all
    assert long == (4096 + 3 * (256 + 16)) * shape.layer_bytes_per_token(2)
    disabled = load_model_shape(write_config(tmp_path, sliding_window=256, use_sliding_window=False))
    assert disabled.sliding_layers == 0


def test_weights_come_from_the_safetensors_index_else_are_estimated(tmp_path: Path) -> None:
    config = write_config(tmp_path, vocab_size=1000, intermediate_size=1024)
    estimated = load_model_shape(config)
    assert estimated.weights_estimated and estimated.weights_bytes > 0
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 123456}}))
    exact = load_model_shape(config)
    assert (exact.weights_bytes, exact.weights_estimated) == (123456, False)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"num_hidden_layers": None}, "missing 'num_hidden_layers'"),
        ({"num_attention_heads": 0}, "'num_attention_heads' must be a positive integer"),
        ({"torch_dtype": "int4"}, "unknown dtype 'int4'"),
        ({"max_position_embeddings": "lots"}, "'max_position_embeddings' must be a positive integer"),
        ({"num_hidden_layers": -1}, "'num_hidden_layers' must be a positive integer"),
        ({"num_key_value_heads": "8"}, "'num_key_value_heads' must be a positive integer"),
        ({"head_dim": 1.5}, "'head_dim' must be a positive integer"),
        ({"hidden_size": True}, "'hidden_size' must be a positive integer"),
        ({"hidden_size": None}, "missing 'hidden_size'"),
        ({"max_position_embeddings": None}, "missing 'max_position_embeddings'"),
        ({"num_attention_heads": None}, "missing 'num_attention_heads'"),
        ({"torch_dtype": None, "dtype": "int4"}, "unknown dtype 'int4' (known: "),
    ],
)
def test_bad_model_configs_name_the_file_and_key(tmp_path: Path, fields: dict, words: str) -> None:
    path = write_config(tmp_path, **fields)
    with pytest.raises(ModelConfigError) as caught:
        load_model_shape(path)
    assert str(caught.value).startswith(str(path)) and words in str(caught.value)


def test_a_config_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "num_hidden_layers": 2,\n  oops\n}')
    with pytest.raises(ModelConfigError, match=r"config.json: not JSON: .* at line 3"):
        load_model_shape(path)


def test_block_exact_capacity_matches_vllms_arithmetic() -> None:
    qwen = load_model_shape(QWEN3_4B)
    block = 16 * 147_456
    assert tokens_for_budget(qwen, 10 * block + block - 1, 2, 16) == 160  # partial blocks do not count
    assert tokens_for_budget(qwen, 10 * block, 1, 16) == 320  # fp8: twice the tokens


def test_a_target_that_fits_in_bf16_keeps_auto_and_sizes_kv_explicitly_on_gb10() -> None:
    result = plan(load_model_shape(QWEN3_4B), PROFILES["gb10"], Target(8192, 64))
    assert (result.kv_cache_dtype, result.fp8_needed, result.fits_target) == ("auto", False, True)
    assert result.gpu_memory_utilization <= 0.85
    demand = 64 * 8192 * 147_456
    assert demand <= result.kv_cache_memory_bytes <= result.kv_budget_bytes
    assert result.kv_offloading_size_gib is None
    assert result.engine_args["kv_cache_memory_bytes"] == result.kv_cache_memory_bytes
    assert "--kv-cache-memory-bytes" in result.cli_flags and "--enable-prefix-caching" in result.cli_flags


def test_a_target_beyond_bf16_but_within_fp8_needs_fp8() -> None:
    result = plan(load_model_shape(QWEN3_4B), PROFILES["gb10"], Target(8192, 120))
    assert (result.kv_cache_dtype, result.fp8_needed, result.fits_target) == ("fp8", True, True)
    assert (
        result.kv_tokens["fp8"] == 2 * result.kv_tokens["auto"]
        or abs(result.kv_tokens["fp8"] - 2 * result.kv_tokens["auto"]) <= 16
    )


def test_a_target_beyond_fp8_uses_fp8_says_what_fits_and_offloads_only_on_discrete_gpus() -> None:
    llama = load_model_shape(LLAMA_8B)
    discrete = plan(llama, PROFILES["rtx4090"], Target(32768, 16))
    assert (discrete.kv_cache_dtype, discrete.fits_target) == ("fp8", False)
    assert discrete.full_context_sequences["fp8"] == 2
    assert any("2 sequences at full context fit" in n for n in discrete.notes)
    assert discrete.kv_offloading_size_gib and discrete.engine_args["kv_offloading_backend"] == "native"
    assert discrete.kv_cache_memory_bytes is None
    unified = plan(llama, PROFILES["gb10"], Target(131072, 64))
    assert unified.fits_target is False and unified.kv_offloading_size_gib is None
    assert "kv_offloading_size" not in unified.engine_args


def test_weights_that_do_not_fit_are_refused_with_what_would() -> None:
    small = HostProfile("tiny-gpu", gpu_memory_gib=8, unified=False, max_gpu_memory_utilization=0.9, overhead_gib=1)
    with pytest.raises(PlanError) as caught:
        plan(load_model_shape(LLAMA_8B), small, Target(4096, 1))
    assert caught.value.target == "model"
    assert "it would fit on a GPU with more than 18 GiB" in str(caught.value)


def test_context_beyond_the_models_positions_is_refused() -> None:
    with pytest.raises(PlanError, match="beyond Qwen/Qwen3-4B's max_position_embeddings 40960; use 40960"):
        plan(load_model_shape(QWEN3_4B), PROFILES["gb10"], Target(65536, 1))


def test_tensor_parallel_splits_kv_heads_and_weights() -> None:
    qwen = load_model_shape(QWEN3_4B)
    half = qwen.per_gpu(2, "tensor")
    assert half.kv_bytes_per_token() * 2 == qwen.kv_bytes_per_token()
    assert half.weights_bytes * 2 >= qwen.weights_bytes
    with pytest.raises(ModelConfigError, match="8 KV heads do not split over 3 GPUs"):
        qwen.per_gpu(3, "tensor")
    assert qwen.per_gpu(2, "pipeline").num_layers == 18


def kvcache_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.kvcache", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_cli_plan_json_has_bytes_per_token_engine_args_and_flags() -> None:
    result = kvcache_cli("plan", "--model-config", str(QWEN3_4B), "--host", "gb10", "--max-model-len", "8192",
                         "--concurrency", "64", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kv_bytes_per_token"] == {"auto": 147_456, "fp8": 73_728}
    assert data["engine_args"]["max_num_seqs"] == 64 and data["engine_args"]["kv_cache_dtype"] == "auto"
    assert isinstance(data["cli_flags"], list) and data["cli_flags"][:2] == ["--max-model-len", "8192"]


def test_cli_plan_report_is_for_a_person() -> None:
    result = kvcache_cli("plan", "--model-config", str(QWEN3_4B), "--host", "gb10", "--concurrency", "4")
    assert result.returncode == 0 and "KV per token      147,456 B auto, 73,728 B fp8" in result.stdout


def test_cli_custom_host_profiles_and_errors(tmp_path: Path) -> None:
    profiles = tmp_path / "hosts.json"
    profiles.write_text(json.dumps({"l40s": {"gpu_memory_gib": 44.5, "unified": False,
                                             "max_gpu_memory_utilization": 0.9, "overhead_gib": 3}}))  # fmt: skip
    ok = kvcache_cli("plan", "--model-config", str(LLAMA_8B), "--host", "l40s", "--host-profiles", str(profiles))
    assert ok.returncode == 0 and "on l40s" in ok.stdout
    unknown = kvcache_cli("plan", "--model-config", str(LLAMA_8B), "--host", "a100")
    assert unknown.returncode == 2 and "unknown host profile 'a100'" in unknown.stderr
    refused = kvcache_cli("plan", "--model-config", str(QWEN3_4B), "--max-model-len", "50000")
    assert refused.returncode == 2 and "max_position_embeddings 40960" in refused.stderr
    missing = kvcache_cli("plan", "--model-config", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "nope.json: cannot read" in missing.stderr


def test_gb10_profile_never_exceeds_085() -> None:
    assert PROFILES["gb10"].unified and PROFILES["gb10"].max_gpu_memory_utilization <= 0.85
    assert PROFILES["gb10"].gpu_memory_gib * GIB > 100 * GIB


# --- exact arithmetic (mutation testing found these unpinned) -------------------------------------


def test_unified_memory_sizes_kv_to_the_target_plus_the_prefix_cache_headroom() -> None:
    qwen = load_model_shape(QWEN3_4B)
    result = plan(qwen, PROFILES["gb10"], Target(8192, 16))
    demand = 16 * sequence_bytes(qwen, 8192, 2, 16)
    assert result.kv_cache_memory_bytes == int(demand * 1.25) < result.kv_budget_bytes  # 25% for prefix reuse
    crowded = plan(qwen, PROFILES["gb10"], Target(8192, 64))
    assert crowded.kv_cache_memory_bytes == crowded.kv_budget_bytes  # never past the budget


def test_capacity_counts_only_full_attention_layers_of_a_sliding_window_model(tmp_path: Path) -> None:
    types = ["sliding_attention"] * 3 + ["full_attention"]
    shape = load_model_shape(write_config(tmp_path, sliding_window=256, layer_types=types))
    block = 16 * shape.layer_bytes_per_token(2)  # one full layer's block
    assert tokens_for_budget(shape, 10 * block, 2, 16) == 160
    everything_slides = load_model_shape(
        write_config(tmp_path, sliding_window=256, layer_types=["sliding_attention"] * 4)
    )
    assert everything_slides.full_layers == 0
    assert tokens_for_budget(everything_slides, 10 * block, 2, 16) == 160  # at least one layer's worth per block


def test_engine_args_become_vllm_flags() -> None:
    args = {"enable_prefix_caching": True, "enforce_eager": False, "gpu_memory_utilization": 0.8,
            "max_num_seqs": 4, "kv_cache_dtype": "fp8"}  # fmt: skip
    assert engine_args_to_flags(args) == [
        "--enable-prefix-caching",
        "--no-enforce-eager",
        "--gpu-memory-utilization",
        "0.80",
        "--max-num-seqs",
        "4",
        "--kv-cache-dtype",
        "fp8",
    ]


def test_refusals_name_what_to_change() -> None:
    qwen = load_model_shape(QWEN3_4B)
    with pytest.raises(PlanError, match=r"^concurrency must be at least 1, not 0$") as caught:
        plan(qwen, PROFILES["gb10"], Target(8192, 0))
    assert caught.value.target == "concurrency"
    with pytest.raises(PlanError) as caught:
        plan(qwen, PROFILES["gb10"], Target(65536, 1))
    assert caught.value.target == "max_model_len"
    small = HostProfile("small", gpu_memory_gib=12, unified=False, max_gpu_memory_utilization=0.9, overhead_gib=1)
    with pytest.raises(PlanError) as caught:
        plan(qwen, small, Target(40960, 1))
    fits = (int(12 * 0.9 * GIB) - qwen.weights_bytes - GIB) // (16 * qwen.kv_bytes_per_token(1)) * 16
    assert caught.value.target == "max_model_len"
    message = str(caught.value)
    assert f"one sequence of 40960 tokens needs {sequence_bytes(qwen, 40960, 1, 16) / GIB:.1f} GiB of KV" in message
    assert f"max_model_len up to {fits} fits with fp8 ({fits // 2 // 16 * 16} with auto)" in message
    assert "left on small after the weights" in message


def test_services_beside_vllm_come_out_of_its_share_on_unified_memory_only() -> None:
    qwen, gb10 = load_model_shape(QWEN3_4B), PROFILES["gb10"]
    alone = plan(qwen, gb10, Target(8192, 8))
    assert alone.gpu_memory_utilization == 0.85 and not any("reserved" in n for n in alone.notes)
    beside = plan(qwen, gb10, Target(8192, 8), reserved_gib=0.6)
    assert beside.gpu_memory_utilization == 0.84  # floor((0.85 - 0.6/119.7) * 100) / 100
    assert any(n.startswith("0.6 GiB reserved for the services beside vLLM") for n in beside.notes)
    h100 = plan(qwen, PROFILES["h100"], Target(8192, 8), reserved_gib=20)
    assert h100.gpu_memory_utilization == 0.90  # a discrete GPU's memory is vLLM's alone
    with pytest.raises(PlanError) as caught:
        plan(qwen, gb10, Target(8192, 8), reserved_gib=102)
    assert caught.value.target == "reserved" and "reserve 102.0 GiB of gb10's 119.7 GiB" in str(caught.value)


def test_a_model_split_over_gpus_holds_its_share_on_each(tmp_path: Path) -> None:
    types = ["sliding_attention"] * 3 + ["full_attention"]
    config = write_config(tmp_path, sliding_window=256, layer_types=types, num_key_value_heads=4)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1001}}))
    shape = load_model_shape(config)
    assert shape.per_gpu(1, "tensor") is shape
    tensor = shape.per_gpu(2, "tensor")
    assert (tensor.num_kv_heads, tensor.num_layers, tensor.sliding_layers, tensor.weights_bytes) == (2, 4, 3, 501)
    pipeline = shape.per_gpu(2, "pipeline")
    assert (pipeline.num_kv_heads, pipeline.num_layers, pipeline.sliding_layers, pipeline.weights_bytes) == (
        4,
        2,
        2,
        501,
    )
    with pytest.raises(ValueError, match="unknown parallelism 'data'"):
        shape.per_gpu(2, "data")


def test_shapes_read_where_each_model_family_keeps_them(tmp_path: Path) -> None:
    """Multimodal configs nest the text model (Gemma 3); newer transformers write `dtype`; Qwen2 slides the
    layers from max_window_layers on; a single model.safetensors gives the exact weights."""
    nested = tmp_path / "config.json"
    text = {"num_hidden_layers": 6, "num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 2048}
    nested.write_text(json.dumps({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": text}))
    shape = load_model_shape(nested)
    assert (shape.num_layers, shape.head_dim, shape.dtype_bytes) == (6, 64, 2)  # bf16 when no dtype is given
    assert load_model_shape(write_config(tmp_path, torch_dtype=None, dtype="float32")).dtype_bytes == 4
    qwen2 = load_model_shape(write_config(tmp_path, sliding_window=512, use_sliding_window=True, max_window_layers=3))
    assert (qwen2.sliding_layers, qwen2.sliding_window) == (1, 512)
    mistral = load_model_shape(write_config(tmp_path, sliding_window=512))
    assert mistral.sliding_layers == 4
    none_slide = load_model_shape(write_config(tmp_path, sliding_window=512, max_window_layers=9))
    assert (none_slide.sliding_layers, none_slide.sliding_window) == (0, None)
    mla = load_model_shape(write_config(tmp_path, kv_lora_rank=512))
    assert mla.kv_bytes_per_token() == 4 * 512 * 2  # no rope part given: none
    (tmp_path / "model.safetensors").write_bytes(b"x" * 4321)
    single = load_model_shape(write_config(tmp_path))
    assert (single.weights_bytes, single.weights_estimated) == (4321, False)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ModelConfigError, match=r"model.safetensors.index.json: no metadata.total_size"):
        load_model_shape(write_config(tmp_path))
