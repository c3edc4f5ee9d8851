"""On a machine with an NVIDIA GPU: `make bench-box`'s benchmark against a CUDA vLLM server behind HAProxy.

The same one-server 'stack' as tests/integration/test_bench_box.py (the tiny Llama started through the
start-time headroom check, here reading the machine's own /proc/meminfo, behind HAProxy with a key and
TLS), on the CUDA build of vLLM, with the local stack's workload shape (400 prompt tokens, 100 output
tokens) and a sweep of 1, 4 and 16. Runs where VLLM_GB10_GPU_TESTS=1; skipped elsewhere. It prints the
figures; it asserts only that every request completed and every figure is there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_bench_box import bench_box, deployed_stack

pytestmark = pytest.mark.gpu


def test_bench_box_on_a_cuda_vllm_server(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available(), "no CUDA device visible"
    pytest.importorskip("vllm", reason="the CUDA build of vLLM is not installed on this machine")
    with deployed_stack(tmp_path, None) as deployed:
        results = tmp_path / "results"
        done = bench_box(deployed, results, "--concurrency", "1,4,16", "--prompts", "32", "--input-len", "400")
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = results.iterdir()
    levels = json.loads((run_dir / "summary.json").read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4, 16]
    assert all(lv["completed"] == 32 and lv["failed"] == 0 and lv["output_throughput"] > 0 for lv in levels)
    assert "170,000-request job, tiny-llama: " in done.stdout
