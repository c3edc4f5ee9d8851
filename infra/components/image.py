"""A container image built with BuildKit and pushed to the stack's registry.

`ref` is the pushed tag pinned by digest, so every host runs exactly the image that was built.
Nothing is built during `pulumi preview` (`build_on_preview=False`).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker_build as docker_build

# The base of images/Dockerfile.runtime and Dockerfile.cpu (their `ARG PYTHON_IMAGE` default, which a
# unit test holds equal to this): python:3.11.14-slim-bookworm by its multi-arch index digest.
PYTHON_IMAGE = "python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d"


class ContainerImageArgs(TypedDict):
    context: str
    dockerfile: str
    repository: str  # registry/name, without tag
    tag: str
    platform: str  # e.g. linux/arm64; empty: the building machine's own
    build_args: NotRequired[dict[str, str]]
    builder: NotRequired[str]
    registry_username: NotRequired[str]
    registry_password: NotRequired[pulumi.Input[str] | None]


class ContainerImage(pulumi.ComponentResource):
    ref: pulumi.Output[str]

    def __init__(self, name: str, args: ContainerImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:image:ContainerImage", name, None, opts)
        registry_address = args["repository"].split("/", 1)[0]
        registries = None
        if args.get("registry_username"):
            registries = [
                docker_build.RegistryArgs(
                    address=registry_address,
                    username=args["registry_username"],
                    password=pulumi.Output.secret(args["registry_password"]),
                )
            ]
        image = docker_build.Image(
            f"{name}-build",
            context=docker_build.BuildContextArgs(location=args["context"]),
            dockerfile=docker_build.DockerfileArgs(location=args["dockerfile"]),
            platforms=[docker_build.Platform(args["platform"])] if args["platform"] else None,
            build_args=args.get("build_args") or None,
            builder=docker_build.BuilderConfigArgs(name=args["builder"]) if args.get("builder") else None,
            tags=[f"{args['repository']}:{args['tag']}"],
            push=True,
            build_on_preview=False,
            registries=registries,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = image.ref
        self.register_outputs({"ref": self.ref})
