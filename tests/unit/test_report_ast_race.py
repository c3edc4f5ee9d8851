"""A failure is still reported when rendering its traceback hits CPython 3.11's AST race (gh-106905)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).parents[1] / "conftest.py"

# The race made deterministic: every ast.parse pytest does to render a traceback fails as the race does.
FAILING = """
import _pytest._code.source as source

def _raise(*args, **kwargs):
    raise SystemError("AST constructor recursion depth mismatch (before=126, after=178)")

def test_fails_while_rendering_is_broken(monkeypatch):
    monkeypatch.setattr(source.ast, "parse", _raise)
    print("the stack log a user needs")
    raise RuntimeError("the real failure: vllm-image-build failed")
"""


def test_the_real_failure_is_reported_not_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_seeded.py").write_text(FAILING)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(CONFTEST.parents[1])},  # the conftest imports harness.suite
    )
    out = done.stdout + done.stderr
    assert "INTERNALERROR" not in out, out
    assert done.returncode == 1, out  # tests failed, not 3 (internal error)
    assert "RuntimeError: the real failure: vllm-image-build failed" in out
    assert "the stack log a user needs" in out
    assert "1 failed" in out
