"""A stack that offers several models (issue 20): the offline batch engine gets every offered model,
each sized on its own by the KV policy, and the batch services the list of served names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.config import ConfigError
from infra.memory import reserved_gib
from infra.plan import Plan, build_plan
from infra.vllm_sizing import engine_args, size_offered_models, size_vllm
from runtime.kvcache import PROFILES, Target, load_model_shape, plan
from runtime.kvcache.catalog import catalog_config
from tests.plans import stack_plan
from tests.unit.test_config import OFFLINE_HOSTS, load_with
from tests.unit.test_stella_program import OFFLINE_APART

LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b"}
# Llama 3.1 70B's architecture: 131 GiB of bf16 weights, more than one GB10 holds.
LLAMA_70B_CONFIG = {
    "_name_or_path": "meta-llama/Llama-3.1-70B-Instruct",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "max_position_embeddings": 131072,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def _environment(plan_: Plan, host: str, service: str) -> dict[str, str]:
    services = yaml.safe_load(plan_.files[f"{host}/docker-compose.yml"])["services"]
    env: dict[str, str] = services[service]["environment"]
    return env


@pytest.fixture(scope="module")
def two_models() -> Plan:
    return build_plan("stella", overrides={**OFFLINE_APART, "models": json.dumps([LLAMA])})


def test_two_offered_models_reach_the_batch_services(two_models: Plan) -> None:
    api = _environment(two_models, "batchbox", "batch-api")
    worker = _environment(two_models, "batchbox", "batch-worker")
    assert api["BATCH_MODEL"] == worker["BATCH_MODEL"] == "Qwen/Qwen3-4B"
    assert api["BATCH_MODELS"] == worker["BATCH_MODELS"] == '["Qwen/Qwen3-4B", "llama-8b"]'
    assert "BATCH_MODEL_PATHS" not in api and "BATCH_MODEL_VLLM_ARGS" not in api, "the engine is the worker's"
    assert worker["BATCH_MODEL_PATH"] == "Qwen/Qwen3-4B"
    assert (
        worker["BATCH_MODEL_PATHS"]
        == '{"Qwen/Qwen3-4B": "Qwen/Qwen3-4B", "llama-8b": "meta-llama/Llama-3.1-8B-Instruct"}'
    )
    qwen = (
        '{"enable_prefix_caching": true, "gpu_memory_utilization": 0.45, "kv_cache_dtype": "fp8", '
        '"kv_cache_memory_bytes": 43350108405, "max_model_len": 8192, "max_num_seqs": 64}'
    )
    llama = (
        '{"enable_prefix_caching": true, "gpu_memory_utilization": 0.45, "kv_cache_dtype": "fp8", '
        '"kv_cache_memory_bytes": 35334662389, "max_model_len": 8192, "max_num_seqs": 64}'
    )
    assert worker["BATCH_VLLM_ARGS"] == qwen, "the default model's, as before"
    assert worker["BATCH_MODEL_VLLM_ARGS"] == f'{{"Qwen/Qwen3-4B": {qwen}, "llama-8b": {llama}}}'
    assert not two_models.violations, "the policy pack passes the two-model stack"


def test_each_offered_model_is_sized_on_its_own_like_the_default(two_models: Plan) -> None:
    """Same host profile, target and reserved memory as the default model's plan; only the model differs."""
    cfg = load_with(stack="stella", hosts=OFFLINE_HOSTS, batchEngine="offline", models=[LLAMA])
    default = size_vllm(cfg, Path("."))
    plans = size_offered_models(cfg, Path("."), default)
    assert list(plans) == ["Qwen/Qwen3-4B", "llama-8b"] and plans["Qwen/Qwen3-4B"] is default
    llama_path = catalog_config(LLAMA["model"])
    assert llama_path is not None
    alone = plan(load_model_shape(llama_path), PROFILES["gb10"], Target(8192, 64), reserved_gib=reserved_gib(cfg))
    assert plans["llama-8b"] == alone
    # Through the program: the stack's overrides apply to every model, as to the default.
    overridden = build_plan(
        "stella", overrides={**OFFLINE_APART, "models": json.dumps([LLAMA]), "kvCacheDtype": "auto"}
    )
    per_model = json.loads(_environment(overridden, "batchbox", "batch-worker")["BATCH_MODEL_VLLM_ARGS"])
    assert {args["kv_cache_dtype"] for args in per_model.values()} == {"auto"}
    assert engine_args(cfg, alone)["kv_cache_memory_bytes"] == 35334662389


def test_one_model_stacks_name_it_alone_and_the_http_worker_gets_no_engine_arguments() -> None:
    stella = stack_plan("stella")
    for service in ("batch-api", "batch-worker"):
        env = _environment(stella, "stella", service)
        assert env["BATCH_MODELS"] == '["Qwen/Qwen3-4B"]'
        assert "BATCH_MODEL_PATHS" not in env and "BATCH_MODEL_VLLM_ARGS" not in env
    offline = _environment(build_plan("stella", overrides=OFFLINE_APART), "batchbox", "batch-worker")
    assert offline["BATCH_MODELS"] == '["Qwen/Qwen3-4B"]'
    assert offline["BATCH_MODEL_PATHS"] == '{"Qwen/Qwen3-4B": "Qwen/Qwen3-4B"}'
    assert offline["BATCH_MODEL_VLLM_ARGS"] == f'{{"Qwen/Qwen3-4B": {offline["BATCH_VLLM_ARGS"]}}}'


def test_an_offered_model_that_does_not_fit_is_refused_naming_it_and_the_figures(tmp_path: Path) -> None:
    (tmp_path / "llama-70b").mkdir()
    (tmp_path / "llama-70b" / "config.json").write_text(json.dumps(LLAMA_70B_CONFIG))
    big = {"model": "meta-llama/Llama-3.1-70B-Instruct", "servedModelName": "llama-70b"}
    models = [LLAMA, {**big, "modelConfigFile": "llama-70b/config.json"}]
    cfg = load_with(stack="stella", hosts=OFFLINE_HOSTS, batchEngine="offline", models=models)
    default = size_vllm(cfg, tmp_path)  # the default model fits: the servers are sized as before
    with pytest.raises(ConfigError) as caught:
        size_offered_models(cfg, tmp_path, default)
    assert str(caught.value) == (
        "Pulumi.stella.yaml: vllm-gb10:models[1]: offered model 'llama-70b' (meta-llama/Llama-3.1-70B-Instruct) "
        "cannot be sized for the offline batch engine (maxModelLen 8192, maxNumSeqs 64, hostProfile gb10): "
        "meta-llama/Llama-3.1-70B-Instruct weights (131.4 GiB) and vLLM overhead (6.0 GiB) exceed the 53.9 GiB "
        "usable on gb10 at gpu_memory_utilization 0.45; it would fit on a GPU with more than 305 GiB, or with "
        "weights quantized below 47.9 GiB"
    )


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [LLAMA, {"model": "acme/unknown-7b", "servedModelName": "unknown"}],
            "vllm-gb10:models[1].modelConfigFile: no bundled config.json for model 'acme/unknown-7b' (bundled: "
            "Qwen/Qwen3-4B, meta-llama/Llama-3.1-8B-Instruct); download it (huggingface-cli download acme/unknown-7b "
            "config.json) and set models[1].modelConfigFile",
        ),
        (
            [{"model": "acme/unknown-7b", "modelConfigFile": "nowhere/config.json"}],
            "vllm-gb10:models[0].modelConfigFile: no file 'nowhere/config.json' under the project directory",
        ),
    ],
)
def test_an_offered_model_without_a_config_json_is_refused_naming_its_entry(models: list, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_plan("stella", overrides={**OFFLINE_APART, "models": json.dumps(models)})
    assert str(caught.value) == f"Pulumi.stella.yaml: {message}"


def test_the_default_models_config_json_is_looked_up_as_before() -> None:
    with pytest.raises(ConfigError) as caught:
        build_plan("stella", overrides={"model": "acme/unknown-7b"})
    assert str(caught.value) == (
        "Pulumi.stella.yaml: vllm-gb10:modelConfigFile: no bundled config.json for model 'acme/unknown-7b' (bundled: "
        "Qwen/Qwen3-4B, meta-llama/Llama-3.1-8B-Instruct); download it (huggingface-cli download acme/unknown-7b "
        "config.json) and set modelConfigFile"
    )


def test_the_kubernetes_platform_refuses_several_offered_models() -> None:
    """Its vLLM Deployment serves the default model only (the refusal's text: tests/unit/test_config.py)."""
    with pytest.raises(ConfigError, match="the kubernetes platform runs one vLLM Deployment"):
        build_plan("edge", overrides={"batchEngine": "offline", "models": json.dumps([LLAMA])})
