"""The one place this project reaches into the Pulumi Python SDK's private runtime.

There is no Pulumi CLI here, so the offline plan (infra.plan) and the local engine (infra.local) run the
program in-process under the SDK's mock monitor. That takes a few names the SDK does not publish: its
monitor class, the property (de)serialiser and secret markers of `rpc`, the root resource, the runner and
the synchronous await. They are used through this module only, and tests/unit/test_pulumi_sdk.py fails
when an SDK upgrade renames or reshapes one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc as _rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func as _run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

T = TypeVar("T")


class MockMonitor(_mocks.MockMonitor):
    """The SDK's in-process resource monitor; a subclass sees every RegisterResource request."""

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        return _mocks.MockMonitor.RegisterResource(self, request)


def deserialize_properties(struct: Any) -> Any:
    """A registration's inputs as Python values, with secret markers kept (`is_secret`)."""
    return _rpc.deserialize_properties(struct)


def is_secret(value: Any) -> bool:
    """Whether a deserialised value is wrapped in Pulumi's secret marker."""
    return bool(_rpc.is_rpc_secret(value))


def unwrap_secret(value: Any) -> Any:
    return _rpc.unwrap_rpc_secret(value)


def sync_await(awaitable: Awaitable[T]) -> T:
    """Await on the SDK's own event loop from synchronous code (an Output's future, the program)."""
    result: T = _sync_await(awaitable)
    return result


def run_program(
    main: Callable[[], None],
    mocks: pulumi.runtime.Mocks,
    monitor: Any,
    *,
    project: str,
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
) -> None:
    """Run `main` as `pulumi up` would, registering with `monitor`; raises what the program raises."""
    reset_program_state()
    _settings.ROOT.set(None)  # a fresh root Stack resource for this run
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(config, secret_keys)
    sync_await(_run_pulumi_func(main))


def root_outputs() -> dict[str, Any]:
    """The program's `pulumi.export`s: they live on the root Stack resource's `outputs`."""
    root: Any = _settings.get_root_resource()
    return dict(root.outputs) if root is not None else {}


def _current_loop() -> asyncio.AbstractEventLoop:
    """The thread's event loop, which the SDK runs the program on; a new one where there is none or it is
    closed: `asyncio.run` earlier in this thread (a test, a CLI) closes its loop and leaves none current,
    and the SDK's `get_event_loop` then fails (tests/unit/test_pulumi_sdk.py after any such test)."""
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop


def reset_program_state() -> None:
    """Forget what a failed earlier run of a program in this process left behind, before the next run.

    After a failed run, the SDK's process-wide SETTINGS.outputs still holds that run's Output tasks and
    the event loop its pending tasks: the next run's `wait_for_rpcs` awaits them and re-raises the old
    failure (seen: the stack test's failing image build failed the next `up`). This cancels the loop's
    leftover tasks and empties the RPC manager and the outputs set; tests/unit/test_program_runs.py
    fails without it.
    """
    loop = _current_loop()
    leftover = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftover:
        task.cancel()
    if leftover:
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
    _settings._get_rpc_manager().clear()
    with _settings.SETTINGS.lock:
        _settings.SETTINGS.outputs.clear()
