"""`python -m runtime.local demo`: `up` prints its ready line, a batch runs, SIGTERM stops it cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.local.servers import ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_a_batch_and_stops_everything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.local", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "api_key=" in result.stdout and "completed, 5/5 completed" in result.stdout
    assert "demo-4:" in result.stdout
    assert "runtime.local up stopped (exit 0)" in result.stdout
    leftovers = subprocess.run(
        ["pgrep", "-f", "vllm-gb10-local-|runtime.local up|runtime.batch"], capture_output=True, text=True
    )
    assert leftovers.stdout == "", f"processes left running: {leftovers.stdout}"
