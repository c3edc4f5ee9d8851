"""On a machine with an NVIDIA GPU: the offline engine switches models through vLLM's sleep mode.

vLLM CPU has no sleep mode, so CI and the stack test prove the restart path only; this proves the
sleep path (level 2, then wake and reload the weights) with the CUDA build of vLLM. Runs where
VLLM_GB10_GPU_TESTS=1 (the device machine, or a GB10 host); skipped elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ARGS = {"max_model_len": 512, "gpu_memory_utilization": 0.3, "enforce_eager": True, "seed": 0}


def test_a_b_a_through_sleep_level_2_each_answered_by_its_model(tmp_path: Path) -> None:
    from runtime.batch.engines.offline import ModelSpec, OfflineEngine, sleep_mode_available
    from runtime.batch.validation import RequestLine
    from runtime.tiny_model import make_tiny_llama

    assert sleep_mode_available(), "this vLLM build has no sleep mode"
    specs = [ModelSpec(n, str(make_tiny_llama(tmp_path / n, seed=i)), ARGS) for i, n in enumerate(("a", "b"))]

    async def run() -> list[tuple[str, str]]:
        engine = OfflineEngine(specs)
        assert engine.uses_sleep_mode
        await engine.start()
        seen = []
        try:
            for n, model in enumerate(("b", "a", "b")):
                how = await engine.switch(model)
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
                outcome = await engine.run(RequestLine(n, f"c{n}", "/v1/chat/completions", body))
                assert outcome.ok and outcome.body is not None, outcome
                seen.append((how, outcome.body["model"]))
                print(f"switch to {model}: {how}, {engine.last_switch}")
        finally:
            await engine.close()
        return seen

    assert asyncio.run(run()) == [("sleep", "b"), ("sleep", "a"), ("sleep", "b")]
