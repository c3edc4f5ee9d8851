"""Model switching: how long the batch engine takes to go from one offered model to another.

Usage: python -m bench.models [--switches N] [--sleep-mode auto|on|off]

Two tiny random Llamas (runtime.tiny_model) are served by the worker's own offline engine
(runtime.batch.engines.offline.OfflineEngine), which switches between them N times, each switch
followed by one chat request answered by the new model. It prints each method's switch times beside
the engine's cold start (what a restart costs at least) and ADR-027's target of 60 s:
- restart: the loaded vLLM engine shuts down and one for the other model starts (every platform);
- sleep: the loaded model sleeps at level 2 and the other wakes and reloads its weights (vLLM's sleep
  mode; CUDA only, so on vLLM CPU this row says it is not available).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vLLM is imported: the table, not its log

from runtime.batch.engines.offline import ModelSpec, OfflineEngine, sleep_mode_available
from runtime.batch.validation import RequestLine

TARGET_S = 60.0  # ADR-027: model switching under a minute
TINY_ARGS: dict[str, Any] = {"max_model_len": 512, "kv_cache_memory_bytes": 64 * 1024 * 1024, "enforce_eager": True}


def chat(model: str, n: int) -> RequestLine:
    body = {"model": model, "messages": [{"role": "user", "content": f"count {n}"}], "max_tokens": 4}
    return RequestLine(line=n, custom_id=f"c{n}", url="/v1/chat/completions", body=body)


async def measure(specs: list[ModelSpec], switches: int, use_sleep: bool) -> tuple[float, list[float], list[float]]:
    """(cold start s, [switch s, ...], [unload s, ...]); every switch is proven by a request the new model
    answers."""
    engine = OfflineEngine(specs, use_sleep_mode=use_sleep)
    started = time.perf_counter()
    await engine.start()
    cold = time.perf_counter() - started
    times: list[float] = []
    unloads: list[float] = []
    try:
        for n in range(switches):
            target = specs[(n + 1) % len(specs)].name
            started = time.perf_counter()
            await engine.switch(target)
            times.append(time.perf_counter() - started)
            unloads.append(engine.last_switch["unload_s"])
            outcome = await engine.run(chat(target, n))
            assert outcome.ok and outcome.body is not None and outcome.body["model"] == target, outcome
    finally:
        await engine.close()
    return cold, times, unloads


HEADER = f"{'method':<8} {'cold s':>8} {'switch s':>9} {'unload s':>9} {'worst s':>8} {'target s':>9}"


def row(method: str, measured: tuple[float, list[float], list[float]] | None, note: str = "") -> str:
    """Cold start beside the median switch (and its unload part), the worst switch and the target."""
    if measured is None:
        return f"{method:<8} {'-':>8} {'-':>9} {'-':>9} {'-':>8} {TARGET_S:>9.0f}  {note}"
    cold, times, unloads = measured
    worst = max(times)
    verdict = "within" if worst < TARGET_S else "OVER"
    return (
        f"{method:<8} {cold:>8.1f} {statistics.median(times):>9.1f} {statistics.median(unloads):>9.1f} "
        f"{worst:>8.1f} {TARGET_S:>9.0f}  {len(times)} switches (medians), {verdict} the target {note}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=4, help="switches per method (alternating a, b)")
    parser.add_argument("--sleep-mode", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args(argv)
    from runtime.tiny_model import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        specs = [
            ModelSpec(name, str(make_tiny_llama(Path(tmp) / name, seed=seed)), TINY_ARGS)
            for seed, name in enumerate(("tiny-a", "tiny-b"))
        ]
        rows = [row("restart", asyncio.run(measure(specs, args.switches, use_sleep=False)))]
        available = sleep_mode_available()
        if args.sleep_mode == "on" or (args.sleep_mode == "auto" and available):
            measured = asyncio.run(measure(specs, args.switches, use_sleep=True))
            rows.append(row("sleep", measured, "(level 2: weights reloaded on wake)"))
        else:
            why = "not available on this platform (vLLM sleep mode is CUDA only)" if not available else "off"
            rows.append(row("sleep", None, why))
        print("\n".join([HEADER, *rows]), flush=True)  # after vLLM's own log lines, together


if __name__ == "__main__":
    main()
