"""CLI: python -m infra.plan --stack NAME [--out DIR] [--diff OLD_PLAN_JSON]"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from infra.config import ConfigError
from infra.plan import PROJECT_DIR, build_plan, write_plan
from infra.plan.diff import diff_plans, format_diff


def read_files(folder: Path) -> dict[str, str] | None:
    """The generated files written beside an old plan.json (None when it has none: compare plans only)."""
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.plan", description=__doc__)
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "build" / "plan", help="output directory")
    parser.add_argument("--diff", type=Path, help="a previous plan.json to compare with")
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="directory of Pulumi.<stack>.yaml")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    old = None
    if args.diff is not None:
        try:
            old = json.loads(args.diff.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: --diff {args.diff}: {err}", file=sys.stderr)
            return 2
    try:
        plan = build_plan(args.stack, args.project_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_plan(plan, args.out)
    counts = Counter(r["type"] for r in plan.resources)
    print(f"stack {plan.stack}: {len(plan.resources)} resources")
    for type_, count in sorted(counts.items()):
        print(f"  {count:3d}  {type_}")
    print("outputs:")
    for name, value in plan.outputs.items():
        print(f"  {name}: {json.dumps(value)}")
    if plan.placeholders:
        print(f"placeholders for secrets not in the stack file: {', '.join(plan.placeholders)}")
    if plan.stand_ins:
        print(f"stand-ins for keys `pulumi up` needs set (not in the stack file): {', '.join(plan.stand_ins)}")
    print(f"wrote {path} and {len(plan.files)} files under {path.parent / 'files'}")
    if old is not None:
        print(f"diff against {args.diff}:")
        print(format_diff(diff_plans(old, plan.to_json(), read_files(args.diff.parent / "files"), plan.files)))
    for exemption in plan.exemptions:
        print(f"policy exemption: {exemption}")
    if plan.violations:
        print("policy violations:")
        for violation in plan.violations:
            print(f"  {violation}")
    else:
        print("policy violations: none")
    if plan.mandatory_violations:
        print(f"error: {len(plan.mandatory_violations)} mandatory policy violations", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
