"""The memory guard on each GPU host (runtime.memguard), placed as the node exporter is.

On GB10 unified memory, cgroup limits do not count CUDA allocations and running out of memory
freezes the box: the guard watches the host's MemAvailable and PSI (its /proc, read-only) and acts
first. It pauses the batch workers on its host through a Redis key (its own ACL user), and on compose
it sheds, through the host's Docker socket, the containers of its own host's compose project that the
stack lists in `memguardShed` (ray-worker, batch-worker, vllm; never a data service). The socket is
root-equivalent: only this service gets it, as root with every capability dropped, no new privileges
and a read-only filesystem (infra/render/compose.py), and the policy pack checks both (docker-socket).
On kubernetes the nodes run containerd, not Docker: the guard there pauses and never sheds.
"""

from __future__ import annotations

import json
from typing import TypedDict

import pulumi

from infra.config import MemoryGuardSettings
from infra.memory import LIMITS
from infra.platforms import ServicePlatform
from infra.render.compose import project_name
from infra.services import Exposure, HostPath, Port, Secret, ServiceSpec, http_health_check

PROC_MOUNT = "/host/proc"
STOP_TIMEOUT_S = 10  # a shed container's grace period before SIGKILL: memory is running out


class MemoryGuardArgs(TypedDict):
    platform: ServicePlatform
    image: pulumi.Input[str]  # the runtime image
    hosts: list[str]  # the GPU hosts (compose) or the GB10 node's placement (kubernetes)
    settings: MemoryGuardSettings
    redis_url: pulumi.Output[str]  # the memguard ACL user's
    shed: dict[str, tuple[str, ...]]  # host -> the services it may stop there, in order (compose)


class MemoryGuard(pulumi.ComponentResource):
    metrics_targets: list[str]

    def __init__(self, name: str, args: MemoryGuardArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:memguard:MemoryGuard", name, None, opts)
        platform, settings = args["platform"], args["settings"]
        internal = Exposure.INTERNAL
        self.metrics_targets = []
        for host in args["hosts"]:
            service = f"{name}-{host}"
            shed = args["shed"].get(host, ()) if platform.host_docker else ()
            environment = {
                "MEMGUARD_HOST": host,
                "MEMGUARD_PROC_ROOT": PROC_MOUNT,
                "MEMGUARD_PAUSE_AVAILABLE_GIB": str(settings.pause_available_gib),
                "MEMGUARD_SHED_AVAILABLE_GIB": str(settings.shed_available_gib),
                "MEMGUARD_RECOVER_AVAILABLE_GIB": str(settings.recover_available_gib),
                "MEMGUARD_PAUSE_PSI_SOME": str(settings.pause_psi_some),
                "MEMGUARD_SHED_PSI_FULL": str(settings.shed_psi_full),
                "MEMGUARD_RECOVER_SECONDS": str(settings.recover_seconds),
                "MEMGUARD_SHED_SERVICES": json.dumps(list(shed)),
                "MEMGUARD_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT_S),
                "MEMGUARD_METRICS_HOST": platform.bind_address(host, internal),
                "MEMGUARD_METRICS_PORT": str(settings.port),
            }
            if shed:
                environment["MEMGUARD_DOCKER_SOCKET"] = "/var/run/docker.sock"
                environment["MEMGUARD_COMPOSE_PROJECT"] = project_name(host)
            platform.deploy(
                ServiceSpec(
                    name=service,
                    host=host,
                    image=args["image"],
                    command=("python", "-m", "runtime.memguard"),
                    environment=environment,
                    secrets=(Secret("MEMGUARD_REDIS_URL", args["redis_url"]),),
                    host_paths=(HostPath("host-proc", "/proc", PROC_MOUNT),),
                    ports=(Port(settings.port, settings.port, internal, "metrics"),),
                    healthcheck=http_health_check(
                        settings.port,
                        "/metrics",
                        host=platform.probe_address(host, internal),
                        python="python",
                        interval_s=15,
                        start_period_s=10,
                    ),
                    docker_socket=bool(shed),
                    pin_to_gpu_node=True,  # kubernetes: the GB10 node is the one whose memory matters
                    memory_limit=LIMITS["memguard"],
                ),
                parent=self,
            )
            self.metrics_targets.append(platform.internal_address(host, settings.port, service))
        self.register_outputs({"metricsTargets": self.metrics_targets})
