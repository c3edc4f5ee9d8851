"""Platforms decide how a ServiceSpec runs: docker compose over SSH, or Kubernetes objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pulumi

from infra.config import RaySettings
from infra.services import Exposure, ServiceSpec


@dataclass(frozen=True)
class Rollout:
    """The servers behind the load balancer, for changes that must reach them one host at a time."""

    lb_host: str  # where the load balancer (and its admin socket) runs
    keys_dir: str  # its keys directory, relative to that host's project directory: the admin socket is there
    servers: dict[str, tuple[str, ...]]  # host -> its server names in haproxy.cfg (one per backend it is in)
    services: dict[str, tuple[str, ...]]  # host -> the services of those servers (whose change rolls)
    tool_image: pulumi.Input[str]  # an image with runtime.lbdrain (the runtime image)
    drain_timeout_s: int  # how long the requests in flight on a draining host may take to finish


class ServicePlatform(Protocol):
    """What components may ask of a platform; nothing here names a stack."""

    nodes_addressable: bool  # can other services reach each host's (or pod's) own address?
    host_state_dirs: bool  # can a service keep a writable directory on its host (compose: beside the project)?
    serves_tls: bool  # do the public services serve TLS themselves (compose), or does the platform's edge?
    host_docker: bool  # does each host run a Docker Engine a service may be given (compose; kubernetes: containerd)?

    def terminate_tls(self, cert_pem: pulumi.Output[str], key_pem: pulumi.Output[str]) -> None:
        """Where `serves_tls` is false: the certificate the platform's edge (the Ingress) serves."""

    def deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        """Run `spec` (on `spec.host` where placement matters)."""

    def run_after_deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        """Run the one-shot check `spec` once the services are up; `pulumi up` fails when it fails."""

    def deploy_ray(
        self, name: str, head: ServiceSpec, workers: list[ServiceSpec], settings: RaySettings, parent: pulumi.Resource
    ) -> None:
        """Run a Ray cluster: compose runs the specs' `ray start` containers, kubernetes uses KubeRay."""

    def internal_host(self, host: str, service: str) -> str:
        """The address (no port) at which other services reach an internal `service`."""

    def internal_address(self, host: str, port: int, service: str, exposure: Exposure = Exposure.INTERNAL) -> str:
        """host:port at which other services reach `service` on `port` (bound as `exposure` says)."""

    def bind_address(self, host: str, exposure: Exposure) -> str:
        """The address a service on `host` listens on: every service names it in its own command
        line, since compose runs everything on the host network (nothing is published)."""

    def probe_address(self, host: str, exposure: Exposure) -> str:
        """The address at which a container's own health check reaches a service bound per `exposure`."""

    def external_address(self, host: str, port: int, service: str) -> str:
        """host:port at which a user reaches a public port."""

    def roll(self, rollout: Rollout) -> None:
        """Make a change to the serving path reach one host at a time: the next host's servers leave the
        load balancer's rotation (drained) only once the previous host's are healthy and back in it.
        Kubernetes leaves this to each workload's own rollout strategy."""

    def finish(self) -> None:
        """Declare whatever must see every spec first (compose: one project per host)."""
