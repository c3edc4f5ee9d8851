"""Does stickiness pay? Multi-turn conversations through HAProxy to two vLLM CPU servers.

Sessions are only a proxy for KV reuse: this measures the reuse itself. The same conversations
(fresh text per mode, so one mode cannot warm the cache for the other) go through the balancer
sticky (X-Session-ID = conversation) and round robin; vLLM's own counters give the prefix-cache
hit rate and the server-side time to first token, and the client times its first streamed token.
Part 4 of `python -m bench.lb`; alone: `python -m bench.lb_kv`.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx

from bench.lb_harness import Haproxy, render_config
from harness.servers import VllmServer, free_port
from runtime.tiny_model import CORPUS, make_tiny_llama

CONVERSATIONS, TURNS, CLIENTS = 16, 8, 4
WORDS = sorted({w.strip(".") for line in CORPUS for w in line.split()})
COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
)


class KvVllmServer(VllmServer):
    """The tiny model with room for long conversations, in KV blocks of 32 tokens (the CPU backend's
    default of 128 would hide reuse below a block; vLLM on GPUs uses 16), its engine on a core of
    its own as each server has its own GPU on the stacks. Two engines sharing cores slow each other
    down whenever both compute, which in a first try made round robin's TTFT 5x sticky's."""

    def __init__(self, log_dir: Path, model_path: Path, *, name: str, core: int | None):
        super().__init__(log_dir, model_path, name=name)
        self.core = core

    def command(self) -> list[str]:
        return [*super().command(), "--max-model-len", "2048", "--block-size", "32"]

    def environment(self) -> Mapping[str, str]:
        bind = {} if self.core is None else {"VLLM_CPU_OMP_THREADS_BIND": str(self.core)}
        return {**super().environment(), **bind}


def scrape(server: VllmServer) -> dict[str, float]:
    """vLLM's counters, summed over label sets."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        match = re.match(r"^([\w:]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match and match[1] in totals:
            totals[match[1]] += float(match[2])
    return totals


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


@dataclass(frozen=True)
class Turn:
    ttft: float  # seconds from sending to the first streamed chunk
    backend: str  # the HAProxy server that answered (X-LB-Backend)


def chat_turn(client: httpx.Client, session: str, messages: list[dict[str, str]], sticky: bool) -> tuple[Turn, str]:
    """One streamed chat completion: its first-token time and server, and the reply's text."""
    headers = {"X-Session-ID": session} if sticky else {}
    body = {"model": "tiny-llama", "messages": messages, "max_tokens": 16, "ignore_eos": True,
            "temperature": 0, "stream": True}  # fmt: skip
    start, first, text = time.perf_counter(), None, []
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        backend = response.headers.get("X-LB-Backend", "")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            # vLLM sends its first chunk (the role) once the first token exists; a random model's
            # tokens may decode to no text at all.
            first = first or time.perf_counter()
            text.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    if first is None:
        raise RuntimeError(f"no token streamed for {session}")
    return Turn(first - start, backend), "".join(text)


def conversation(port: int, mode: str, index: int, sticky: bool) -> list[Turn]:
    """TURNS user turns, each sent with the whole history, as a chat client does."""
    rng = random.Random(f"{mode}-{index}")
    messages = [{"role": "system", "content": f"conversation {mode} {index}: {words(rng, 200)}"}]
    turns = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for _ in range(TURNS):
            messages.append({"role": "user", "content": words(rng, 30)})
            turn, reply = chat_turn(client, f"{mode}-{index}", messages, sticky)
            messages.append({"role": "assistant", "content": reply})
            turns.append(turn)
    return turns


@dataclass
class Run:
    """What one balancing mode did: vLLM's counter increments (both servers) and each conversation's turns."""

    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))
    conversations: list[list[Turn]] = field(default_factory=list)

    def hit_rate(self) -> float:
        """Prompt tokens found in the prefix cache / prompt tokens looked up (vLLM's counters)."""
        return self.counters["vllm:prefix_cache_hits_total"] / self.counters["vllm:prefix_cache_queries_total"]

    def prefilled(self) -> float:
        """Prompt tokens computed per request (looked up, less found)."""
        looked_up, found = (
            self.counters["vllm:prefix_cache_queries_total"],
            self.counters["vllm:prefix_cache_hits_total"],
        )
        return (looked_up - found) / self.counters["vllm:time_to_first_token_seconds_count"]

    def same_server(self) -> float:
        """Share of turns (after a conversation's first) on the server of the turn before."""
        follow_ups = [t.backend == prev.backend for c in self.conversations for prev, t in pairwise(c)]
        return sum(follow_ups) / len(follow_ups)

    def ttft_ms(self) -> list[float]:
        return [t.ttft * 1000 for c in self.conversations for t in c]

    def vllm_ttft_ms(self) -> float:
        """vLLM's own mean time to first token."""
        count = self.counters["vllm:time_to_first_token_seconds_count"]
        return 1000 * self.counters["vllm:time_to_first_token_seconds_sum"] / count


def run_mode(servers: Sequence[VllmServer], run: Run, tag: str, sticky: bool) -> None:
    """CONVERSATIONS fresh conversations through a balancer of this mode, added to `run`."""
    port, stats_port = free_port(), free_port()
    options = {} if sticky else {"round_robin": True}
    haproxy = Haproxy(render_config([s.address for s in servers], port, stats_port, **options), port, stats_port)
    try:
        haproxy.wait_status({"vllm1": "UP", "vllm2": "UP"}, timeout=30)
        before = [scrape(s) for s in servers]
        with ThreadPoolExecutor(CLIENTS) as pool:
            run.conversations += pool.map(lambda i: conversation(port, tag, i, sticky), range(CONVERSATIONS))
        after = [scrape(s) for s in servers]
    finally:
        haproxy.stop()
    for key in COUNTERS:
        run.counters[key] += sum(a[key] - b[key] for a, b in zip(after, before, strict=True))


@contextmanager
def vllm_pair() -> Iterator[list[KvVllmServer]]:
    work = Path(tempfile.mkdtemp(prefix="bench-lb-kv-"))
    model = make_tiny_llama(work / "tiny-llama")
    cores = sorted(os.sched_getaffinity(0))
    pinned = cores[:2] if len(cores) >= 2 else [None, None]
    servers = [KvVllmServer(work, model, name=f"vllm-{i}", core=core) for i, core in enumerate(pinned, start=1)]
    try:
        for server in servers:  # one after another: engines starting together race for memory
            server.start(timeout=300)
        yield servers
    finally:
        for server in servers:
            server.stop()


def kv_reuse(rounds: int = 2) -> None:
    runs = {"round robin": Run(), "sticky": Run()}
    with vllm_pair() as servers:
        for server in servers:  # warm-up outside the counted runs
            with httpx.Client(base_url=server.url, timeout=120) as client:
                chat_turn(client, "warm-up", [{"role": "user", "content": "warm up"}], sticky=False)
        for n in range(rounds):  # modes take turns, so that a slow spell of the machine hits both
            for label, run in runs.items():
                run_mode(servers, run, f"{label}-{n}", sticky=label == "sticky")
    print(f"4. KV reuse: {rounds} x {CONVERSATIONS} conversations x {TURNS} turns per mode ({CLIENTS} at a time, "
          "whole history each turn)")  # fmt: skip
    print("   through HAProxy to two vLLM CPU servers (tiny model, KV blocks of 32 tokens, one core each)")
    print(f"   {'':13}{'same server':>12}{'prefix-cache hits':>19}{'prefilled/request':>19}"
          f"{'TTFT p50 / p90, client':>25}{'TTFT mean, vLLM':>17}")  # fmt: skip
    for label, run in runs.items():
        ttft = run.ttft_ms()
        p50, p90 = statistics.median(ttft), statistics.quantiles(ttft, n=10)[-1]
        shown = f"{p50:.1f} / {p90:.1f} ms"
        print(f"   {label:13}{run.same_server():12.1%}{run.hit_rate():19.1%}{run.prefilled():13.0f} tokens"
              f"{shown:>25}{run.vllm_ttft_ms():14.1f} ms")  # fmt: skip
    print("   same server: turns on the server of the conversation's previous turn; hits and prefilled tokens")
    print("   from vLLM's prefix-cache counters. The tiny model prefills 100 tokens in about a millisecond,")
    print("   so TTFT here is fixed overhead and noise; on a real model it grows with the prefilled tokens")


if __name__ == "__main__":
    kv_reuse()
