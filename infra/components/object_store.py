"""MinIO (S3 API) for batch inputs and results; a one-shot job creates the bucket and its
lifecycle rule so results expire after the retention period (OpenAI keeps batch output 7 days).

The job runs our runtime image (`python -m runtime.batch.bucket`, S3 API only), which sets the
rule idempotently on a new bucket and an old one alike."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.platforms import Platform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume, host_port

MINIO_IMAGE = "minio/minio:RELEASE.2025-09-07T16-13-09Z"
ACCESS_KEY = "vllm-gb10"


class ObjectStoreArgs(TypedDict):
    platform: Platform
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


class ObjectStore(pulumi.ComponentResource):
    """Outputs `setup_service`: the one-shot bucket set-up, which the batch service waits for."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: pulumi.Output[str]
    setup_service: str

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:ObjectStore", name, None, opts)
        platform, host, port = args["platform"], args["host"], args["port"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        self.secret_key = generated_password(f"{name}-secret-key", self, length=40)
        self.access_key = ACCESS_KEY
        self.bucket = args["bucket"]
        bind, probe = platform.bind_address(host, exposure), platform.probe_address(host, exposure)
        console = host_port(platform.bind_address(host, Exposure.INTERNAL), args["console_port"])
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=MINIO_IMAGE,
                command=("server", "/data", "--address", host_port(bind, port), "--console-address", console),
                environment={"MINIO_ROOT_USER": ACCESS_KEY},
                secrets=(Secret("MINIO_ROOT_PASSWORD", self.secret_key),),
                ports=(
                    Port(port, port, exposure, "s3"),
                    Port(args["console_port"], args["console_port"], Exposure.INTERNAL, "console"),
                ),
                volumes=(Volume("minio-data", "/data", size_gi=500),),
                healthcheck=HealthCheck(
                    # MC_HOST_self defines the alias `self` at the address MinIO listens on (no config file).
                    command=("sh", "-c", f"MC_HOST_self=http://{host_port(probe, port)} mc ready self"),
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
                ),
                environment={"AWS_ACCESS_KEY_ID": ACCESS_KEY},
                secrets=(Secret("AWS_SECRET_ACCESS_KEY", self.secret_key),),
                depends_on=(name,),
                memory_limit="256m",
                one_shot=True,
            ),
            parent=self,
        )
        self.register_outputs({"endpoint": self.endpoint, "bucket": self.bucket})
