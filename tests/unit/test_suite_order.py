"""harness/suite.py: the units of work pytest-xdist hands out, and their order (slowest first)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import suite


@dataclass(frozen=True)
class FakeItem:
    nodeid: str


def test_the_slowest_unit_goes_first_and_the_host_wide_modules_stay_together() -> None:
    items = [
        FakeItem("tests/unit/test_a.py::test_1"),
        FakeItem("tests/integration/test_offload.py::test_x"),
        FakeItem("tests/unit/test_a.py::test_2"),
        FakeItem("tests/integration/test_slow.py::test_y[a::b]"),
        FakeItem("tests/stack/test_stack_up.py::test_z"),
        FakeItem("tests/unit/test_new.py::test_3"),
    ]
    timings = {
        "tests/unit/test_a.py": 1.0,
        "tests/integration/test_slow.py": 300.0,
        "tests/integration/test_offload.py": 200.0,
        "tests/stack/test_stack_up.py": 150.0,
    }
    placed = suite.ordered(items, timings)
    assert [(item.nodeid, unit) for item, unit in placed] == [
        ("tests/integration/test_offload.py::test_x", suite.HOST_WIDE),  # 350 s together
        ("tests/stack/test_stack_up.py::test_z", suite.HOST_WIDE),
        ("tests/integration/test_slow.py::test_y[a::b]", "tests/integration/test_slow.py"),
        ("tests/unit/test_new.py::test_3", "tests/unit/test_new.py"),  # unmeasured: UNKNOWN_MODULE_S
        ("tests/unit/test_a.py::test_1", "tests/unit/test_a.py"),  # a module's tests keep their order
        ("tests/unit/test_a.py::test_2", "tests/unit/test_a.py"),
    ]


def test_each_module_is_one_unit_of_work_for_xdist() -> None:
    assert suite.unit_of("tests/unit/test_a.py::TestX::test_1[p]") == "tests/unit/test_a.py"
    assert all(suite.unit_of(f"{module}::test") == suite.HOST_WIDE for module in suite.HOST_WIDE_MODULES)
    assert all(Path(suite.ROOT, module).is_file() for module in suite.HOST_WIDE_MODULES), "a renamed module"


def test_timings_come_from_a_junit_report_per_module(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.test_a" name="test_1" time="1.25"/>'
        '<testcase classname="tests.unit.test_a.TestGroup" name="test_2" time="2.5"/>'
        '<testcase classname="tests.stack.test_stack_up" name="test_3" time="100"/>'
        "</testsuite></testsuites>"
    )
    out = tmp_path / "timings.json"
    assert suite.main(["timings", str(report), "--out", str(out)]) == 0
    expected = {"tests/stack/test_stack_up.py": 100.0, "tests/unit/test_a.py": 3.8}
    assert json.loads(out.read_text())["modules"] == expected
    assert suite.load_timings(out) == expected
    assert suite.load_timings(tmp_path / "missing.json") == {}


def test_the_committed_timings_name_only_modules_that_exist() -> None:
    """A renamed or deleted module left in tests/timings.json would weigh nothing; refresh with `make timings`."""
    assert all(Path(suite.ROOT, module).is_file() for module in suite.load_timings())
