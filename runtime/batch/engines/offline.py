"""The offline engine: vLLM in this process, through the same code as vLLM's `run_batch`.

The request handlers come from `vllm.entrypoints.launchers.run_batch.build_endpoint_registry`
and each request runs through its `run_request`, so each response is what run_batch
would write. The difference is the lifetime: the engine starts once and stays warm across jobs.

With several offered models one is loaded at a time, and `switch` changes it the fastest way the
platform allows: where vLLM has sleep mode (CUDA), the loaded model sleeps at level 2 (weights and
KV cache freed; level 1 would keep the weights in host memory, which on unified memory is the same
memory) and a model that slept before wakes and reloads its weights; elsewhere (vLLM CPU) the engine
restarts with the other model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.batch.engines import Outcome, Unready, usage_of
from runtime.batch.validation import RequestLine
from runtime.kvcache import engine_args_to_flags

LOG = logging.getLogger(__name__)


def model_flags(model_path: str, served_model: str, vllm_args: dict[str, Any]) -> list[str]:
    """vLLM flags for this model: the same argument-to-flag mapping the vLLM servers get from infra."""
    return ["--model", model_path, "--served-model-name", served_model, *engine_args_to_flags(vllm_args)]


def engine_argv(model_path: str, served_model: str, vllm_args: dict[str, Any]) -> list[str]:
    """run_batch's command line for this model (input/output are unused placeholders)."""
    return ["-i", "unused.jsonl", "-o", "unused.jsonl", *model_flags(model_path, served_model, vllm_args)]


@dataclass(frozen=True)
class ModelSpec:
    """One offered model: the name jobs send, the weights vLLM loads and its sized engine arguments."""

    name: str
    path: str
    vllm_args: dict[str, Any]


@dataclass
class _Loaded:
    """A started vLLM engine for one model (awake or, with sleep mode, asleep)."""

    stack: contextlib.AsyncExitStack
    client: Any
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)


def sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class OfflineEngine:
    endpoints = ("/v1/chat/completions", "/v1/embeddings")

    def __init__(self, models: list[ModelSpec], *, use_sleep_mode: bool | None = None):
        if not models:
            raise ValueError("the offline engine needs at least one model")
        self.models = {m.name: m for m in models}
        self.loaded_model: str = models[0].name
        self._use_sleep = use_sleep_mode
        self._engines: dict[str, _Loaded] = {}  # awake: loaded_model's; the others asleep (sleep mode only)
        self.last_switch: dict[str, float] = {}  # seconds of the last switch's unload and load

    @property
    def uses_sleep_mode(self) -> bool:
        if self._use_sleep is None:
            self._use_sleep = len(self.models) > 1 and sleep_mode_available()
        return self._use_sleep

    def argv(self, name: str) -> list[str]:
        spec = self.models[name]
        args = {**spec.vllm_args, **({"enable_sleep_mode": True} if self.uses_sleep_mode else {})}
        return engine_argv(spec.path, spec.name, args)

    async def start(self) -> None:
        self._engines[self.loaded_model] = await self._start(self.loaded_model)

    async def _start(self, name: str) -> _Loaded:
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.run_batch import (
            BatchProgressTracker,
            build_endpoint_registry,
            make_arg_parser,
        )
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self.argv(name))
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER)
            )
            registry = await build_endpoint_registry(engine_client=client, args=args)
        except BaseException:
            await stack.aclose()
            raise
        self._tracker = BatchProgressTracker()
        return _Loaded(stack, client, registry)

    async def switch(self, model: str) -> str:
        """Load `model` in place of the loaded one; returns how: "sleep" (sleep mode) or "restart"."""
        if model not in self.models:
            raise ValueError(f"model {model!r} is not offered (offered: {', '.join(self.models)})")
        if model == self.loaded_model:
            return "none"
        current = self._engines[self.loaded_model]
        started = time.perf_counter()
        if self.uses_sleep_mode:
            await current.client.sleep(level=2)  # frees weights and KV cache; the engine stays up
            unloaded = time.perf_counter()
            asleep = self._engines.get(model)
            if asleep is None:
                self._engines[model] = await self._start(model)
            else:
                await asleep.client.wake_up(tags=["weights"])
                await asleep.client.collective_rpc("reload_weights")  # level 2 discarded them
                if not await asleep.client.wake_up(tags=["kv_cache"]):
                    raise RuntimeError(f"vLLM did not wake fully for {model!r} (weights and KV cache)")
            how = "sleep"
        else:
            del self._engines[self.loaded_model]
            await current.stack.aclose()  # the engine core exits and its memory is freed
            unloaded = time.perf_counter()
            try:
                self._engines[model] = await self._start(model)
            except BaseException:  # keep serving what was loaded; the job that asked is retried later
                self._engines[self.loaded_model] = await self._start(self.loaded_model)
                raise
            how = "restart"
        self.last_switch = {"unload_s": unloaded - started, "load_s": time.perf_counter() - unloaded}
        LOG.info("model switched: %s -> %s (%s: %s)", self.loaded_model, model, how, self.last_switch)
        self.loaded_model = model
        return how

    async def run(self, request: RequestLine) -> Outcome:
        from vllm.entrypoints.launchers.run_batch import BatchRequestInput, handle_endpoint_request

        try:
            parsed = BatchRequestInput.model_validate(
                {"custom_id": request.custom_id, "method": "POST", "url": request.url, "body": request.body}
            )
        except ValueError as exc:
            return Outcome(status_code=400, error={"code": "invalid_request", "message": str(exc)[:1000]})
        config = self._engines[self.loaded_model].registry.get(request.url.split("/")[-1])
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

    async def probe(self, model: str) -> Unready | None:
        """Ready: vLLM runs in this process, so a failed request is the request's (never marked `platform`)."""
        return None

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.stack.aclose()
