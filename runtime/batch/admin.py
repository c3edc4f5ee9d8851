"""Key management for the batch API: `python -m runtime.batch.admin keys create|list|revoke|rotate-webhook-secret`.

Run it where BATCH_REDIS_URL is set, e.g. inside the API's container:
    docker exec vllm-gb10-batch-api python -m runtime.batch.admin keys create alice
The new key is printed once (only its SHA-256 digest is stored); `keys revoke ID` takes effect on
the next request, without a restart. A tenant key sees only its own files and batches; `--admin`
makes a key that sees every tenant's (and may read /metrics on the public address). `keys create`
also prints (on stderr, once) the key's own webhook secret, which its receivers verify with;
`keys rotate-webhook-secret ID` replaces it and prints the new one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import redis.asyncio as redis
from pydantic import Field, RedisDsn, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.batch import auth, redis_client


class RedisSettings(BaseSettings):
    """Only what key management needs: the batch service's Redis."""

    model_config = SettingsConfigDict(env_prefix="BATCH_", extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(description="The batch service's Redis (BATCH_REDIS_URL).")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m runtime.batch.admin", description=__doc__.splitlines()[0])
    groups = root.add_subparsers(dest="group", required=True)
    key_commands = groups.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)
    create = key_commands.add_parser("create", help="make a key; it is printed once")
    create.add_argument("name", help="who the key is for (shown by `keys list`)")
    create.add_argument("--admin", action="store_true", help="sees every tenant's files and batches")
    key_commands.add_parser("list", help="every key's id, name and role (never the key)")
    revoke = key_commands.add_parser("revoke", help="delete a key by the id `keys list` prints")
    revoke.add_argument("key_id")
    rotate = key_commands.add_parser(
        "rotate-webhook-secret", help="a new webhook secret for a key, printed once; the old one stops signing"
    )
    rotate.add_argument("key_id")
    return root


async def run(args: argparse.Namespace, client: redis.Redis) -> int:
    if args.command == "create":
        if not args.name.strip():
            print("error: the key's name is empty", file=sys.stderr)
            return 2
        if args.name == auth.BOOTSTRAP_NAME:  # that key is replaced whenever the API starts with another
            print(f"error: the name {auth.BOOTSTRAP_NAME!r} is the stack's own key's (batchApiKey)", file=sys.stderr)
            return 2
        key, secret = auth.new_key(), auth.new_webhook_secret()
        key_id = await auth.add_key(client, key, args.name, admin=args.admin, webhook_secret=secret)
        print(f"id {key_id} ({'admin' if args.admin else 'tenant'}) {args.name}", file=sys.stderr)
        print(f"webhook secret {secret} (shown once: your webhook receiver verifies with it)", file=sys.stderr)
        print(key)  # stdout holds the key alone, for `KEY=$(… keys create NAME)`
        return 0
    if args.command == "list":
        for info in await auth.list_keys(client):
            created = datetime.fromtimestamp(info.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{info.key_id}  {'admin ' if info.admin else 'tenant'}  {created}  {info.name}")
        return 0
    if args.command == "rotate-webhook-secret":
        try:
            rotated = await auth.rotate_webhook_secret(client, args.key_id)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if rotated is None:
            print(f"error: no key has the id {args.key_id!r} (see `keys list`)", file=sys.stderr)
            return 1
        print(f"webhook secret of {args.key_id} rotated (shown once)", file=sys.stderr)
        print(rotated)
        return 0
    try:
        revoked = await auth.revoke(client, args.key_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not revoked:
        print(f"error: no key has the id {args.key_id!r} (see `keys list`)", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = RedisSettings()  # read from the environment
    except ValidationError as exc:
        problem = exc.errors()[0]
        print(f"error: BATCH_REDIS_URL: {problem['msg']}", file=sys.stderr)
        return 2

    async def session() -> int:
        client = redis_client.connect(str(settings.redis_url), max_connections=4, outage_seconds=10)
        try:
            return await run(args, client)
        finally:
            await client.aclose()

    return asyncio.run(session())


if __name__ == "__main__":
    sys.exit(main())
