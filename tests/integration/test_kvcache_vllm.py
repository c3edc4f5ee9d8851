"""The KV policy against vLLM itself (CPU build, tiny model): capacity and the quality harness."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUDGET = 64 * 1024**2  # a fixed KV budget for both dtypes


def kvcache(*args: str, timeout: int = 600) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.kvcache", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def capacity(tiny_model: Path) -> dict[str, dict]:
    return {
        dtype: kvcache(
            "probe", "--model", str(tiny_model), "--kv-cache-memory-bytes", str(BUDGET), "--kv-cache-dtype", dtype
        )
        for dtype in ("auto", "fp8")
    }


@pytest.mark.parametrize("dtype", ["auto", "fp8"])
def test_vllm_kv_capacity_agrees_with_the_policy_to_one_block(capacity: dict, dtype: str) -> None:
    """Tolerance: one KV block. vLLM allocates whole blocks; the policy counts them the same way."""
    probe = capacity[dtype]
    assert probe["vllm_tokens"] > 0
    assert abs(probe["vllm_tokens"] - probe["predicted_tokens"]) <= probe["block_size"], probe


def test_fp8_holds_about_twice_the_tokens_of_auto(capacity: dict) -> None:
    auto, fp8 = capacity["auto"]["vllm_tokens"], capacity["fp8"]["vllm_tokens"]
    assert abs(fp8 - 2 * auto) <= capacity["fp8"]["block_size"], (auto, fp8)


def test_evaluate_runs_and_reports_against_the_gate(tiny_model: Path) -> None:
    report = kvcache("evaluate", "--model", str(tiny_model), "--max-model-len", "512", "--json")
    ppl = report["perplexity"]
    assert set(ppl) == {"auto", "fp8"} and all(math.isfinite(v) and v > 1 for v in ppl.values())
    assert report["relative_change"] == pytest.approx((ppl["fp8"] - ppl["auto"]) / ppl["auto"])
    assert report["gate"] == 0.005 and report["passed"] == (report["relative_change"] < 0.005)
