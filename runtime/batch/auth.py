"""Bearer API keys, stored as SHA-256 digests, and a fixed-window rate limit per key in Redis."""

from __future__ import annotations

import hashlib
import json
import secrets
import time

import redis.asyncio as redis

from runtime.batch import keys


def digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    return "sk-vgb-" + secrets.token_urlsafe(32)


async def add_key(client: redis.Redis, api_key: str, name: str) -> str:
    """Store a key (hashed); returns its id (a digest prefix, safe for logs and rate-limit keys)."""
    key_digest = digest(api_key)
    await client.hset(keys.API_KEYS, key_digest, json.dumps({"name": name, "created_at": int(time.time())}))
    return key_digest[:16]


async def revoke_key(client: redis.Redis, api_key: str) -> bool:
    return bool(await client.hdel(keys.API_KEYS, digest(api_key)))


async def key_id_of(client: redis.Redis, api_key: str) -> str | None:
    key_digest = digest(api_key)
    return key_digest[:16] if await client.hexists(keys.API_KEYS, key_digest) else None


async def over_limit(client: redis.Redis, key_id: str, per_minute: int) -> int | None:
    """Seconds to wait when this request is over the key's limit, else None."""
    now = time.time()
    minute = int(now // 60)
    counter = keys.rate_limit(key_id, minute)
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(counter)
        pipe.expire(counter, 120)
        count, _ = await pipe.execute()
    return None if count <= per_minute else int(60 - now % 60) + 1
