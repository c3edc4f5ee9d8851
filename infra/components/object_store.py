"""The S3 server (RustFS) for batch inputs and results; a one-shot job creates the bucket and its
lifecycle rule so results expire after the retention period (OpenAI keeps batch output 7 days).

RustFS, not MinIO: MinIO ships source only since October 2025 and its images left Docker Hub in
September 2026. RustFS (Apache-2.0) publishes multi-arch (linux/arm64) images with its security
fixes; README "Object store" says why it was chosen. The service keeps the name `minio` (and the
config keys and outputs theirs) so existing stacks, volumes and clients carry over unchanged.

The job runs our runtime image (`python -m runtime.batch.bucket`, S3 API only), which sets the
rule idempotently on a new bucket and an old one alike."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_key_base64, generated_password
from infra.platforms import ServicePlatform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume, host_port
from runtime.batch.s3_policies import BACKUP_USER_SECRET_ENV, BATCH_USER_SECRET_ENV

# rustfs/rustfs 1.0.0 (2026-09-16, the latest stable release), multi-arch index digest (linux/amd64,
# linux/arm64), the same as ghcr.io/rustfs/rustfs:1.0.0. Digest as published in several projects'
# pins, one of which records the image's behaviour (RUSTFS_* credentials, curl, /health/ready).
S3_SERVER_IMAGE = "rustfs/rustfs:1.0.0@sha256:8cc9801755448b71a786705ce76692c77e14936cccd87cf2fc31842e58f4d1ff"
# The image's user: rustfs/rustfs's Dockerfile adds group and user rustfs as 10001 (`addgroup -g 10001
# -S rustfs && adduser -u 10001 -G rustfs`) and runs `USER rustfs`; its volume is made writable to it.
S3_SERVER_GID = 10001
ACCESS_KEY = "vllm-gb10"  # the root user: the server and its set-up job only
# The batch services' users (runtime.batch.s3_users, made by the set-up job through RustFS's admin API):
# the batch bucket's objects but its backups' prefix, and the Redis backups' prefix only.
BATCH_ACCESS_KEY = "vllm-gb10-batch"
BACKUP_ACCESS_KEY = "vllm-gb10-backup"
USER_SECRET_LENGTH = 40  # RustFS's longest secret key (crates/policy/src/auth/credentials.rs:29)


class ObjectStoreServerArgs(TypedDict):
    platform: ServicePlatform
    host: str
    port: int
    console_port: int
    bucket: str
    retention_days: int
    public: bool
    memory_limit: str
    setup_image: pulumi.Input[str]  # the runtime image: runs the bucket set-up
    # Where the set-up runs (default: MinIO's host): beside the services that wait for it, since
    # compose's `up --wait` takes a completed one-shot that no service waits for for a failure.
    setup_host: NotRequired[str]


class ObjectStoreServer(pulumi.ComponentResource):
    """Outputs `setup_service`: the one-shot bucket set-up, which the batch service waits for, and the
    scoped users' keys it makes (batch_*, backup_*): the services get those, never the root key."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: pulumi.Output[str]
    batch_access_key: str
    batch_secret_key: pulumi.Output[str]
    backup_access_key: str
    backup_secret_key: pulumi.Output[str]
    setup_service: str

    def __init__(self, name: str, args: ObjectStoreServerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:ObjectStore", name, None, opts)
        platform, host, port = args["platform"], args["host"], args["port"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        self.secret_key = generated_password(f"{name}-secret-key", self, length=40)
        # Seals each object's data key for SSE-S3 without a KMS (runtime.batch.bucket sets the bucket's
        # default encryption). It must never change: objects sealed with the old one become unreadable.
        sse_master_key = generated_key_base64(f"{name}-sse-master-key", self)
        self.access_key = ACCESS_KEY
        self.batch_access_key, self.backup_access_key = BATCH_ACCESS_KEY, BACKUP_ACCESS_KEY
        self.batch_secret_key = generated_password(f"{name}-batch-user-secret", self, length=USER_SECRET_LENGTH)
        self.backup_secret_key = generated_password(f"{name}-backup-user-secret", self, length=USER_SECRET_LENGTH)
        self.bucket = args["bucket"]
        bind, probe = platform.bind_address(host, exposure), platform.probe_address(host, exposure)
        console = host_port(platform.bind_address(host, Exposure.INTERNAL), args["console_port"])
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=S3_SERVER_IMAGE,
                # The image's entrypoint runs /usr/bin/rustfs with these arguments.
                command=(
                    "rustfs",
                    "--address",
                    host_port(bind, port),
                    "--console-enable",
                    "--console-address",
                    console,
                    "/data",
                ),
                environment={
                    "RUSTFS_ACCESS_KEY": ACCESS_KEY,
                    "RUSTFS_CHECK_UPDATE": "false",  # no call home at start-up
                    "RUSTFS_OBS_LOG_DIRECTORY": "",  # logs on stdout, not a file in the container
                },
                secrets=(
                    Secret("RUSTFS_SECRET_KEY", self.secret_key),
                    Secret("RUSTFS_SSE_S3_MASTER_KEY", sse_master_key),
                ),
                ports=(
                    Port(port, port, exposure, "s3"),
                    Port(args["console_port"], args["console_port"], Exposure.INTERNAL, "console"),
                ),
                volumes=(Volume("minio-data", "/data", size_gi=500),),
                volume_group=S3_SERVER_GID,
                healthcheck=HealthCheck(
                    # RustFS's readiness endpoint, at the address it listens on (the image ships curl).
                    command=("curl", "-fsS", "-o", "/dev/null", f"http://{host_port(probe, port)}/health/ready"),
                    http_path="/health/ready",
                    http_port=port,
                    interval_s=10,
                    start_period_s=10,
                ),
                memory_limit=args["memory_limit"],
                stateful=True,
            ),
            parent=self,
        )
        self.endpoint = f"http://{platform.internal_address(host, port, name, exposure)}"
        self.setup_service = f"{name}-setup"
        platform.deploy(
            ServiceSpec(
                name=self.setup_service,
                host=args.get("setup_host", host),
                image=args["setup_image"],
                command=(
                    "python",
                    "-m",
                    "runtime.batch.bucket",
                    "--endpoint",
                    self.endpoint,
                    "--bucket",
                    self.bucket,
                    "--expire-days",
                    str(args["retention_days"]),
                    # Then the scoped users, through the admin API; a refusal fails the job, so `up` fails
                    # naming this service and the step, and the services never fall back to the root key.
                    *("--batch-user", BATCH_ACCESS_KEY, "--backup-user", BACKUP_ACCESS_KEY),
                ),
                environment={"AWS_ACCESS_KEY_ID": ACCESS_KEY},
                secrets=(
                    Secret("AWS_SECRET_ACCESS_KEY", self.secret_key),
                    Secret(BATCH_USER_SECRET_ENV, self.batch_secret_key),
                    Secret(BACKUP_USER_SECRET_ENV, self.backup_secret_key),
                ),
                depends_on=(name,),
                memory_limit="256m",
                one_shot=True,
            ),
            parent=self,
        )
        self.register_outputs({"endpoint": self.endpoint, "bucket": self.bucket})
