"""The adapter over the Pulumi SDK's private runtime (infra/plan/pulumi_sdk.py) does what the plan and
the local engine need: an SDK upgrade that renames or reshapes one of those internals fails here,
by name, before it fails a plan in some other way."""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
import pulumi_random as random

from infra.plan import pulumi_sdk


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", {**args.inputs, "result": f"{args.name}-value"}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


class Monitor(pulumi_sdk.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.seen: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        self.seen[request.name] = pulumi_sdk.deserialize_properties(request.object)
        return response


def program() -> None:
    parent = pulumi.ComponentResource("test:index:Parent", "parent")
    password = random.RandomPassword(
        "password",
        length=12,
        keepers={"who": pulumi.Output.secret("hidden")},
        opts=pulumi.ResourceOptions(parent=parent),
    )
    pulumi.export("plain", "visible")
    pulumi.export("password", password.result)


def run(config: dict[str, str] | None = None) -> Monitor:
    mocks = Mocks()
    monitor = Monitor(mocks)
    pulumi_sdk.run_program(program, mocks, monitor, project="p", stack="s", config=config or {}, secret_keys=[])
    return monitor


def test_the_monitor_sees_each_registration_with_its_secret_markers() -> None:
    monitor = run()
    inputs = monitor.seen["password"]
    assert inputs["length"] == 12
    assert not pulumi_sdk.is_secret(inputs["length"])
    # The plan masks exactly what Pulumi would encrypt: an object holding a secret is marked whole.
    assert pulumi_sdk.is_secret(inputs["keepers"]), inputs
    assert pulumi_sdk.unwrap_secret(inputs["keepers"]) == {"who": "hidden"}


def test_the_exports_are_read_from_the_root_stack() -> None:
    run()
    outputs = pulumi_sdk.root_outputs()
    assert set(outputs) == {"plain", "password"}
    resolved = pulumi_sdk.sync_await(pulumi.Output.from_input(outputs["password"]).future())
    assert resolved == "password-value"


def test_each_run_starts_from_a_fresh_root_and_config() -> None:
    run(config={"p:size": "1"})
    assert pulumi.Config("p").get("size") == "1"
    run()
    assert pulumi.Config("p").get("size") is None
    assert set(pulumi_sdk.root_outputs()) == {"plain", "password"}


def test_a_program_runs_after_asyncio_run_left_no_current_event_loop() -> None:
    """`asyncio.run` closes its loop and leaves the thread without one; the SDK needs one. The suite's order
    put such a test before these once, and every program run after it failed ("no current event loop")."""

    async def nothing() -> int:
        return 1

    assert asyncio.run(nothing()) == 1
    monitor = run()
    assert monitor.seen
