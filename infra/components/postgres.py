"""Postgres with pgvector: embeddings for the Ray offload jobs, and their results."""

from __future__ import annotations

from typing import TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.platforms import ServicePlatform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume

# pgvector 0.8.6 on PostgreSQL 17 (Debian bookworm); digest as pinned in several public projects.
POSTGRES_IMAGE = (
    "pgvector/pgvector:0.8.6-pg17-bookworm@sha256:cf134a767f474095eeba57e0117be8e568e011a63f33fbf252f14c9b760f8e6f"
)


class PostgresArgs(TypedDict):
    platform: ServicePlatform
    host: str
    port: int
    database: str
    user: str
    public: bool
    memory_limit: str


class Postgres(pulumi.ComponentResource):
    address: str
    password: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:Postgres", name, None, opts)
        platform, port, db, user, host = args["platform"], args["port"], args["database"], args["user"], args["host"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        bind, probe = platform.bind_address(host, exposure), platform.probe_address(host, exposure)
        self.password = generated_password(f"{name}-password", self)
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=POSTGRES_IMAGE,
                command=("postgres", "-p", str(port), "-c", f"listen_addresses={bind}"),
                environment={"POSTGRES_DB": db, "POSTGRES_USER": user, "PGDATA": "/var/lib/postgresql/data/pgdata"},
                secrets=(Secret("POSTGRES_PASSWORD", self.password),),
                ports=(Port(port, port, exposure, "postgres"),),
                volumes=(Volume("postgres-data", "/var/lib/postgresql/data", size_gi=100),),
                healthcheck=HealthCheck(
                    command=("pg_isready", "-h", probe, "-p", str(port), "-U", user, "-d", db),
                    interval_s=10,
                    start_period_s=20,
                ),
                memory_limit=args["memory_limit"],
                shm_size="1g",
                stateful=True,
            ),
            parent=self,
        )
        self.address = platform.internal_address(host, port, name, exposure)
        self.url = pulumi.Output.secret(
            pulumi.Output.concat("postgresql://", user, ":", self.password, "@", self.address, "/", db)
        )
        self.register_outputs({"address": self.address, "url": self.url})
