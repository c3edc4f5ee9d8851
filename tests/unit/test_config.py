"""infra.config: defaults, Pulumi.yaml agreement, and every bad value named with file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.config import PROJECT, ConfigError, Parallelism, Role, known_keys, load, schema_entries

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZCdjWjVb9EHw8Qr0tp4/Y5r7rwUVz3cO333wUBrp4B"


def host(name: str, roles: list[str], **extra: object) -> dict:
    return {"name": name, "address": "10.0.0.1", "hostKey": HOST_KEY, "roles": roles, **extra}


LINK = "enp1s0f1np1"  # the two boxes' direct link (ncclSocketIfname), required with tensor/pipeline
TWO_HOSTS = [host("stella", ["gpu", "ray-head", "data", "lb", "batch"]), host("nova", ["gpu"], address="10.0.0.2")]


def reader(values: dict[str, object]):
    raw = {"sshPrivateKey": "key", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}}
    return raw.get


def load_with(stack: str = "test", **values: object):
    values.setdefault("hosts", TWO_HOSTS)
    return load(reader(values), stack, present_keys=values.keys())


def test_defaults_apply_when_keys_are_absent() -> None:
    cfg = load_with()
    assert cfg.vllm.port == 8000
    assert cfg.vllm.gpu_memory_utilization == 0.0  # 0: the KV policy decides
    assert cfg.vllm.kv_cache_dtype == ""
    assert cfg.vllm.parallelism is Parallelism.REPLICA
    assert cfg.lb.balance_factor == 150
    assert [h.name for h in cfg.hosts_with(Role.GPU)] == ["stella", "nova"]
    assert cfg.host_with(Role.DATA).bind_ip == "10.0.0.1"


def test_values_are_typed_from_their_raw_strings() -> None:
    cfg = load_with(lbPort="9090", publicDataServices="true", vllmExtraArgs=["--seed", "7"])
    assert cfg.lb.port == 9090
    assert cfg.data.public is True
    assert cfg.vllm.extra_args == ["--seed", "7"]


def test_pulumi_yaml_declares_every_key_with_the_code_default() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for key, type_, default, description, secret in schema_entries():
        assert key in declared, f"Pulumi.yaml lacks {key}"
        entry = declared[key]
        assert entry["type"] == type_, key
        assert entry["description"] == description, key
        if secret:
            assert entry.get("secret") is True and "default" not in entry, key
        else:
            assert entry["default"] == default, key
    assert set(declared) == {k for k, *_ in schema_entries()}


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"lbPort": "eighty"}, "lbPort", "valid integer"),
        ({"vllmPort": "70000"}, "vllmPort", "less than or equal to 65535"),
        ({"gpuMemoryUtilization": "0.99"}, "gpuMemoryUtilization", "0.95"),
        ({"kvCacheDtype": "fp4"}, "kvCacheDtype", "'auto' or 'fp8'"),
        ({"imageTag": "latest"}, "imageTag", "not a pinned tag"),
        ({"parallelism": "expert"}, "parallelism", "replica"),
        ({"platform": "nomad"}, "platform", "not one of compose, kubernetes"),
        ({"maxModelLenn": "4096"}, "maxModelLenn", "did you mean 'maxModelLen'"),
        ({"vllmExtraArgs": "[--seed"}, "vllmExtraArgs", "not valid JSON"),
        ({"hosts": []}, "hosts", "at least one host"),
        ({"hosts": [host("box", ["gpu", "ray-head", "data", "lb", "batch"], address=None)]}, "hosts[0].address", ""),
        ({"hosts": [host("box", ["gpu", "warp-drive"])]}, "hosts[0].roles[1]", "'gpu'"),
        (
            {"hosts": [host("box", ["gpu", "ray-head", "data", "lb", "batch"], hostKey="AAAA")]},
            "hosts[0].hostKey",
            "ssh-keyscan",
        ),
        (
            {"hosts": [{k: v for k, v in host("box", ["gpu"]).items() if k != "hostKey"}]},
            "hosts[0].hostKey",
            "Field required",
        ),
        (
            {"hosts": [host("box", ["gpu", "ray-head", "data", "lb", "batch"], address="a.lan")]},
            "hosts[0].clusterAddress",
            "docker binds ports to an IP",
        ),
        ({"hosts": [*TWO_HOSTS, host("stella", ["gpu"])]}, "hosts[2].name", "duplicate host name 'stella'"),
        ({"hosts": [TWO_HOSTS[0], host("nova", ["gpu", "data"])]}, "hosts", "exactly one host must have role 'data'"),
        ({"hosts": [host("box", ["ray-head", "data", "lb", "batch"])]}, "hosts", "role 'gpu'"),
        ({"hosts": [host("box", ["gpu", "ray-head", "data", "batch"])]}, "hosts", "role 'lb' (found 0)"),
        (
            {"hosts": [host("box", ["gpu", "ray-head", "data", "lb", "batch"], privateKeySecret="keyA")]},
            "hosts[0].privateKeySecret",
            "'keyA', which is not set",
        ),
        (
            {"parallelism": "tensor", "hosts": [host("box", ["gpu", "ray-head", "data", "lb", "batch"])]},
            "parallelism",
            "two or more 'gpu' hosts",
        ),
        (
            {"parallelism": "tensor"},
            "ncclSocketIfname",
            "required with parallelism tensor over 2 gpu hosts: the name of the network interface",
        ),
        ({"parallelism": "pipeline"}, "ncclSocketIfname", "required with parallelism pipeline over 2 gpu hosts"),
        ({"registryUsername": "ci"}, "registryPassword", "required when registryUsername is set"),
        ({"hosts": []}, "hosts", "the compose platform needs at least one host"),
        ({"platform": "kubernetes"}, "hosts", "the kubernetes platform places services itself; remove hosts"),
        (
            {"platform": "kubernetes", "hosts": [], "parallelism": "tensor"},
            "parallelism",
            "the kubernetes platform runs one vLLM replica on the GB10 node; use 'replica'",
        ),
    ],
)
def test_bad_values_name_the_stack_file_and_the_key(values: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="stella", **values)
    message = str(caught.value)
    assert message.startswith(f"Pulumi.stella.yaml: {PROJECT}:{key}: "), message
    assert words in message


def test_committed_stella_stack_file_is_valid() -> None:
    document = yaml.safe_load((ROOT / "Pulumi.stella.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v for k, v in document.items()}
    cfg = load(reader(raw), "stella", present_keys=raw)
    assert [h.name for h in cfg.hosts] == ["stella", "nova"]
    assert {h.name for h in cfg.hosts_with(Role.GPU)} == {"stella", "nova"}
    assert cfg.host_with(Role.RAY_HEAD).name == "stella"


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key, *_ in schema_entries() if f"| `{key}` |" not in readme]
    assert not missing, f"README.md configuration table lacks {missing}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--enforce-eager", "--api-key", "abc"], "[1] --api-key takes a secret"),
        (["--api-key=abc"], "[0] --api-key takes a secret"),
        (["--api-key=abc=def"], "[0] --api-key takes a secret"),  # the value may hold '=' too
        (["--hf-token", "x"], "pulumi config set --secret hfToken"),
        (["--served-model-name", "hf_" + "a1B2" * 8], "looks like a Hugging Face token"),
        (["--something=sk-" + "x" * 30], "looks like an API key"),
        (["--otlp-traces-endpoint", "http://u:hunter2@collector:4317"], "a URL with a password"),
    ],
)
def test_secret_looking_raw_args_are_refused_naming_where_the_secret_belongs(args: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="stella", vllmExtraArgs=args)
    message = str(caught.value)
    assert message.startswith(f"Pulumi.stella.yaml: {PROJECT}:vllmExtraArgs"), message
    assert words in message and "hunter2" not in message and "a1B2" not in message


def test_ordinary_raw_args_pass() -> None:
    args = ["--enforce-eager", "--max-num-batched-tokens=8192", "--served-model-name", "qwen", "--task", "generate"]
    assert load_with(vllmExtraArgs=args).vllm.extra_args == args


@pytest.mark.parametrize(("factor", "ok"), [(0, True), (101, True), (150, True), (1000, True), (100, False),
                                             (1, False), (1001, False), (-5, False)])  # fmt: skip
def test_one_balance_factor_rule_for_the_stack_and_the_cli(factor: int, ok: bool) -> None:
    from infra.lb import parse_args

    cli = ["--backend", "127.0.0.1:9", "--port", "1", "--balance-factor", str(factor)]
    if ok:
        assert load_with(lbBalanceFactor=factor).lb.balance_factor == factor
        assert parse_args(cli).balance_factor == factor
    else:
        with pytest.raises(ConfigError, match=rf"lbBalanceFactor: .*balance factor {factor}: use 0"):
            load_with(lbBalanceFactor=factor)
        with pytest.raises(SystemExit):
            parse_args(cli)


OFFLINE_HOSTS = [host("stella", ["gpu", "ray-head", "data", "lb"]), host("batchbox", ["batch"], address="10.0.0.3")]
LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b"}


def test_offered_models_are_the_default_first_then_the_models_list() -> None:
    cfg = load_with(hosts=OFFLINE_HOSTS, batchEngine="offline", models=[LLAMA, {"model": "org/local-model"}])
    assert [(m.served_name, m.model) for m in cfg.vllm.offered] == [
        ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B"),
        ("llama-8b", "meta-llama/Llama-3.1-8B-Instruct"),
        ("org/local-model", "org/local-model"),
    ]
    assert load_with().vllm.offered == (load_with().vllm.offered[0],), "by default: the default model only"
    # A list of objects, like hosts: typed in infra/config.py, not in Pulumi.yaml; still a known key.
    assert "models" not in {k for k, *_ in schema_entries()} and "models" in known_keys()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"models": [{"model": "org/other", "servedModelName": "Qwen/Qwen3-4B"}]},
            "vllm-gb10:models[0].servedModelName: served model name 'Qwen/Qwen3-4B' is already the default model's "
            "(model/servedModelName); give each offered model its own",
        ),
        (
            {"servedModelName": "chat", "models": [LLAMA, {"model": "org/chat-v2", "servedModelName": "chat"}]},
            "vllm-gb10:models[1].servedModelName: served model name 'chat' is already the default model's "
            "(model/servedModelName); give each offered model its own",
        ),
        (
            {"models": [LLAMA, {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b"}]},
            "vllm-gb10:models[1].servedModelName: served model name 'llama-8b' is already that of models[0]; "
            "give each offered model its own",
        ),
        (
            {"models": [{"model": "llama-8b"}, LLAMA]},  # no servedModelName: the model id is the served name
            "vllm-gb10:models[1].servedModelName: served model name 'llama-8b' is already that of models[0]; "
            "give each offered model its own",
        ),
        ({"models": [LLAMA, {"model": "org/x", "servedName": "x"}]}, "vllm-gb10:models[1].servedName: Extra inputs"),
        ({"models": [LLAMA, {"servedModelName": "x"}]}, "vllm-gb10:models[1].model: Field required"),
        ({"models": [LLAMA, {"model": ""}]}, "vllm-gb10:models[1].model: String should have at least 1 character"),
        ({"models": {"model": "org/x"}}, "vllm-gb10:models: Input should be a valid list"),
        ({"models": "[{model: org/x"}, "vllm-gb10:models: not valid JSON/YAML structure"),
    ],
)
def test_a_bad_offered_model_is_named_by_its_index(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="stella", hosts=OFFLINE_HOSTS, batchEngine="offline", **values)
    assert str(caught.value).startswith(f"Pulumi.stella.yaml: {message}"), str(caught.value)


@pytest.mark.parametrize("engine", ["http", "offline"])
def test_several_offered_models_work_on_compose_with_replicas_and_either_batch_engine(engine: str) -> None:
    hosts = TWO_HOSTS if engine == "http" else OFFLINE_HOSTS
    cfg = load_with(stack="stella", hosts=hosts, batchEngine=engine, models=[LLAMA])
    assert [m.served_name for m in cfg.vllm.offered] == ["Qwen/Qwen3-4B", "llama-8b"]


@pytest.mark.parametrize("engine", ["http", "offline"])
def test_several_offered_models_are_refused_on_kubernetes(engine: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="edge", platform="kubernetes", hosts=[], batchEngine=engine, models=[LLAMA])
    assert str(caught.value) == (
        "Pulumi.edge.yaml: vllm-gb10:models: 2 offered models: the kubernetes platform runs one vLLM Deployment, "
        "for the default model ('Qwen/Qwen3-4B'), on the GB10 node; several offered models need the compose "
        "platform (one vLLM server per model on each gpu host); remove vllm-gb10:models"
    )
    assert load_with(platform="kubernetes", hosts=[], batchEngine=engine, models=[]).vllm.models == []


@pytest.mark.parametrize("parallelism", ["tensor", "pipeline"])
def test_several_offered_models_are_refused_with_one_server_over_every_host(parallelism: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="stella", parallelism=parallelism, models=[LLAMA], ncclSocketIfname=LINK)
    assert str(caught.value) == (
        f"Pulumi.stella.yaml: vllm-gb10:models: 2 offered models with vllm-gb10:parallelism {parallelism}: one "
        "vLLM server spans every gpu host, for the default model ('Qwen/Qwen3-4B') only; several offered models "
        "need parallelism replica (one server per model on each gpu host)"
    )
    assert load_with(parallelism=parallelism, ncclSocketIfname=LINK).vllm.parallelism.value == parallelism


@pytest.mark.parametrize(
    ("values", "key", "name"),
    [
        ({"models": [{"model": "org/x", "servedModelName": "my model"}]}, "models[0].servedModelName", "my model"),
        ({"servedModelName": "a'b", "models": [LLAMA]}, "servedModelName", "a'b"),
        ({"models": [LLAMA, {"model": 'org/"quoted"'}]}, "models[1].servedModelName", 'org/"quoted"'),
    ],
)
def test_with_several_offered_models_a_served_name_the_balancer_cannot_match_is_refused(
    values: dict, key: str, name: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(stack="stella", **values)
    assert str(caught.value) == (
        f"Pulumi.stella.yaml: vllm-gb10:{key}: served model name {name!r}: with several offered models the load "
        "balancer routes on it, so it may hold only letters, digits and . _ : / @ + - (set servedModelName)"
    )
    single = {k: v for k, v in values.items() if k != "models"}
    load_with(stack="stella", **single)  # one offered model: no routing, any name as before
