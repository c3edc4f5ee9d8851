"""API keys: stored as SHA-256 digests, each one a tenant (or an admin), revocable at once.

A key's id is the first 16 hex digits of its digest: safe to log, to show in `keys list`, and to
own files and batches by. Keys are looked up on every request (no cache), so `keys revoke` takes
effect on the next call without a restart. A fixed-window rate limit per key lives in Redis too.

Each key made by `keys create` has its own webhook secret, shown once with the key: the worker signs
the webhooks of that key's batches with it, so a tenant can verify its own deliveries and can forge
no other tenant's. A key with none (the bootstrap key, keys made before there were per-key secrets)
is signed with the stack's BATCH_WEBHOOK_SECRET, the operator's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as redis

from runtime.batch import keys

KEY_ID_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and whether it may see every tenant's objects."""

    key_id: str
    name: str
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """Admins see everything; a tenant sees what its key created (objects with no owner: admins only)."""
        return self.admin or (owner is not None and owner == self.key_id)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    name: str
    admin: bool
    created_at: int


def digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    return "sk-vgb-" + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def add_key(
    client: redis.Redis, api_key: str, name: str, *, admin: bool = False, webhook_secret: str | None = None
) -> str:
    """Store a key (hashed); returns its id. Adding the same key again updates its name and role, and keeps
    its webhook secret unless a new one is given."""
    key_digest = digest(api_key)
    record: dict[str, object] = {"name": name, "admin": admin, "created_at": int(time.time())}
    if webhook_secret is None:
        existing = await client.hget(keys.API_KEYS, key_digest)
        if existing is not None and "webhook_secret" in (old := json.loads(existing)):
            record["webhook_secret"] = old["webhook_secret"]
    else:
        record["webhook_secret"] = webhook_secret
    await client.hset(keys.API_KEYS, key_digest, json.dumps(record))
    return key_digest[:KEY_ID_LENGTH]


class NoSuchKeyError(LookupError):
    """No API key has this id (revoked, or never made)."""


async def webhook_secret_of(client: redis.Redis, key_id: str) -> str | None:
    """The key's own webhook secret; None when it has none (the stack's secret signs for it).
    NoSuchKeyError when no key has this id: its batches' webhooks are not sent."""
    found = await _record_by_id(client, key_id)
    if found is None:
        raise NoSuchKeyError(key_id)
    secret = found[1].get("webhook_secret")
    return str(secret) if secret is not None else None


async def rotate_webhook_secret(client: redis.Redis, key_id: str) -> str | None:
    """A new webhook secret for the key (returned, to be shown once); None when no key has the id.
    Deliveries not yet sent are signed with the new one."""
    _check_id(key_id)
    found = await _record_by_id(client, key_id)
    if found is None:
        return None
    key_digest, record = found
    record["webhook_secret"] = secret = new_webhook_secret()
    await client.hset(keys.API_KEYS, key_digest, json.dumps(record))
    return secret


async def _record_by_id(client: redis.Redis, key_id: str) -> tuple[str, dict[str, object]] | None:
    for key_digest, raw in (await client.hgetall(keys.API_KEYS)).items():
        if _text(key_digest).startswith(key_id):
            record: dict[str, object] = json.loads(raw)
            return _text(key_digest), record
    return None


def _check_id(key_id: str) -> None:
    if len(key_id) != KEY_ID_LENGTH:
        raise ValueError(f"key id {key_id!r}: expected the {KEY_ID_LENGTH}-character id that `keys list` prints")


BOOTSTRAP_NAME = "bootstrap"  # the name of the stack's key (batchApiKey); `keys create` refuses it


async def set_bootstrap_key(client: redis.Redis, api_key: str) -> str:
    """Make `api_key` the bootstrap (operator's admin) key and delete any other: after `batchApiKey` is
    rotated, the key it replaced is refused on its next request. Returns the key's id."""
    key_digest = digest(api_key)
    for other, raw in (await client.hgetall(keys.API_KEYS)).items():
        record = json.loads(raw)
        # records written before the flag existed carry the name alone
        if (record.get("bootstrap") or record.get("name") == BOOTSTRAP_NAME) and _text(other) != key_digest:
            await client.hdel(keys.API_KEYS, other)
    record = {"name": BOOTSTRAP_NAME, "admin": True, "bootstrap": True, "created_at": int(time.time())}
    await client.hset(keys.API_KEYS, key_digest, json.dumps(record))
    return key_digest[:KEY_ID_LENGTH]


async def principal_of(client: redis.Redis, api_key: str) -> Principal | None:
    key_digest = digest(api_key)  # once per request: this is every authenticated call's path
    raw = await client.hget(keys.API_KEYS, key_digest)
    if raw is None:
        return None
    record = json.loads(raw)
    return Principal(key_id=key_digest[:KEY_ID_LENGTH], name=record["name"], admin=bool(record.get("admin")))


async def list_keys(client: redis.Redis) -> list[KeyInfo]:
    """Every key on record, oldest first; never the key itself (only its digest is stored)."""
    found = []
    for key_digest, raw in (await client.hgetall(keys.API_KEYS)).items():
        record = json.loads(raw)
        found.append(
            KeyInfo(
                key_id=_text(key_digest)[:KEY_ID_LENGTH],
                name=record["name"],
                admin=bool(record.get("admin")),
                created_at=int(record["created_at"]),
            )
        )
    return sorted(found, key=lambda k: (k.created_at, k.key_id))


async def revoke(client: redis.Redis, key_id: str) -> bool:
    """Delete the key whose id is `key_id`; True when one was deleted. Its objects stay (admins see them)."""
    _check_id(key_id)
    for key_digest in await client.hkeys(keys.API_KEYS):
        if _text(key_digest).startswith(key_id):
            return bool(await client.hdel(keys.API_KEYS, key_digest))
    return False


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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
