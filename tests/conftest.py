"""Shared fixtures. GPU tests run only where VLLM_GB10_GPU_TESTS=1 (the device machine)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VLLM_GB10_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="GPU test: set VLLM_GB10_GPU_TESTS=1 on a machine with an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def require_binary(name: str) -> str:
    """Path of a server binary `make setup` installs; a missing one fails the test, never skips it."""
    from runtime.local.servers import find_binary

    try:
        return find_binary(name)
    except FileNotFoundError as missing:
        pytest.fail(str(missing))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama with its own tokenizer (runtime.tiny_model), built once per run."""
    from runtime.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
