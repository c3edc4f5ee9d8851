"""`make bench-box` (issue 31 item 5) and the start-time headroom check (item 2) on real processes: a vLLM CPU
server on the tiny Llama, started through `runtime.headroom` as the stacks start it, behind HAProxy with the
rendered config (API key, TLS from a stack-like CA), and `python -m bench.box` running vLLM's own
`vllm bench serve` through it from a stack-outputs file. A short sweep (concurrency 1 and 2, 4 prompts each)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.lb_harness import Haproxy
from harness.certs import lan_certificate
from harness.servers import ROOT, VllmServer, free_port
from infra.render.haproxy import Backend, LoadBalancerConfig, render_haproxy_cfg
from runtime.headroom import GIB, MEMINFO_ENV, REFUSED
from runtime.tiny_model import make_tiny_llama
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
KEY = "sk-stack-operator-key-for-bench-box"
KV_BYTES = 64 * 1024 * 1024  # harness.servers.TINY_MODEL_VLLM_ARGS
ENOUGH_KIB = 64 * 1024**2  # a recorded-style meminfo saying 64 GiB are available


def _meminfo(path: Path, available_kib: int) -> Path:
    path.write_text(f"MemTotal:       {2 * available_kib} kB\nMemFree:        {available_kib} kB\n"
                    f"MemAvailable:   {available_kib} kB\n")  # fmt: skip
    return path


def _headroom_flags(reserve: int) -> list[str]:
    return [
        "--host-name", "testbox", "--weights-bytes", str(3 * 1024 * 1024), "--kv-bytes", str(KV_BYTES),
        "--overhead-bytes", str(6 * GIB), "--reserve-bytes", str(reserve),
    ]  # fmt: skip


class CheckedVllm(VllmServer):
    """The tiny model's server as the stacks start theirs: `python -m runtime.headroom ... -- <vLLM>`.
    `meminfo`: the test-only memory source; None: the host's own /proc/meminfo."""

    def __init__(self, log_dir: Path, model_path: Path, meminfo: Path | None):
        super().__init__(log_dir, model_path)
        self.meminfo = meminfo

    def command(self) -> list[str]:
        return [sys.executable, "-m", "runtime.headroom", *_headroom_flags(GIB), "--", *super().command()]

    def environment(self) -> dict[str, str]:
        source = {MEMINFO_ENV: str(self.meminfo)} if self.meminfo else {}
        return {**super().environment(), **source}


@dataclass
class Deployed:
    outputs: Path
    haproxy: Haproxy
    vllm: CheckedVllm
    tokenizer: Path


@contextmanager
def deployed_stack(tmp_path: Path, meminfo: Path | None) -> Iterator[Deployed]:
    """A one-server 'stack': the checked vLLM behind HAProxy (key, TLS), and its outputs file."""
    require_binary("haproxy")
    model = make_tiny_llama(tmp_path / "tiny-llama")
    vllm = CheckedVllm(tmp_path, model, meminfo)
    vllm.start(timeout=600)  # under 2 cores shared with the local stack's four servers, minutes
    try:
        ca, issued = lan_certificate(["127.0.0.1"])
        pem = tmp_path / "lb.pem"
        pem.write_text(issued.cert_pem + issued.key_pem)
        keys = tmp_path / "stack-keys.map"
        keys.write_text(f"{hashlib.sha256(KEY.encode()).hexdigest()} operator\n")
        port, stats_port = free_port(), free_port()
        config = LoadBalancerConfig(
            backends=(Backend("stella", vllm.address),),
            bind=f"127.0.0.1:{port}",
            stats_bind=f"127.0.0.1:{stats_port}",
            check_interval_ms=500,
            api_key_maps=(str(keys),),
            tls_pem=str(pem),
        )
        haproxy = Haproxy(render_haproxy_cfg(config), port, stats_port)
        try:
            haproxy.wait_status({"stella": "UP"}, timeout=30)
            outputs = tmp_path / "outputs.json"
            outputs.write_text(
                json.dumps(
                    {
                        "loadBalancerUrl": f"https://127.0.0.1:{port}/v1",
                        "loadBalancerApiKey": KEY,
                        "tlsCaCertificate": ca,
                        "servedModelName": "tiny-llama",
                    }
                )
            )
            yield Deployed(outputs, haproxy, vllm, model)
        finally:
            haproxy.stop()
    finally:
        vllm.stop()


def bench_box(deployed: Deployed, results: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.box` against the deployed outputs, as `make bench-box` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench.box", "--outputs", str(deployed.outputs), "--stack", "test",
         "--tokenizer", str(deployed.tokenizer), "--results-dir", str(results), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[Deployed]:
    with deployed_stack(tmp_path, _meminfo(tmp_path / "meminfo", ENOUGH_KIB)) as found:
        yield found


def test_the_check_refuses_a_real_vllm_start_naming_the_numbers(tmp_path: Path) -> None:
    """1 GiB short of the reserve: exit 75, every figure named, and vLLM never ran (no log line of it)."""
    model = make_tiny_llama(tmp_path / "tiny-llama")
    server = VllmServer(tmp_path, model)
    short = _meminfo(tmp_path / "meminfo", (6 * GIB + 3 * 1024**2 + KV_BYTES + GIB) // 1024)  # needs reserve 2 GiB
    done = subprocess.run(
        [sys.executable, "-m", "runtime.headroom", *_headroom_flags(2 * GIB), "--", *server.command()],
        cwd=ROOT, env={**os.environ, MEMINFO_ENV: str(short)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == REFUSED, done.stderr[-2000:]
    assert (
        "needed: weights 0.00 GiB + KV 0.06 GiB + overhead 6.00 GiB + reserve 2.00 GiB = 8.07 GiB; "
        "available: 7.07 GiB on host testbox" in done.stderr
    )
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, "vLLM wrote nothing: it never started"


def test_bench_box_runs_vllm_bench_serve_through_the_balancer_and_writes_every_figure(
    deployed: Deployed, tmp_path: Path
) -> None:
    # The headroom check exec'd vLLM: the process the harness started is vLLM's API server itself.
    cmdline = Path(f"/proc/{deployed.vllm.pid}/cmdline").read_bytes().split(b"\0")
    assert b"vllm.entrypoints.openai.api_server" in cmdline and b"runtime.headroom" not in cmdline
    assert "headroom: ok: needed weights" in deployed.vllm.log_path.read_text()
    results = tmp_path / "results"
    sweep = ("--concurrency", "1,2", "--prompts", "4", "--input-len", "32", "--output-len", "8")
    done = bench_box(deployed, results, *sweep)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    print(out)
    assert "bench-box: stack test, load balancer https://127.0.0.1:" in out and "models tiny-llama" in out
    assert "the seeds' shape is 1000 + 100" in out
    for heading in ("req/s", "out tok/s", "TTFT p50/p99 ms", "ITL p50/p99 ms"):
        assert heading in out
    assert "170,000-request job, tiny-llama: " in out
    (run_dir,) = results.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    levels = summary["levels"]
    assert [(lv["model"], lv["concurrency"]) for lv in levels] == [("tiny-llama", 1), ("tiny-llama", 2)]
    for lv in levels:
        assert lv["completed"] == 4 and lv["failed"] == 0, lv
        assert lv["request_throughput"] > 0 and lv["output_throughput"] > 0
        assert 0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] and 0 <= lv["itl_p50_ms"] <= lv["itl_p99_ms"]
        own = json.loads((run_dir / lv["result_file"]).read_text())  # vLLM's own result JSON: the figures are its
        assert (own["max_concurrency"], own["num_prompts"], own["completed"]) == (lv["concurrency"], 4, 4)
        assert lv["request_throughput"] == own["request_throughput"]
        assert lv["output_throughput"] == own["output_throughput"]
        assert (lv["ttft_p50_ms"], lv["ttft_p99_ms"]) == (own["p50_ttft_ms"], own["p99_ttft_ms"])
        assert (lv["itl_p50_ms"], lv["itl_p99_ms"]) == (own["p50_itl_ms"], own["p99_itl_ms"])
        assert own["total_output_tokens"] == 4 * 8, "each request ran to its 8 output tokens (random: ignore_eos)"
    best = max(lv["request_throughput"] for lv in levels)
    assert summary["job_hours"]["tiny-llama"] == pytest.approx(170_000 / best / 3600)
    hours = 170_000 / best / 3600
    assert f"170,000-request job, tiny-llama: {hours:.2f} h at the best measured {best:.2f} req/s" in out
    prom = run_dir / "bench-box.prom"
    checked = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'vllm_gb10_bench_box_request_throughput{stack="test",model="tiny-llama",concurrency="2"}' in prom.read_text()
    # Through the balancer: HAProxy counted every request of both runs (plus vLLM bench's own test request).
    served = [
        line for line in deployed.haproxy.metrics().splitlines()
        if line.startswith("haproxy_server_http_responses_total{") and 'proxy="vllm"' in line and 'code="2xx"' in line
    ]  # fmt: skip
    assert sum(float(line.rsplit(" ", 1)[1]) for line in served) >= 8, served
