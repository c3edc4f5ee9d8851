"""The post-deploy check (the seeds' test.sh) as a resource: `pulumi up` succeeds only once every vLLM
server answers /health and a chat completion goes through the load balancer (runtime.smoke)."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from infra.components.tls import CA_ENV
from infra.platforms import ServicePlatform
from infra.services import Secret, ServiceSpec

CHECK_TIMEOUT_S = 900  # a model may still be loading after its container reports healthy elsewhere


class PostDeployCheckArgs(TypedDict):
    platform: ServicePlatform
    host: str  # where it runs: the load balancer's host (compose)
    image: pulumi.Input[str]  # the runtime image
    vllm_urls: list[str]
    lb_url: str
    batch_api_url: str
    model: str
    lb_api_key: pulumi.Output[str]  # for the chat completion (runtime.smoke reads $SMOKE_LB_API_KEY)
    ca_b64: NotRequired[pulumi.Output[str] | None]  # compose: the stack CA the https endpoints' certificates chain to


class PostDeployCheck(pulumi.ComponentResource):
    def __init__(self, name: str, args: PostDeployCheckArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:check:PostDeployCheck", name, None, opts)
        command = ["python", "-m", "runtime.smoke", "--lb", args["lb_url"], "--model", args["model"]]
        for url in args["vllm_urls"]:
            command += ["--vllm", url]
        command += ["--batch-api", args["batch_api_url"], "--timeout", str(CHECK_TIMEOUT_S)]
        args["platform"].run_after_deploy(
            ServiceSpec(
                name=name,
                host=args["host"],
                image=args["image"],
                command=tuple(command),
                # The CA is no secret; it rides the secrets' env file because that resolves Outputs.
                secrets=(
                    Secret("SMOKE_LB_API_KEY", args["lb_api_key"]),
                    *((Secret(CA_ENV, ca),) if (ca := args.get("ca_b64")) is not None else ()),
                ),
                memory_limit="256m",
                one_shot=True,
            ),
            parent=self,
        )
        self.register_outputs({})
