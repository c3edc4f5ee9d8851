"""The committed plan of every stack: a change to what a stack declares shows up here first.

When a change is intended, refresh the snapshots with `make snapshot` and commit them; the diff
of tests/snapshots/ is then the reviewable preview of the change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.plan.diff import diff_plans, format_diff
from tests.plans import stack_plan

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = ROOT / "tests" / "snapshots"
STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))


@pytest.mark.parametrize("stack", STACKS)
def test_plan_matches_the_committed_snapshot(stack: str) -> None:
    snapshot = SNAPSHOTS / stack / "plan.json"
    assert snapshot.is_file(), f"no snapshot for stack {stack}: run `make snapshot` and commit tests/snapshots"
    plan = stack_plan(stack)
    diff = diff_plans(json.loads(snapshot.read_text()), plan.to_json())
    assert diff.empty, f"stack {stack} changed; if intended, run `make snapshot`:\n{format_diff(diff)}"
    for relative, text in plan.files.items():
        committed = SNAPSHOTS / stack / "files" / relative
        assert committed.is_file() and committed.read_text() == text, f"{relative} changed: run `make snapshot`"


def test_every_stack_has_a_snapshot_and_no_stale_ones() -> None:
    assert sorted(p.name for p in SNAPSHOTS.iterdir() if p.is_dir()) == STACKS


def test_ci_workflows_validate_against_the_github_workflow_schema() -> None:
    from importlib import resources

    import jsonschema
    from ruamel.yaml import YAML  # YAML 1.2 as GitHub reads it: `on:` stays a string key

    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "github-workflows.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    for path in workflows:
        errors = [e.message for e in validator.iter_errors(YAML(typ="safe").load(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
