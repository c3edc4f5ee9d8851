"""A GB10 host reached over SSH: the pinned connection and the preflight that gates deployment."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NotRequired, TypedDict

import pulumi
from pulumi_command import remote

from infra.config import Host

PREFLIGHT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "preflight.sh"
GB10_PATTERN = "GB10"
# How far the box's MemTotal may be from its host profile's memory: the 128 and 64 GB GB10s are twice
# apart, and a kernel or firmware carve-out moves MemTotal by a few percent.
MEMORY_TOLERANCE_PCT = 8


@dataclass(frozen=True)
class ExpectedMemory:
    """What the preflight holds a unified-memory GPU host's MemTotal to: its host profile's memory."""

    profile: str  # the hostProfile's name, for the message
    gib: float
    stack_file: str  # where hostProfile is set, for the message


RUN_STAMP_ENV = "VLLM_GB10_RUN_STAMP"
# The stamp the offline plan pins: a trigger holding it is a new value on every real `pulumi up`, so
# the plan's diff shows its resource as replaced on every run (infra/plan/diff.py).
PLAN_RUN_STAMP = "offline-plan"


def run_stamp() -> str:
    """This run's stamp: the time, unless $VLLM_GB10_RUN_STAMP fixes it (the offline plan does, so that
    two plans of the same code compare equal)."""
    return os.environ.get(RUN_STAMP_ENV) or datetime.now(UTC).isoformat()


@contextmanager
def pinned_run_stamp(value: str) -> Iterator[None]:
    """Run the program with this stamp (the plan: a constant; the local engine: this run's), then restore."""
    before = os.environ.get(RUN_STAMP_ENV)
    os.environ[RUN_STAMP_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUN_STAMP_ENV, None)
        else:
            os.environ[RUN_STAMP_ENV] = before


class Gb10HostArgs(TypedDict):
    host: Host
    private_key: pulumi.Input[str]
    require_gpu: bool
    min_free_disk_gb: int
    remote_dir: str  # the stack's remoteDir; this host's files live in <remote_dir>/<host name>
    expected_memory: NotRequired[ExpectedMemory | None]  # a GB10 gpu host: its profile's memory


def preflight_command(
    *, require_gpu: bool, min_free_gb: int, remote_dir: str, stack_dir: str, memory: ExpectedMemory | None = None
) -> str:
    """The preflight script with its parameters prepended as shell assignments (`remote_dir`: this
    host's project directory; `stack_dir`: the stack's remoteDir above it, which a failure names)."""
    params = {
        "REQUIRE_GPU": "1" if require_gpu else "0",
        "MIN_FREE_GB": str(min_free_gb),
        "REMOTE_DIR": remote_dir,
        "STACK_DIR": stack_dir,
        "GPU_PATTERN": GB10_PATTERN,
        "HOST_PROFILE": memory.profile if memory else "",
        "PROFILE_MEM_KIB": str(round(memory.gib * 1024**2)) if memory else "0",
        "MEM_TOLERANCE_PCT": str(MEMORY_TOLERANCE_PCT),
        "STACK_FILE": memory.stack_file if memory else "",
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
            stack_dir=args["remote_dir"],
            memory=args.get("expected_memory"),
        )
        self.ready = remote.Command(
            f"{name}-preflight",
            connection=self.connection,
            create=script,
            update=script,
            # A new stamp each run replaces the command, so the preflight runs on every `pulumi up`
            # (a disk that filled up or a driver that went away is caught before anything changes).
            triggers=[run_stamp()],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"address": host.address, "bindIp": self.bind_ip, "publicAddress": self.public_address})
