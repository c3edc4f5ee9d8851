"""The stacks' plans as their stack files give them, built once per test process and shared.

A plan runs the whole Pulumi program under the mock monitor (seconds each); a dozen test modules read
the same three. Each caller gets its own deep copy, so a test that changes what it got changes nothing
for the next one. Plans with overrides are built by the test itself (infra.plan.build_plan).
"""

from __future__ import annotations

import copy
import functools

from infra.plan import Plan, build_plan


@functools.cache
def _built(stack: str) -> Plan:
    return build_plan(stack)


def stack_plan(stack: str) -> Plan:
    """`build_plan(stack)`, from this process's cache."""
    return copy.deepcopy(_built(stack))
