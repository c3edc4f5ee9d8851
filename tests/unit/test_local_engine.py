"""The local engine stops as Pulumi's does after a failure: nothing new starts, what is under way finishes first.

Without this, `up` on a fresh stack took the stack down while another resource's operation was still
running in the SDK's thread pool; that operation then wrote state.json again after `down` removed it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.local.engine import COPY, IMAGE, PASSWORD, Providers
from infra.local.state import State
from infra.plan.recorder import Recording

WAIT_S = 10.0


class SlowCopyFailingImage(Providers):
    """A copy that runs until released, and an image build that fails."""

    copy_started: threading.Event
    release_copy: threading.Event

    def _copy(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.copy_started.set()
        assert self.release_copy.wait(WAIT_S)
        return "created", inputs

    def _image(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise ValueError("docker build failed")


def _providers(tmp_path: Path) -> SlowCopyFailingImage:
    providers = SlowCopyFailingImage(State.load(tmp_path / "state.json"), Recording(), {}, tmp_path, lambda _: None)
    providers.copy_started, providers.release_copy = threading.Event(), threading.Event()
    return providers


def test_after_a_failure_the_engine_waits_for_operations_under_way_and_starts_no_new_one(tmp_path: Path) -> None:
    providers = _providers(tmp_path)
    copy = threading.Thread(target=providers.new_resource, args=(pulumi.runtime.MockResourceArgs(COPY, "cfg", {}),))
    copy.start()
    assert providers.copy_started.wait(WAIT_S)
    with pytest.raises(ValueError, match="docker build failed"):
        providers.new_resource(pulumi.runtime.MockResourceArgs(IMAGE, "img", {}))
    with pytest.raises(RuntimeError, match="pw: not started, the apply already failed"):
        providers.new_resource(pulumi.runtime.MockResourceArgs(PASSWORD, "pw", {"length": 8}))

    waited = threading.Event()
    waiter = threading.Thread(target=lambda: (providers.wait_idle(), waited.set()))
    waiter.start()
    assert not waited.wait(0.2), "wait_idle returned while the copy was still running"
    providers.release_copy.set()
    assert waited.wait(WAIT_S)
    copy.join(WAIT_S)
    waiter.join(WAIT_S)
    # The copy under way was recorded before wait_idle returned; the refused password never was.
    assert providers.state.get(COPY, "cfg") is not None
    assert providers.state.get(PASSWORD, "pw") is None
    assert providers.failures == ["docker-build:index:Image img: docker build failed"]


def test_once_idle_is_awaited_no_late_operation_writes_state(tmp_path: Path) -> None:
    providers = _providers(tmp_path)
    providers.wait_idle()  # apply's failure path, before `down` removes state.json
    with pytest.raises(RuntimeError, match="not started"):
        providers.new_resource(pulumi.runtime.MockResourceArgs(PASSWORD, "late", {"length": 8}))
    assert not (tmp_path / "state.json").exists()
