"""Shared fixtures. GPU tests run only where VLLM_GB10_GPU_TESTS=1 (the device machine)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Generator

import pytest
from _pytest.reports import TestReport
from _pytest.runner import CallInfo

from harness.suite import load_timings, make_scheduler, ordered


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest unit of work first (harness/suite.py); `make test` keeps this order (--no-loadscope-reorder)."""
    items[:] = [item for item, _ in ordered(items, load_timings())]
    if os.environ.get("VLLM_GB10_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="GPU test: set VLLM_GB10_GPU_TESTS=1 on a machine with an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadscope`: each module one unit of work, the host-wide modules one together (harness/suite.py)."""
    return make_scheduler(config, log) if config.getvalue("dist") == "loadscope" else None


def _plain_report(item: pytest.Item, call: CallInfo[None]) -> TestReport:
    """The failure as text built without the ast module: the exception and the frames it went through."""
    assert call.excinfo is not None
    error = call.excinfo.value
    frames = [
        f"  {frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"
        for frame, lineno in traceback.walk_tb(error.__traceback__)
    ]
    text = "\n".join(
        [
            "Traceback (plain: pytest's rendering hit CPython 3.11's AST race, gh-106905):",
            *frames,
            f"{type(error).__name__}: {error}",
        ]
    )
    return TestReport(
        item.nodeid,
        item.location,
        dict.fromkeys(item.keywords, 1),
        "failed",
        text,
        call.when,
        [(f"Captured {key} {when}", content) for when, key, content in item._report_sections],
        call.duration,
        call.start,
        call.stop,
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: CallInfo[None]) -> Generator[None, TestReport, TestReport]:
    """Report a failure even when pytest's traceback rendering trips over CPython 3.11's shared AST state.

    On 3.11, `ast.parse` in two threads at once can raise `SystemError: AST constructor recursion depth
    mismatch` (gh-106905); pytest parses source files to render tracebacks, and a background thread
    (Ray's, a server's log pump) formatting its own traceback at that moment turned one failed fixture
    into an INTERNALERROR that ended the whole run and hid the failure. The race is transient: render again,
    and fall back to plain text.
    """
    try:
        return (yield)
    except SystemError as err:
        if "recursion depth mismatch" not in str(err):
            raise
    for _ in range(3):
        try:
            return TestReport.from_item_and_call(item, call)
        except SystemError:
            continue
    return _plain_report(item, call)


def require_binary(name: str) -> str:
    """Path of a server binary `make setup` installs; a missing one fails the test, never skips it."""
    from harness.servers import find_binary

    try:
        return find_binary(name)
    except FileNotFoundError as missing:
        pytest.fail(str(missing))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama with its own tokenizer (runtime.tiny_model), built once per run."""
    from runtime.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
