"""Several runs of a Pulumi program in one process, as `make stack-up`'s engine and the offline plan do:
a failed run must not fail the next one (the SDK keeps the failed run's tasks in process-wide state)."""

from __future__ import annotations

import pulumi
import pulumi_random as random
import pytest

from infra.plan import pulumi_sdk


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
    mocks = Mocks(fail)
    monitor = pulumi_sdk.MockMonitor(mocks)
    pulumi_sdk.run_program(program, mocks, monitor, project="p", stack="s", config={}, secret_keys=[])


def test_a_failed_run_does_not_fail_the_next_one() -> None:
    with pytest.raises(ValueError, match="the first run's seeded failure"):
        run(fail=True)
    run(fail=False)  # without the reset: ValueError from the first run, re-raised
    with pytest.raises(ValueError, match="seeded failure"):
        run(fail=True)
    run(fail=False)
