"""The offline engine: vLLM in this process, through the same code as vLLM's `run_batch`.

The request handlers come from `vllm.entrypoints.launchers.run_batch.build_endpoint_registry`
and each request runs through its `run_request`, so each response is what run_batch
would write. The difference is the lifetime: the engine starts once and stays warm across jobs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from runtime.batch.engines import Outcome, usage_of
from runtime.batch.validation import RequestLine
from runtime.kvcache import engine_args_to_flags


def model_flags(model_path: str, served_model: str, vllm_args: dict[str, Any]) -> list[str]:
    """vLLM flags for this model: the same argument-to-flag mapping the vLLM servers get from infra."""
    return ["--model", model_path, "--served-model-name", served_model, *engine_args_to_flags(vllm_args)]


def engine_argv(model_path: str, served_model: str, vllm_args: dict[str, Any]) -> list[str]:
    """run_batch's command line for this model (input/output are unused placeholders)."""
    return ["-i", "unused.jsonl", "-o", "unused.jsonl", *model_flags(model_path, served_model, vllm_args)]


class OfflineEngine:
    endpoints = ("/v1/chat/completions", "/v1/embeddings")

    def __init__(self, model_path: str, served_model: str, vllm_args: dict[str, Any]):
        self.argv = engine_argv(model_path, served_model, vllm_args)
        self._stack = contextlib.AsyncExitStack()
        self._registry: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.run_batch import (
            BatchProgressTracker,
            build_endpoint_registry,
            make_arg_parser,
        )
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self.argv)
        client = await self._stack.enter_async_context(
            build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER)
        )
        self._registry = await build_endpoint_registry(engine_client=client, args=args)
        self._tracker = BatchProgressTracker()

    async def run(self, request: RequestLine) -> Outcome:
        from vllm.entrypoints.launchers.run_batch import BatchRequestInput, handle_endpoint_request

        try:
            parsed = BatchRequestInput.model_validate(
                {"custom_id": request.custom_id, "method": "POST", "url": request.url, "body": request.body}
            )
        except ValueError as exc:
            return Outcome(status_code=400, error={"code": "invalid_request", "message": str(exc)[:1000]})
        config = self._registry.get(request.url.split("/")[-1])
        pending = (
            handle_endpoint_request(
                parsed,
                self._tracker,
                url_matcher=config["url_matcher"],
                handler_getter=config["handler_getter"],
                wrapper_fn=config["wrapper_fn"],
            )
            if config
            else None
        )
        if pending is None:
            return Outcome(status_code=400, error={"code": "invalid_url", "message": f"unsupported url {request.url}"})
        output = await pending
        response = output.response
        if output.error is None and response is not None and response.body is not None:
            body = response.body.model_dump(mode="json")
            return Outcome(status_code=200, body=body, request_id=response.request_id, usage=usage_of(body))
        error = output.error
        message = error.error.message if error is not None and hasattr(error, "error") else str(error)
        status = int(response.status_code) if response is not None else 500
        return Outcome(
            status_code=status,
            error={"code": str(status), "message": message},
            retryable=status >= 500,
            request_id=response.request_id if response is not None else None,
        )

    async def close(self) -> None:
        await self._stack.aclose()
