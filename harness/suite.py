"""How the suite is ordered and split across pytest-xdist workers, and where its measured timings live.

`make test` runs `pytest -n 2 --dist loadscope --no-loadscope-reorder`, and tests/conftest.py hands
pytest-xdist the scheduler below: every test module is one unit of work, so its module-scoped servers
(a vLLM CPU server, a Ray head, the local stack) start once, on one worker. The HOST_WIDE modules share
one unit: they use what only one test at a time may hold on a machine (the private Docker engine and the
fixed loopback addresses of the local stack, Ray's default dashboard-agent port), so they run one after
another on one worker while the other worker takes the rest. (xdist's own `--dist loadgroup` cannot do
this under pytest 9.2: it renames items through `item._nodeid`, which pytest 9 no longer reads.)
Units are handed out slowest first (longest processing time first), in the order tests/conftest.py
sorts the collection by the durations of a measured run in `tests/timings.json`, so the long ones do not
start last and leave a worker idle at the end. `python -m harness.suite timings JUNIT_XML` rewrites that
file from a run's `--junitxml` report (`make timings`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "tests" / "timings.json"
HOST_WIDE = "host-wide"  # the unit of work of the modules below
HOST_WIDE_MODULES = {
    # The private dockerd (build/stack), sshd and every service of stack `local` on 127.0.0.2/.3 at fixed
    # ports, a Ray head among them on Ray's default dashboard-agent port.
    "tests/stack/test_stack_up.py": "the local stack",
    # A Ray head of its own, and `run` without --address starts a local cluster: Ray's default
    # dashboard-agent port (52365), as the local stack's Ray head.
    "tests/integration/test_offload.py": "Ray clusters",
}
UNKNOWN_MODULE_S = 10.0  # a module not in the timings yet (a new one): somewhere in the middle


class Item(Protocol):
    """What the ordering needs of a pytest item."""

    @property
    def nodeid(self) -> str: ...


def module_of(nodeid: str) -> str:
    """`tests/x/test_y.py::test_z[a::b]` -> `tests/x/test_y.py`."""
    return nodeid.split("::", 1)[0]


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the host-wide unit."""
    module = module_of(nodeid)
    return HOST_WIDE if module in HOST_WIDE_MODULES else module


def make_scheduler(config: Any, log: Any) -> Any:
    """pytest-xdist's LoadScopeScheduling, with units of work from `unit_of` (a module, or the host-wide one)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc,unused-ignore]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ModuleScheduling(config, log)


def load_timings(path: Path = TIMINGS) -> dict[str, float]:
    """Module -> seconds from a measured run; empty when the file is missing (all units weigh the same)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): float(v) for k, v in data["modules"].items()}


def ordered(items: Sequence[Item], timings: dict[str, float]) -> list[tuple[Item, str]]:
    """Items with their group, the heaviest group first; a group's items keep their collected order."""
    groups = [unit_of(item.nodeid) for item in items]
    weight: dict[str, float] = defaultdict(float)
    for module in {module_of(item.nodeid) for item in items}:
        weight[unit_of(module)] += timings.get(module, UNKNOWN_MODULE_S)
    first_seen = {g: i for i, g in reversed(list(enumerate(groups)))}
    keyed = sorted(
        range(len(items)), key=lambda i: (-weight[groups[i]], first_seen[groups[i]], i)
    )  # stable within a group
    return [(items[i], groups[i]) for i in keyed]


def timings_from_junit(paths: Iterable[Path]) -> dict[str, float]:
    """Seconds per test module (set-up, call and teardown together) from pytest `--junitxml` reports."""
    totals: dict[str, float] = defaultdict(float)
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            classname = case.get("classname", "")
            # pytest writes `tests.unit.test_x` or `tests.unit.test_x.TestClass`; the file is the module.
            parts = classname.split(".")
            while parts and not parts[-1].startswith("test_"):
                parts.pop()
            if not parts:
                continue
            module = "/".join(parts) + ".py"
            totals[module] += float(case.get("time", "0") or 0)
    return {module: round(seconds, 1) for module, seconds in sorted(totals.items())}


DURATION_LINE = re.compile(r"^\s*(?P<s>[0-9.]+)s (?P<phase>setup|call|teardown)\s+(?P<nodeid>\S.*)$")


def durations_table(log: str) -> str:
    """A Markdown table of pytest `--durations=0` lines per module: set-up (the fixtures: servers, the
    stack, image builds), the test bodies and teardown, slowest module first."""
    phases: dict[str, dict[str, float]] = defaultdict(lambda: {"setup": 0.0, "call": 0.0, "teardown": 0.0})
    for line in log.splitlines():
        if match := DURATION_LINE.match(line):
            phases[module_of(match["nodeid"].strip())][match["phase"]] += float(match["s"])
    rows = sorted(phases.items(), key=lambda kv: -sum(kv[1].values()))
    total = {p: sum(v[p] for _, v in rows) for p in ("setup", "call", "teardown")}
    lines = ["| module | set-up s | tests s | teardown s | all s |", "|---|---|---|---|---|"]
    for module, v in [*rows, ("**all**", total)]:
        lines.append(f"| {module} | {v['setup']:.0f} | {v['call']:.0f} | {v['teardown']:.0f} | {sum(v.values()):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.suite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    timings = sub.add_parser("timings", help="rewrite tests/timings.json from --junitxml reports")
    timings.add_argument("reports", nargs="+", type=Path)
    timings.add_argument("--out", type=Path, default=TIMINGS)
    durations = sub.add_parser("durations", help="per-module table of a run's --durations=0 output")
    durations.add_argument("log", type=Path)
    args = parser.parse_args(argv)
    if args.command == "durations":
        print(durations_table(args.log.read_text(errors="replace")))
        return 0
    modules = timings_from_junit(args.reports)
    if not modules:
        print(f"no test cases in {', '.join(map(str, args.reports))}", file=sys.stderr)
        return 1
    note = "Seconds per test module from a measured run (make timings); harness/suite.py orders the suite by them."
    args.out.write_text(json.dumps({"about": note, "modules": modules}, indent=1) + "\n")
    print(f"{args.out}: {len(modules)} modules, {sum(modules.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
