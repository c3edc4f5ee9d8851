"""Postgres with pgvector: embeddings for the Ray offload jobs, and their results.

The database owner (config `postgresUser`, a superuser in the official image) is the operator's:
output `postgresUrl`. The offload job gets a role of its own, `offload` (output `url` of this
component, which the Ray nodes hold as OFFLOAD_DSN): it reads every table and writes only into its
schema `offload`, so a Ray job cannot run programs on the database host (COPY ... TO PROGRAM),
change roles or drop the user's tables. A one-shot (`postgres-setup`, the same image's psql) makes
the role on every `pulumi up` (infra/sql/offload-role.sql)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.memory import LIMITS
from infra.platforms import ServicePlatform
from infra.services import ConfigFile, Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume, secret_output

# pgvector 0.8.6 on PostgreSQL 17 (Debian bookworm); digest as pinned in several public projects.
POSTGRES_IMAGE = (
    "pgvector/pgvector:0.8.6-pg17-bookworm@sha256:cf134a767f474095eeba57e0117be8e568e011a63f33fbf252f14c9b760f8e6f"
)

OFFLOAD_ROLE = "offload"  # role and schema: infra/sql/offload-role.sql names both
OFFLOAD_ROLE_SQL = Path(__file__).resolve().parent.parent / "sql" / "offload-role.sql"
SETUP_SQL_PATH = "/setup/offload-role.sql"
# psql's arguments in the set-up (its entrypoint is psql; PG* variables say where and as whom).
SETUP_COMMAND = ("--no-psqlrc", "--quiet", "-f", SETUP_SQL_PATH)
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def scram_sha256_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The verifier PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677, as its
    `scram_build_secret`): given as the role's PASSWORD, the server keeps it as it is, so the
    password itself is never sent to the set-up. Our passwords are ASCII letters and digits, which
    SASLprep leaves unchanged."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class PostgresArgs(TypedDict):
    platform: ServicePlatform
    host: str
    port: int
    database: str
    user: str
    public: bool
    memory_limit: str
    setup_image: NotRequired[pulumi.Input[str]]  # the set-up's psql; default: the server's image
    # Where the set-up runs (default: the server's host): beside a service that waits for it (the
    # Ray head), since compose's `up --wait` takes a completed one-shot nobody waits for for a failure.
    setup_host: NotRequired[str]


class Postgres(pulumi.ComponentResource):
    """`url` is the owner's (the operator's); `offload_url` the offload role's, for the Ray nodes.
    `setup_service`: the one-shot that makes the role, which the Ray head waits for."""

    address: str
    password: pulumi.Output[str]
    url: pulumi.Output[str]
    offload_password: pulumi.Output[str]
    offload_url: pulumi.Output[str]
    setup_service: str

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
        self.offload_password = generated_password(f"{name}-offload-password", self, length=48)
        salt = generated_password(f"{name}-offload-salt", self, length=24)
        verifier = secret_output(
            pulumi.Output.all(self.offload_password, salt).apply(
                lambda values: scram_sha256_verifier(values[0], values[1].encode())
            )
        )
        self.offload_url = pulumi.Output.secret(
            pulumi.Output.concat("postgresql://", OFFLOAD_ROLE, ":", self.offload_password, "@", self.address, "/", db)
        )
        self.setup_service = f"{name}-setup"
        server_host, server_port = self.address.rsplit(":", 1)
        platform.deploy(
            ServiceSpec(
                name=self.setup_service,
                host=args.get("setup_host", host),
                image=args.get("setup_image", POSTGRES_IMAGE),
                entrypoint=("psql",),
                command=SETUP_COMMAND,
                environment={"PGHOST": server_host, "PGPORT": server_port, "PGUSER": user, "PGDATABASE": db},
                secrets=(
                    Secret("PGPASSWORD", self.password),
                    Secret("OFFLOAD_ROLE_VERIFIER", verifier),
                ),
                files=(ConfigFile("offload-role.sql", SETUP_SQL_PATH, OFFLOAD_ROLE_SQL.read_text()),),
                depends_on=(name,),
                memory_limit=LIMITS["postgres-setup"],
                one_shot=True,
            ),
            parent=self,
        )
        self.register_outputs({"address": self.address, "url": self.url, "offloadUrl": self.offload_url})
