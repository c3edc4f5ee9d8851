"""Differences between two plans, in the spirit of `pulumi preview --diff`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]


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

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.outputs)


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


def diff_plans(old: dict[str, Any], new: dict[str, Any]) -> PlanDiff:
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
    return PlanDiff(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=changed,
        outputs=_changes(old.get("outputs", {}), new.get("outputs", {})),
    )


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_diff(diff: PlanDiff) -> str:
    if diff.empty:
        return "no changes"
    lines = []
    for t, n in diff.added:
        lines.append(f"+ {t} {n}")
    for t, n in diff.removed:
        lines.append(f"- {t} {n}")
    for (t, n), changes in diff.changed.items():
        lines.append(f"~ {t} {n}")
        lines.extend(f"    ~ {c.path}: {_short(c.old)} => {_short(c.new)}" for c in changes)
    if diff.outputs:
        lines.append("outputs:")
        lines.extend(f"    ~ {c.path}: {_short(c.old)} => {_short(c.new)}" for c in diff.outputs)
    lines.append(f"{len(diff.added)} to add, {len(diff.changed)} to change, {len(diff.removed)} to delete")
    return "\n".join(lines)
