"""A GB10 host reached over SSH: the pinned connection and the preflight that gates deployment."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TypedDict

import pulumi
from pulumi_command import remote

from infra.config import Host

PREFLIGHT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "preflight.sh"
GB10_PATTERN = "GB10"


class Gb10HostArgs(TypedDict):
    host: Host
    private_key: pulumi.Input[str]
    require_gpu: bool
    min_free_disk_gb: int
    remote_dir: str  # the stack's remoteDir; this host's files live in <remote_dir>/<host name>


def preflight_command(*, require_gpu: bool, min_free_gb: int, remote_dir: str) -> str:
    """The preflight script with its parameters prepended as shell assignments."""
    params = {
        "REQUIRE_GPU": "1" if require_gpu else "0",
        "MIN_FREE_GB": str(min_free_gb),
        "REMOTE_DIR": remote_dir,
        "GPU_PATTERN": GB10_PATTERN,
    }
    assignments = "".join(f"{k}={shlex.quote(v)}\n" for k, v in params.items())
    return assignments + PREFLIGHT_SCRIPT.read_text()


class Gb10Host(pulumi.ComponentResource):
    """Outputs `connection` for every remote resource on this host; `ready` gates them.

    `project_dir` is per host so that two hosts sharing one Docker Engine (and one remoteDir) keep
    their compose files apart.
    """

    connection: remote.ConnectionArgs
    ready: pulumi.Resource
    host_name: str
    bind_ip: str
    public_address: str
    address: str
    project_dir: str

    def __init__(self, name: str, args: Gb10HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:host:Gb10Host", name, None, opts)
        host = args["host"]
        self.host_name = host.name
        self.bind_ip = host.bind_ip
        self.public_address = str(host.public_address)
        self.address = host.address
        self.project_dir = f"{args['remote_dir']}/{host.name}"
        self.connection = remote.ConnectionArgs(
            host=host.address,
            port=host.ssh_port,
            user=host.ssh_user,
            private_key=pulumi.Output.secret(args["private_key"]),
            host_key=host.host_key,
        )
        script = preflight_command(
            require_gpu=args["require_gpu"],
            min_free_gb=args["min_free_disk_gb"],
            remote_dir=self.project_dir,
        )
        self.ready = remote.Command(
            f"{name}-preflight",
            connection=self.connection,
            create=script,
            update=script,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"address": host.address, "bindIp": self.bind_ip, "publicAddress": self.public_address})
