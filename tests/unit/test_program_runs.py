"""Several runs of a Pulumi program in one process, as `make stack-up`'s engine and the offline plan do:
a failed run must not fail the next one (the SDK keeps the failed run's tasks in process-wide state)."""

from __future__ import annotations

import pulumi
import pulumi_random as random
import pytest
from pulumi.runtime import settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.plan.recorder import reset_program_state


class Mocks(pulumi.runtime.Mocks):
    def __init__(self, fail: bool):
        self.fail = fail

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if self.fail and args.name == "bad":
            raise ValueError("the first run's seeded failure")
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        return {}


def program() -> None:
    random.RandomPassword("bad", length=8)
    pulumi.export("good", random.RandomPassword("good", length=8).result)


def run(fail: bool) -> None:
    reset_program_state()
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(Mocks(fail), project="p", stack="s", preview=False)
    _sync_await(run_pulumi_func(program))


def test_a_failed_run_does_not_fail_the_next_one() -> None:
    with pytest.raises(ValueError, match="the first run's seeded failure"):
        run(fail=True)
    run(fail=False)  # without the reset: ValueError from the first run, re-raised
    with pytest.raises(ValueError, match="seeded failure"):
        run(fail=True)
    run(fail=False)
