"""Evaluate the CrossGuard pack (policies/rules.py) on a plan's recorded resources.

Pulumi runs the pack during `pulumi preview --policy-pack policies`; the offline plan calls the
same policy objects here, handing them what the engine would: inputs with secrets unwrapped, each
policy's config (its schema defaults, overridden by what the stack implies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.plan.pulumi_sdk import is_secret, unwrap_secret
from infra.plan.recorder import Recording
from policies.rules import POLICIES, default_config


@dataclass(frozen=True)
class Violation:
    policy: str
    level: str  # mandatory | advisory
    resource: str  # "type name", or "stack"
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.policy}: {self.resource}: {self.message}"


def _plain(value: Any) -> Any:
    if is_secret(value):
        return _plain(unwrap_secret(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value  # assets stay assets: rules read StringAsset.text as under the engine


def resource_options(parent: str | None = None) -> PolicyResourceOptions:
    """The options a resource shows the policies: none set, as the mock monitor records none."""
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def evaluate(recording: Recording, overrides: dict[str, dict[str, Any]] | None = None) -> list[Violation]:
    config = default_config()
    for name, values in (overrides or {}).items():
        config[name].update(values)
    resources = [(r, f"urn:pulumi:plan::vllm-gb10::{r.type}::{r.name}", _plain(r.inputs)) for r in recording.resources]
    by_urn = {urn: f"{r.type} {r.name}" for r, urn, _ in resources}
    violations: list[Violation] = []

    def reporter(policy_name: str, level: str, at: str | None = None) -> Callable[..., None]:
        """A report_violation callback; `at` is the resource under validation (resource policies)."""

        def report(message: str, urn: str | None = None) -> None:
            where = by_urn.get(at or urn or "", "stack")
            violations.append(Violation(policy_name, level, where, message))

        return report

    for policy in POLICIES:
        level = "mandatory" if policy.enforcement_level == EnforcementLevel.MANDATORY else "advisory"
        if isinstance(policy, ResourceValidationPolicy):
            for r, urn, props in resources:
                args = ResourceValidationArgs(
                    r.type, props, urn, r.name, resource_options(r.parent), None, config[policy.name]
                )
                policy.validate(args, reporter(policy.name, level, urn))
        elif isinstance(policy, StackValidationPolicy):
            stack_resources = [
                PolicyResource(r.type, props, urn, r.name, resource_options(r.parent), None, None, [], {})
                for r, urn, props in resources
            ]
            policy.validate(StackValidationArgs(stack_resources, config[policy.name]), reporter(policy.name, level))
    return violations
