"""The mutation score of the last `mutmut run` (make mutation), per file and in all.

mutmut ([tool.mutmut] in pyproject.toml) mutates the policy rules, config validation, the KV policy and
the job store, and runs the tests that reach each mutated function. A mutant is caught when a test
fails (or hangs: a timeout); it survives when every test still passes. Mutants in code no selected test
reaches are counted apart, so the score says how well the tests that run check what they run, and the
second figure how much of the code they reach at all.

`python -m bench.mutation [--survivors]` (from the repository root, after `mutmut run`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code, 3.8).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout"}
STATUS |= {code: "timeout" for code in (-24, 24, 152, 255)}
CAUGHT = ("killed", "timeout")


def statuses(meta: Path) -> dict[str, str]:
    """Mutant name -> its status, from one `<file>.meta` that mutmut wrote."""
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: "not checked" if code is None else STATUS.get(code, "suspicious") for name, code in codes.items()}


def score(counts: Counter[str]) -> tuple[float, float]:
    """(caught / mutants some test reached, caught / all mutants), in percent."""
    caught = sum(counts[s] for s in CAUGHT)
    reached = sum(counts.values()) - counts["no tests"] - counts["skipped"] - counts["not checked"]
    total = sum(counts.values())
    return (100 * caught / reached if reached else 0.0), (100 * caught / total if total else 0.0)


def row(name: str, counts: Counter[str]) -> str:
    """One line of the table: the file (or "all"), its mutants by outcome, and both scores."""
    reached, overall = score(counts)
    caught = sum(counts[s] for s in CAUGHT)
    return (
        f"{name:32} {sum(counts.values()):8} {caught:7} {counts['survived']:9} {counts['no tests']:8}"
        f" {reached:6.1f}% {overall:6.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list the mutants that survived")
    args = parser.parse_args()
    metas = sorted(args.mutants.rglob("*.py.meta"))
    if not metas:
        raise SystemExit(f"no mutmut results under {args.mutants}/: run `make mutation` first")
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print(f"{'file':32} {'mutants':>8} {'caught':>7} {'survived':>9} {'no test':>8} {'score':>7} {'of all':>7}")
    for meta in metas:
        found = statuses(meta)
        counts = Counter(found.values())
        total += counts
        print(row(str(meta.relative_to(args.mutants)).removesuffix(".meta"), counts))
        survivors += sorted(m for m, s in found.items() if s == "survived")
    print(row("all", total))
    if args.survivors:
        print("\nsurvived (mutmut show <name>):", *survivors, sep="\n  ")


if __name__ == "__main__":
    main()
