"""MinIO (S3 API) for batch inputs and results; a one-shot job creates the bucket and its
lifecycle rule so results expire after the retention period (OpenAI keeps batch output 7 days)."""

from __future__ import annotations

from typing import TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.platforms import Platform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume

MINIO_IMAGE = "minio/minio:RELEASE.2025-09-07T16-13-09Z"
MC_IMAGE = "minio/mc:RELEASE.2025-08-13T08-35-41Z"
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


class ObjectStore(pulumi.ComponentResource):
    endpoint: str
    bucket: str
    access_key: str
    secret_key: pulumi.Output[str]

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:data:ObjectStore", name, None, opts)
        platform, host, port = args["platform"], args["host"], args["port"]
        exposure = Exposure.PUBLIC if args["public"] else Exposure.INTERNAL
        self.secret_key = generated_password(f"{name}-secret-key", self, length=40)
        self.access_key = ACCESS_KEY
        self.bucket = args["bucket"]
        credentials = (Secret("MINIO_ROOT_PASSWORD", self.secret_key),)
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=MINIO_IMAGE,
                command=("server", "/data", "--address", f":{port}", "--console-address", f":{args['console_port']}"),
                environment={"MINIO_ROOT_USER": ACCESS_KEY},
                secrets=credentials,
                ports=(
                    Port(port, port, exposure, "s3"),
                    Port(args["console_port"], args["console_port"], Exposure.INTERNAL, "console"),
                ),
                volumes=(Volume("minio-data", "/data", size_gi=500),),
                healthcheck=HealthCheck(command=("mc", "ready", "local"), interval_s=10, start_period_s=10),
                memory_limit=args["memory_limit"],
                stateful=True,
            ),
            parent=self,
        )
        setup = (
            f'mc alias set store "http://{name}:{port}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" '
            f"&& mc mb --ignore-existing store/{self.bucket} "
            f"&& mc ilm rule rm --all --force store/{self.bucket} "
            f"&& mc ilm rule add --expire-days {args['retention_days']} store/{self.bucket}"
        )
        platform.deploy(
            ServiceSpec(
                name=f"{name}-setup",
                host=host,
                image=MC_IMAGE,
                entrypoint=("/bin/sh", "-c"),
                command=(setup,),
                environment={"MINIO_ROOT_USER": ACCESS_KEY},
                secrets=credentials,
                depends_on=(name,),
                memory_limit="256m",
                one_shot=True,
            ),
            parent=self,
        )
        self.endpoint = f"http://{platform.internal_address(host, port, name)}"
        self.register_outputs({"endpoint": self.endpoint, "bucket": self.bucket})
