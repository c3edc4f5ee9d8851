"""`python -m harness demo`: `up` prints its ready line, a batch runs, SIGTERM stops it cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import psutil
import pytest

from harness.servers import ROOT

pytestmark = pytest.mark.integration


OURS = re.compile(r"vllm-gb10-local-|harness up|runtime\.batch|redis-server|moto")


def started_since(start: float) -> list[str]:
    """Processes of the demo's kind created since `start` and still running: only what this test started
    (a machine-wide pgrep also caught unrelated processes of other suites on the machine)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if (
            process.info["create_time"] >= start
            and OURS.search(cmdline)
            and process.info["pid"] != psutil.Process().pid
        ):
            found.append(f"{process.info['pid']} {cmdline}")
    return found


def test_demo_runs_a_batch_and_stops_everything() -> None:
    start = time.time() - 1  # create_time has a coarse clock
    result = subprocess.run(
        [sys.executable, "-m", "harness", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "api_key=" in result.stdout and "completed, 5/5 completed" in result.stdout
    assert "demo-4:" in result.stdout
    assert "harness up stopped (exit 0)" in result.stdout
    assert started_since(start) == [], "processes the demo started are still running"
