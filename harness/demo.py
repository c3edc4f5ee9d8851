"""`python -m harness demo`: start `up`, push a sample batch through the openai client, stop.

What `make demo` runs; also a smoke test of the ready-line contract and the clean shutdown.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time

from harness.servers import ROOT

READY = re.compile(r"^ready: (?P<url>\S+) api_key=(?P<key>\S+)$")
QUESTIONS = ["What is a GB10?", "Name a prime number.", "Say hello.", "Count to three.", "Describe a batch."]


def run_sample(base_url: str, api_key: str) -> int:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    lines = [
        json.dumps(
            {
                "custom_id": f"demo-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": q}], "max_tokens": 12},
            }
        )
        for i, q in enumerate(QUESTIONS)
    ]
    upload = client.files.create(file=("demo.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    print(f"batch {batch.id}: {batch.status}")
    deadline = time.monotonic() + 300
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch.id} still {batch.status} after 300 s")
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    counts = batch.request_counts
    done = f"{counts.completed}/{counts.total}" if counts else "?"
    print(f"batch {batch.id}: {batch.status}, {done} completed")
    if batch.output_file_id is None:
        return 1
    for row in client.files.content(batch.output_file_id).text.splitlines():
        result = json.loads(row)
        answer = result["response"]["body"]["choices"][0]["message"]["content"]
        print(f"  {result['custom_id']}: {answer!r}")
    print("(a tiny random model: the answers are noise; the plumbing is real)")
    return 0 if batch.status == "completed" else 1


def main() -> int:
    up = subprocess.Popen(
        [sys.executable, "-m", "harness", "up"], cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert up.stdout is not None  # stdout=PIPE
    try:
        for line in up.stdout:
            print(line, end="", flush=True)
            if match := READY.match(line.strip()):
                return run_sample(match["url"], match["key"])
        print(f"harness up exited with {up.wait()} before it was ready", file=sys.stderr)
        return 1
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
        print(f"harness up stopped (exit {code})")
