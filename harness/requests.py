"""Batch input lines for tests and benchmarks: chat completions with distinct custom_ids."""

from __future__ import annotations

import json


def chat_lines(count: int, *, model: str = "tiny-llama", max_tokens: int = 8, prefix: str = "r") -> list[str]:
    return [
        json.dumps(
            {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"count {i}"}],
                    "max_tokens": max_tokens,
                },
            }
        )
        for i in range(count)
    ]
