"""Redis for the batch queue: AOF persistence on, password required, data on a volume.

Hardened against the batch services' own user: `sanitize-dump-payload yes` makes RESTORE check a
DUMP payload in full (a crafted one with a valid CRC otherwise restores, crashes Redis when read,
and stays in the AOF to crash it again after each restart); `maxmemory` with `noeviction` makes a
full Redis refuse writes instead of evicting queued jobs (the batch API refuses new work before
that, from the same figure: BATCH_REDIS_MAXMEMORY_BYTES).

Three users. `default` (its password is output `redisUrl`) is the operator's and the health check's.
The batch services log in as `batch` (`batch_url`), an ACL user with the rules the runtime states
it needs (runtime.batch.redis_client.BATCH_ACL_RULES: the batch keys, data commands, RESTORE). The
memory guards log in as `memguard` (`memguard_url`): their pause keys, SET/DEL/PING only.
The server is given the SHA-256 of its password (ACL `#<hex>`), never the password.
"""

from __future__ import annotations

import hashlib
from typing import TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.memory import gib
from infra.platforms import ServicePlatform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume, secret_output
from runtime.batch.redis_client import BATCH_ACL_RULES, BATCH_ACL_USER, MEMGUARD_ACL_RULES, MEMGUARD_ACL_USER

BATCH_HASH_ENV = "REDIS_BATCH_PASSWORD_SHA256"
MEMGUARD_HASH_ENV = "REDIS_MEMGUARD_PASSWORD_SHA256"


def server_command(bind: str, port: int, maxmemory_bytes: int) -> str:
    """The container's shell command: redis-server with AOF, full DUMP payload checks, a memory ceiling
    that refuses writes rather than evicting, the default user's password, the batch user and the memory
    guards' user, all from the environment (REDIS_PASSWORD; BATCH_HASH_ENV and MEMGUARD_HASH_ENV, SHA-256s
    in hex)."""
    if maxmemory_bytes <= 0:
        raise ValueError(f"Redis maxmemory {maxmemory_bytes}: must be positive (0 would mean no limit)")
    rules = " ".join(f"'{rule}'" for rule in BATCH_ACL_RULES)
    guard_rules = " ".join(f"'{rule}'" for rule in MEMGUARD_ACL_RULES)
    return (
        f"exec redis-server --bind {bind} --port {port} --appendonly yes --appendfsync everysec "
        f"--sanitize-dump-payload yes --maxmemory {maxmemory_bytes} --maxmemory-policy noeviction "
        f'--requirepass "$REDIS_PASSWORD" --user {BATCH_ACL_USER} on "#${BATCH_HASH_ENV}" {rules} '
        f'--user {MEMGUARD_ACL_USER} on "#${MEMGUARD_HASH_ENV}" {guard_rules}'
    )


def maxmemory_bytes(memory_limit: str, percent: int) -> int:
    """Redis's maxmemory: `percent` of its container's limit (the rest: the AOF rewrite's fork, client
    buffers, fragmentation)."""
    return int(gib(memory_limit) * 1024**3 * percent / 100)


# Redis 8.8.3 (Debian-based official image); digest as pinned in a public project's test containers
# (one source seen: verify with `docker buildx imagetools inspect redis:8.8.3` when moving it).
REDIS_IMAGE = "redis:8.8.3@sha256:b2ba68d56e7e7ea88b64f4eaf307bceafc012079f227ed795785f4283a592dc0"


class RedisArgs(TypedDict):
    platform: ServicePlatform
    host: str
    port: int
    public: bool
    memory_limit: str
    maxmemory_percent: int  # of memory_limit: Redis's maxmemory


class Redis(pulumi.ComponentResource):
    address: str
    password: pulumi.Output[str]
    url: pulumi.Output[str]  # the default user's (the operator's)
    batch_url: pulumi.Output[str]  # the batch services' ACL user
    memguard_url: pulumi.Output[str]  # the memory guards' ACL user
    maxmemory_bytes: int  # the batch API refuses new work near it
    service: str  # its service's name, for others' depends_on

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:Redis", name, None, opts)
        platform, port, host = args["platform"], args["port"], args["host"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        bind, probe = platform.bind_address(host, exposure), platform.probe_address(host, exposure)
        self.password = generated_password(f"{name}-password", self)
        batch_password = generated_password(f"{name}-batch-password", self, length=48)
        batch_hash = secret_output(batch_password.apply(lambda pw: hashlib.sha256(pw.encode()).hexdigest()))
        memguard_password = generated_password(f"{name}-memguard-password", self, length=48)
        memguard_hash = secret_output(memguard_password.apply(lambda pw: hashlib.sha256(pw.encode()).hexdigest()))
        self.service = name
        self.maxmemory_bytes = maxmemory_bytes(args["memory_limit"], args["maxmemory_percent"])
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=REDIS_IMAGE,
                command=("sh", "-c", server_command(bind, port, self.maxmemory_bytes)),
                secrets=(
                    Secret("REDIS_PASSWORD", self.password),
                    Secret(BATCH_HASH_ENV, batch_hash),
                    Secret(MEMGUARD_HASH_ENV, memguard_hash),
                ),
                ports=(Port(port, port, exposure, "redis"),),
                volumes=(Volume("redis-data", "/data", size_gi=20),),
                healthcheck=HealthCheck(
                    command=(
                        "sh",
                        "-c",
                        f'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h {probe} -p {port} ping | grep -q PONG',
                    ),
                    interval_s=10,
                    start_period_s=10,
                ),
                memory_limit=args["memory_limit"],
                stateful=True,
            ),
            parent=self,
        )
        self.address = platform.internal_address(host, port, name, exposure)
        self.url = pulumi.Output.secret(pulumi.Output.concat("redis://:", self.password, "@", self.address, "/0"))
        self.batch_url = pulumi.Output.secret(
            pulumi.Output.concat("redis://", BATCH_ACL_USER, ":", batch_password, "@", self.address, "/0")
        )
        self.memguard_url = pulumi.Output.secret(
            pulumi.Output.concat("redis://", MEMGUARD_ACL_USER, ":", memguard_password, "@", self.address, "/0")
        )
        self.register_outputs(
            {"address": self.address, "url": self.url, "batchUrl": self.batch_url, "memguardUrl": self.memguard_url}
        )
