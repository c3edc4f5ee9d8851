"""Redis for the batch queue: AOF persistence on, password required, data on a volume."""

from __future__ import annotations

from typing import TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.platforms import ServicePlatform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume

# Redis 8.8.3 (Debian-based official image); digest as pinned in a public project's test containers
# (one source seen: verify with `docker buildx imagetools inspect redis:8.8.3` when moving it).
REDIS_IMAGE = "redis:8.8.3@sha256:b2ba68d56e7e7ea88b64f4eaf307bceafc012079f227ed795785f4283a592dc0"


class RedisArgs(TypedDict):
    platform: ServicePlatform
    host: str
    port: int
    public: bool
    memory_limit: str


class Redis(pulumi.ComponentResource):
    address: str
    password: pulumi.Output[str]
    url: pulumi.Output[str]
    service: str  # its service's name, for others' depends_on

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:Redis", name, None, opts)
        platform, port, host = args["platform"], args["port"], args["host"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        bind, probe = platform.bind_address(host, exposure), platform.probe_address(host, exposure)
        self.password = generated_password(f"{name}-password", self)
        self.service = name
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=REDIS_IMAGE,
                command=(
                    "sh",
                    "-c",
                    f"exec redis-server --bind {bind} --port {port} --appendonly yes --appendfsync everysec "
                    '--requirepass "$REDIS_PASSWORD"',
                ),
                secrets=(Secret("REDIS_PASSWORD", self.password),),
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
        self.register_outputs({"address": self.address, "url": self.url})
