"""Offline plan: the stack's resources, outputs and generated files without CLI, cloud or host.

`python -m infra.plan --stack NAME [--out DIR] [--diff OLD_PLAN_JSON]`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.config import PROJECT, DataSettings
from infra.plan.policy_check import Violation, evaluate
from infra.plan.recorder import MASK, Recording, generated_files, masked_inputs, run_program
from infra.plan.stackfile import read_stack_file

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Plan:
    stack: str
    resources: list[dict[str, Any]]
    outputs: dict[str, Any]
    files: dict[str, str]
    placeholders: list[str]
    known_secrets: set[str]
    violations: list[Violation]
    recording: Recording
    exemptions: list[str] = field(default_factory=list)  # policies the stack file turns down, and why
    stand_ins: list[str] = field(default_factory=list)  # required non-secret keys the plan made up

    @property
    def mandatory_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.level == "mandatory"]

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "resources": self.resources, "outputs": self.outputs}


def build_plan(stack: str, project_dir: Path = PROJECT_DIR, overrides: dict[str, str] | None = None) -> Plan:
    """Plan `stack` from its stack file; `overrides` replace raw values (bare keys), for tests."""
    stack_config = read_stack_file(project_dir, stack)
    values = dict(stack_config.values)
    for key, value in (overrides or {}).items():
        full = f"vllm-gb10:{key}"
        if value is None:
            values.pop(full, None)
        else:
            values[full] = value
    recording = run_program(stack, values, stack_config.secret_keys)
    known_secrets = recording.generated_secrets | {values[k] for k in stack_config.secret_keys}
    resources = sorted(
        (
            {"type": r.type, "name": r.name, "parent": r.parent, "inputs": masked_inputs(r, known_secrets)}
            for r in recording.resources
        ),
        key=lambda r: (r["type"], r["name"]),
    )
    outputs = {k: MASK if k in recording.secret_outputs else v for k, v in sorted(recording.outputs.items())}
    return Plan(
        stack=stack,
        resources=resources,
        outputs=outputs,
        files=generated_files(recording, known_secrets),
        placeholders=stack_config.placeholders,
        known_secrets=known_secrets,
        violations=evaluate(recording, policy_config(values)),
        recording=recording,
        exemptions=policy_exemptions(values),
        stand_ins=stack_config.stand_ins,
    )


def policy_config(values: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Policy config the stack implies: publicDataServices is the explicit exception it allows."""
    raw = values.get(f"{PROJECT}:publicDataServices")
    public = DataSettings.model_validate({} if raw is None else {"publicDataServices": raw}).public
    return {"data-services-private": {"allowPublicDataServices": public}}


def policy_exemptions(values: dict[str, str]) -> list[str]:
    """What the stack file switches off, said in the plan output: a security default is never dropped silently."""
    if policy_config(values)["data-services-private"]["allowPublicDataServices"]:
        return [
            "data-services-private: exempted by publicDataServices: true: Redis, Postgres and the S3 server "
            "listen on the hosts' public address"
        ]
    return []


def write_plan(plan: Plan, out_dir: Path) -> Path:
    """Write DIR/<stack>/plan.json and DIR/<stack>/files/…; returns the plan.json path."""
    stack_dir = out_dir / plan.stack
    files_dir = stack_dir / "files"
    if files_dir.exists():
        for old in sorted(files_dir.rglob("*"), reverse=True):
            old.unlink() if old.is_file() else old.rmdir()
    files_dir.mkdir(parents=True, exist_ok=True)
    for relative, text in plan.files.items():
        target = files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    path = stack_dir / "plan.json"
    path.write_text(json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n")
    return path
