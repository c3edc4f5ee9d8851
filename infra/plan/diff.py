"""Differences between two plans, in the spirit of `pulumi preview --diff`.

A changed resource is an update (`~`) or, where its provider cannot change that input in place, a
replacement (`+-`), as Pulumi would show it. Generated files are compared by content: a compose
file service by service and key by key, other files line by line, rather than by their hash.
A command whose trigger is the run's stamp (the preflight) is replaced on every real `pulumi up`;
the plan pins that stamp, and the diff lists such a command as replaced every run, apart from the
changes, so a plan after no change is clean apart from it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from infra.components.host import PLAN_RUN_STAMP

Key = tuple[str, str]

# Inputs a provider cannot change in place, by resource type (a regex over the flattened path).
# pulumi-command 1.2 (provider/pkg/provider/common/inputs.go, remote/copy.go): `triggers` is the only
# input tagged `provider:"replaceOnChanges"`, on Command and CopyToRemote alike; CopyToRemote
# implements infer.CustomUpdate (remote/copyController.go), so a new source or path is an update.
# pulumi-docker-build's Image (provider/internal/image.go, Diff) reports every change, contextHash
# included, as an update: it is absent here.
_K8S_IDENTITY = r"inputs\.metadata\.(name|namespace)$"
REPLACE_ON: dict[str, str] = {
    "command:remote:Command": r"inputs\.triggers",
    "command:remote:CopyToRemote": r"inputs\.triggers",
    "random:index/randomPassword:RandomPassword": r"inputs\.",
    "kubernetes:apps/v1:StatefulSet": rf"{_K8S_IDENTITY}|inputs\.spec\.(volumeClaimTemplates|selector|serviceName)",
    "kubernetes:apps/v1:Deployment": rf"{_K8S_IDENTITY}|inputs\.spec\.selector",
    "kubernetes:batch/v1:Job": rf"{_K8S_IDENTITY}|inputs\.spec\.template",
    "kubernetes:core/v1:PersistentVolumeClaim": (
        rf"{_K8S_IDENTITY}|inputs\.spec\.(storageClassName|accessModes|volumeName)"
    ),
    "kubernetes:core/v1:Service": rf"{_K8S_IDENTITY}|inputs\.spec\.clusterIP",
}
_ANY_K8S = _K8S_IDENTITY


@dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class PlanDiff:
    added: list[Key]
    removed: list[Key]
    changed: dict[Key, list[Change]]
    outputs: list[Change]
    files: dict[str, list[str]] = field(default_factory=dict)  # file -> what changed in it
    every_run: list[Key] = field(default_factory=list)  # replaced on every `pulumi up` (run-stamp trigger)
    rolls: list[str] = field(default_factory=list)  # hosts whose servers this change drains, in roll order

    @property
    def empty(self) -> bool:
        """No change apart from the replacements that every run makes."""
        return not (self.added or self.removed or self.changed or self.outputs or self.files)

    @property
    def replaced(self) -> list[Key]:
        return [key for key, changes in self.changed.items() if replaces(key[0], changes)]


def replaces(type_: str, changes: list[Change]) -> bool:
    """Whether Pulumi would replace the resource for these changes (else it updates it in place)."""
    pattern = REPLACE_ON.get(type_, _ANY_K8S if type_.startswith("kubernetes:") else None)
    return pattern is not None and any(re.match(pattern, c.path) for c in changes)


def replaced_every_run(resource: dict[str, Any]) -> bool:
    """A command whose trigger is the run's stamp: a new value, so a replacement, on every `pulumi up`
    (the preflight, infra/components/host.py)."""
    triggers = resource.get("inputs", {}).get("triggers")
    return (
        resource.get("type") == "command:remote:Command" and isinstance(triggers, list) and PLAN_RUN_STAMP in triggers
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _changes(old: Any, new: Any) -> list[Change]:
    a, b = _flatten(old), _flatten(new)
    return [Change(p, a.get(p), b.get(p)) for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]


def diff_files(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """File -> its changes: compose files as `service: key: old => new`, others as changed lines."""
    out: dict[str, list[str]] = {}
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None or after is None:
            out[name] = ["(new file)" if before is None else "(file removed)"]
        elif name.endswith("docker-compose.yml"):
            out[name] = _compose_changes(yaml.safe_load(before) or {}, yaml.safe_load(after) or {})
        else:
            lines = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            out[name] = [line for line in lines if line[:1] in "+-" and line[:3] not in {"+++", "---"}]
    return out


def _compose_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old_services, new_services = before.get("services", {}), after.get("services", {})
    lines = [f"+ service {n}" for n in sorted(set(new_services) - set(old_services))]
    lines += [f"- service {n}" for n in sorted(set(old_services) - set(new_services))]
    for name in sorted(set(old_services) & set(new_services)):
        lines += [
            f"~ {name}: {c.path}: {_short(c.old)} => {_short(c.new)}"
            for c in _changes(old_services[name], new_services[name])
        ]
    rest = {k: v for k, v in before.items() if k != "services"}, {k: v for k, v in after.items() if k != "services"}
    lines += [f"~ {c.path}: {_short(c.old)} => {_short(c.new)}" for c in _changes(*rest)]
    return lines


def diff_plans(
    old: dict[str, Any],
    new: dict[str, Any],
    old_files: dict[str, str] | None = None,
    new_files: dict[str, str] | None = None,
) -> PlanDiff:
    def index(plan: dict[str, Any]) -> dict[Key, dict[str, Any]]:
        return {(r["type"], r["name"]): r for r in plan["resources"]}

    before, after = index(old), index(new)
    changed = {}
    for key in sorted(set(before) & set(after)):
        delta = _changes(
            {"parent": before[key]["parent"], "inputs": before[key]["inputs"]},
            {"parent": after[key]["parent"], "inputs": after[key]["inputs"]},
        )
        if delta:
            changed[key] = delta
    replaced = [key for key, changes in changed.items() if replaces(key[0], changes)]
    return PlanDiff(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=changed,
        rolls=_rolls(replaced, after),
        outputs=_changes(old.get("outputs", {}), new.get("outputs", {})),
        files=diff_files(old_files, new_files) if old_files is not None and new_files is not None else {},
        every_run=sorted(
            key for key in set(before) & set(after) if replaced_every_run(after[key]) and key not in changed
        ),
    )


_ROLL_STEP = re.compile(r"^# roll step (\d+): drain (\S+)'s servers$", re.MULTILINE)


def _rolls(replaced: list[Key], after: dict[Key, dict[str, Any]]) -> list[str]:
    """The hosts a change rolls through (their drain commands are replaced), in the order it does."""
    steps = []
    for key in replaced:
        found = _ROLL_STEP.search(str(after[key]["inputs"].get("create", "")))
        if key[0] == "command:remote:Command" and found:
            steps.append((int(found.group(1)), found.group(2)))
    return [host for _, host in sorted(steps)]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_diff(diff: PlanDiff) -> str:
    every_run = [
        f"+- {t} {n} (replace: its trigger is the run's stamp, so it runs on every `pulumi up`)"
        for t, n in diff.every_run
    ]
    if diff.empty:
        return "\n".join([*every_run, "no changes" + (" apart from the per-run replacements" if every_run else "")])
    lines = list(every_run)
    for t, n in diff.added:
        lines.append(f"+ {t} {n}")
    for t, n in diff.removed:
        lines.append(f"- {t} {n}")
    replaced = set(diff.replaced)
    for (t, n), changes in diff.changed.items():
        lines.append(f"{'+-' if (t, n) in replaced else '~'} {t} {n}{' (replace)' if (t, n) in replaced else ''}")
        lines.extend(f"    ~ {c.path}: {_short(c.old)} => {_short(c.new)}" for c in changes)
    if diff.outputs:
        lines.append("outputs:")
        lines.extend(f"    ~ {c.path}: {_short(c.old)} => {_short(c.new)}" for c in diff.outputs)
    if diff.files:
        lines.append("files:")
        for name, file_lines in diff.files.items():
            lines.append(f"  {name}")
            lines.extend(f"    {line}" for line in file_lines)
    if diff.rolls:
        lines.append(
            f"rolling, one host at a time: {', then '.join(diff.rolls)} (each host's servers drained,"
            " its services updated, and back in the load balancer's rotation before the next)"
        )
    updated = len(diff.changed) - len(replaced)
    lines.append(
        f"{len(diff.added)} to add, {updated} to change, {len(replaced) + len(diff.every_run)} to replace"
        f"{f' ({len(diff.every_run)} on every run)' if diff.every_run else ''}, {len(diff.removed)} to delete"
    )
    return "\n".join(lines)
