"""vLLM's own run_batch, with the engine start timed apart from the batch itself.

Usage: python -m bench.vllm_run_batch_timed <run_batch arguments>; prints one JSON line
{"start_s": ..., "batch_s": ...} on stdout. The batch part is vLLM's `run_batch` function unchanged.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def main(argv: list[str]) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.run_batch import make_arg_parser, run_batch
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    started = time.perf_counter()
    async with build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER) as client:
        ready = time.perf_counter()
        await run_batch(client, args)
        done = time.perf_counter()
    print(json.dumps({"start_s": ready - started, "batch_s": done - ready}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
