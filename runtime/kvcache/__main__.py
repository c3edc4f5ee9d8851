"""python -m runtime.kvcache {plan, probe, evaluate}

plan      size vLLM for a model on a host: engine args, CLI flags, and a report
probe     load a model in vLLM at a fixed KV budget; print vLLM's KV capacity beside the prediction
evaluate  perplexity with auto and fp8 KV through vLLM prompt logprobs, against the quality gate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runtime.kvcache.hosts import load_profiles
from runtime.kvcache.model import ModelConfigError, load_model_shape
from runtime.kvcache.policy import DEFAULT_BLOCK_SIZE, PlanError, Target, plan, report


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.kvcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="size vLLM for a model on a host")
    p.add_argument("--model-config", type=Path, required=True, help="the model's config.json")
    p.add_argument("--index", type=Path, help="model.safetensors.index.json (default: beside config.json)")
    p.add_argument("--host", default="gb10", help="gb10, h100, rtx4090, rtx4080, or a custom profile")
    p.add_argument("--host-profiles", type=Path, help="JSON file of custom host profiles")
    p.add_argument("--max-model-len", type=positive)
    p.add_argument("--concurrency", type=positive, default=1, help="sequences served at once")
    p.add_argument("--block-size", type=positive, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    q = sub.add_parser("probe", help="vLLM's KV capacity at a fixed budget, beside the prediction")
    q.add_argument("--model", type=Path, required=True, help="model directory")
    q.add_argument("--kv-cache-memory-bytes", type=positive, required=True)
    q.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    q.add_argument("--max-model-len", type=positive, default=512)

    e = sub.add_parser("evaluate", help="perplexity with auto vs fp8 KV against the quality gate")
    e.add_argument("--model", type=Path, required=True, help="model directory")
    e.add_argument("--text", type=Path, help="text sample (default: a built-in paragraph)")
    e.add_argument("--chunk-tokens", type=positive, default=64, help="prefill chunk size")
    e.add_argument("--max-model-len", type=positive, default=2048)
    e.add_argument("--gate", type=float, default=0.005, help="allowed relative perplexity increase (0.5%%)")
    e.add_argument("--gpu-memory-utilization", type=float, help="default: 0.85 on a GPU, 0.2 on vLLM's CPU backend")
    e.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # stdout carries the result alone (JSON for scripts); vLLM's own logs go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        if args.command == "plan":
            profiles = load_profiles(args.host_profiles)
            if args.host not in profiles:
                raise PlanError(f"unknown host profile {args.host!r}; known: {', '.join(sorted(profiles))}")
            shape = load_model_shape(args.model_config, args.index)
            result = plan(shape, profiles[args.host], Target(args.max_model_len, args.concurrency, args.block_size))
            print(json.dumps(result.to_json(), indent=2) if args.json else report(result))
        elif args.command == "probe":
            from runtime.kvcache.vllm_checks import probe_capacity

            print(json.dumps(probe_capacity(args.model, args.kv_cache_memory_bytes, args.kv_cache_dtype,
                                            args.max_model_len)))  # fmt: skip
        else:
            from runtime.kvcache.vllm_checks import SAMPLE_TEXT, evaluate

            text = args.text.read_text() if args.text else SAMPLE_TEXT
            checked = evaluate(
                args.model, text, args.chunk_tokens, args.max_model_len, args.gate, args.gpu_memory_utilization
            )
            if args.json:
                print(json.dumps(checked))
            else:
                ppl, verdict = checked["perplexity"], "pass" if checked["passed"] else "FAIL"
                print(f"perplexity auto {ppl['auto']:.4f}  fp8 {ppl['fp8']:.4f}  "
                      f"change {checked['relative_change']:+.3%}  gate {checked['gate']:.1%}: {verdict}")  # fmt: skip
    except (PlanError, ModelConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
