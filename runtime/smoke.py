"""Post-deploy check (the seeds' test.sh): every vLLM server answers /health, one chat completion goes
through the load balancer, and the batch API answers /health.

The load balancer needs an API key: the stack output loadBalancerApiKey, or $SMOKE_LB_API_KEY (never a
command-line flag, which `ps` shows).

`pulumi up` runs it once every service is up and fails when it fails; `make smoke STACK=NAME` runs it
from a workstation against the stack outputs (`--outputs FILE`, `-` for stdin). It retries until
`--timeout`, since a server may still be loading its model, and then names what did not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from runtime import tlsfiles

LB_KEY_ENV = "SMOKE_LB_API_KEY"


@dataclass(frozen=True)
class Targets:
    vllm: tuple[str, ...]  # base URLs, with or without /v1
    lb: str
    model: str
    batch_api: str | None = None
    lb_api_key: str | None = field(default=None, repr=False)
    ca_pem: str | None = None  # the stack's generated CA (output tlsCaCertificate), trusted beside the system's

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any]) -> Targets:
        missing = [k for k in ("vllmUrls", "loadBalancerUrl", "servedModelName") if k not in outputs]
        if missing:
            raise ValueError(f"stack outputs lack {', '.join(missing)}")
        return cls(
            vllm=tuple(outputs["vllmUrls"]),
            lb=outputs["loadBalancerUrl"],
            model=outputs["servedModelName"],
            batch_api=outputs.get("batchApiUrl"),
            lb_api_key=outputs.get("loadBalancerApiKey"),
            ca_pem=outputs.get("tlsCaCertificate") or None,
        )


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def checks(targets: Targets) -> list[tuple[str, Any]]:
    """(what, request) pairs; a request is a callable taking an httpx.Client and raising on failure."""

    def health(url: str) -> Any:
        return lambda http: http.get(f"{_root(url)}/health").raise_for_status()

    def completion(http: httpx.Client) -> None:
        response = http.post(
            f"{_root(targets.lb)}/v1/chat/completions",
            headers={
                "X-Session-ID": "post-deploy-check",
                **({"Authorization": f"Bearer {targets.lb_api_key}"} if targets.lb_api_key else {}),
            },
            json={"model": targets.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
        )
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {response.text[:300]}")
        if not response.json().get("choices"):
            raise RuntimeError(f"no choices in {response.text[:300]}")

    found: list[tuple[str, Any]] = [(f"vLLM {_root(u)}/health", health(u)) for u in targets.vllm]
    found.append((f"chat completion through the load balancer {_root(targets.lb)} (model {targets.model})", completion))
    if targets.batch_api:
        found.append((f"batch API {_root(targets.batch_api)}/health", health(targets.batch_api)))
    return found


def run(targets: Targets, *, timeout_s: float, interval_s: float = 2.0) -> list[str]:
    """Run every check until it passes or `timeout_s` runs out; returns the failures, each with its last error."""
    deadline = time.monotonic() + timeout_s
    failures = []
    verify = tlsfiles.trusting(targets.ca_pem) if targets.ca_pem else tlsfiles.client_verify()
    with httpx.Client(timeout=30, verify=verify) as http:
        for what, request in checks(targets):
            while True:
                try:
                    request(http)
                except (httpx.HTTPError, RuntimeError, ValueError) as err:
                    if time.monotonic() < deadline:
                        time.sleep(interval_s)  # polling a server that is still starting, not synchronisation
                        continue
                    failures.append(f"{what}: {type(err).__name__}: {err}")
                else:
                    print(f"ok: {what}", flush=True)
                break
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--outputs", help="stack outputs JSON (pulumi stack output --json --show-secrets); - for stdin")
    parser.add_argument("--vllm", action="append", default=[], help="a vLLM server's base URL (repeat)")
    parser.add_argument("--lb", help="the load balancer's URL")
    parser.add_argument("--model", help="the served model name")
    parser.add_argument("--batch-api", help="the batch API's URL")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to keep retrying (default 600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.outputs:
            text = sys.stdin.read() if args.outputs == "-" else open(args.outputs).read()
            targets = Targets.from_outputs(json.loads(text))
        elif args.vllm and args.lb and args.model:
            targets = Targets(tuple(args.vllm), args.lb, args.model, args.batch_api, os.environ.get(LB_KEY_ENV) or None)
        else:
            parser.error("give --outputs FILE, or --vllm URL (one or more), --lb URL and --model NAME")
    except (OSError, ValueError) as err:
        print(f"error: {args.outputs}: {err}", file=sys.stderr)
        return 2
    failures = run(targets, timeout_s=args.timeout)
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
