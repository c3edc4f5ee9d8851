"""A Ray cluster: a head (no tasks scheduled on it) and a GPU worker per GPU host.

On compose, Ray needs many ports between nodes; its containers use the host network (as every
compose service does) and bind to the host's cluster address; the dashboard (Jobs API) and client
server bind there too. On kubernetes the platform hands the same specs to KubeRay (`ServicePlatform.deploy_ray`).

Ray's token authentication is always on (Ray 2.52+): without it anyone who reaches the dashboard
port runs code on the cluster. Every node, and every client (`ray job`, the offload CLI, vLLM's
workers in tensor/pipeline mode), needs RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN; the
token is a generated secret, exported as the stack output `rayAuthToken`.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.components.vllm import RAY_MEMORY_MONITOR_OFF, VllmNode
from infra.config import RaySettings
from infra.memory import LIMITS, gib
from infra.platforms import ServicePlatform
from infra.services import HealthCheck, Secret, ServiceSpec, http_health_check
from runtime.ray_node import DEFAULT_DEADLINE_S as RAY_NODE_START_DEADLINE_S

HEAD_MEMORY = LIMITS["ray-head"]
WORKER_MEMORY = LIMITS["ray-worker"]  # within the GB10's one memory budget (infra.memory)
# `ray start`, tried again while a loaded host makes it miss Ray's fixed 30 s registration (runtime.ray_node).
RAY_START = ("python3", "-m", "runtime.ray_node", "ray", "start")
# Ray's dashboard agent on every node answers GET /api/healthz for its own raylet and, on the head, its
# own GCS, without auth (ray/dashboard/modules/reporter/healthz_agent.py, public in http_server_agent.py;
# KubeRay probes the same endpoint). A one-line urllib probe costs a Python start; `ray health-check`
# imports all of Ray first, and on a loaded host (the local stack's four busy CPU engines on two cores)
# took longer than its 5 s, so the head was "unhealthy" for as long as a batch ran and an `up` failed.
AGENT_HEALTH_PATH = "/api/healthz"
HEAD_AGENT_PORT = 52365  # Ray's default --dashboard-agent-listen-port
WORKER_AGENT_PORT = 52366  # the head's dashboard agent keeps Ray's default 52365; vLLM's Ray uses 52367
# What the scheduler reserves for a worker beside vLLM on the GB10 node; the offload job peaks
# under 2 GB (bench/offload.py), the limit leaves room for bigger work.
WORKER_MEMORY_REQUEST = "8g"
AUTH_ENVIRONMENT = {"RAY_AUTH_MODE": "token"}
# The offload job's cuML allocates through RMM, whose pool grows by default to all the memory the GPU
# reports (on GB10: the whole box; cgroup limits do not count CUDA allocations there). runtime.offload
# caps the pool at this many bytes: half the worker's memory limit, the other half for the worker's own
# process, its raylet and its object store (Ray's default: 30% of the memory it sees).
RMM_POOL_ENV = "OFFLOAD_RMM_POOL_MAX_BYTES"


def rmm_pool_max_bytes(memory_limit: str) -> int:
    """What a worker with this compose memory limit lets cuML's RMM pool grow to (a multiple of 256 bytes)."""
    half = int(gib(memory_limit) * 1024**3) // 2
    return half - half % 256


AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"


class RayClusterArgs(TypedDict):
    platform: ServicePlatform
    image: pulumi.Input[str]
    head_host: str
    worker_hosts: list[str]
    settings: RaySettings
    vllm_node: NotRequired[VllmNode | None]  # tensor/pipeline: the workers run vLLM's workers too
    # Secrets every node holds for the jobs it runs (the offload job's OFFLOAD_DSN): a job's drivers and
    # tasks inherit them, so no client sends a password in a job's runtime_env, which the dashboard shows.
    job_secrets: NotRequired[tuple[Secret, ...]]
    # Services the head waits for (the Postgres set-up that makes the offload role in OFFLOAD_DSN).
    head_depends_on: NotRequired[tuple[str, ...]]
    # Hosts whose memory is unified (GB10): their Ray nodes run without Ray's memory monitor.
    unified_memory_hosts: NotRequired[frozenset[str]]
    # Services a worker's host must have healthy before the worker starts (replica: that host's vLLM
    # servers; a vLLM starting up profiles memory and takes every core it can, and a raylet starting beside
    # it may miss Ray's fixed 30 s to register with the head).
    worker_depends_on: NotRequired[dict[str, tuple[str, ...]]]


class RayCluster(pulumi.ComponentResource):
    metrics_targets: list[str]  # host:port of each node's Prometheus endpoint that others can reach
    gcs_address: str
    head_service: str  # the head's service name, for a node that must wait for it
    dashboard_url: str
    client_address: str
    auth_token: pulumi.Output[str]  # secret
    # What any other Ray node or client of this cluster needs in its environment (vLLM's leader).
    client_environment: dict[str, str]
    client_secrets: tuple[Secret, ...]

    def __init__(self, name: str, args: RayClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:ray:RayCluster", name, None, opts)
        platform, settings, head = args["platform"], args["settings"], args["head_host"]
        self.auth_token = generated_password(f"{name}-auth-token", self, length=48)
        self.client_environment = dict(AUTH_ENVIRONMENT)
        self.client_secrets = (Secret(AUTH_TOKEN_ENV, self.auth_token),)
        node_secrets = (*self.client_secrets, *args.get("job_secrets", ()))
        head_ip = platform.internal_host(head, f"{name}-head")
        self.gcs_address = f"{head_ip}:{settings.gcs_port}"

        def agent_health(ip: str, port: int) -> HealthCheck:
            """The node's own dashboard agent: its raylet (and on the head its GCS) answers."""
            # Not healthy until its raylet is, and that may take several of runtime.ray_node's tries on a
            # loaded host: failures count only after the deadline those tries have.
            return http_health_check(port, AGENT_HEALTH_PATH, host=ip, start_period_s=int(RAY_NODE_START_DEADLINE_S))

        unified = args.get("unified_memory_hosts", frozenset())

        def memory_monitor(host: str) -> dict[str, str]:
            # Ray's memory monitor reads the box's memory, not what CUDA holds of it, and kills workers while
            # vLLM loads weights on unified memory: off on GB10 hosts (infra.components.vllm).
            return dict(RAY_MEMORY_MONITOR_OFF) if host in unified else {}

        self.head_service = f"{name}-head"
        head_spec = ServiceSpec(
            name=self.head_service,
            host=head,
            image=args["image"],
            command=(
                *RAY_START,
                "--head",
                "--block",
                f"--node-ip-address={head_ip}",
                f"--port={settings.gcs_port}",
                f"--dashboard-host={head_ip}",
                f"--dashboard-port={settings.dashboard_port}",
                f"--ray-client-server-port={settings.client_port}",
                "--num-cpus=0",
                "--num-gpus=0",
                f"--metrics-export-port={settings.metrics_port}",
            ),
            healthcheck=agent_health(head_ip, HEAD_AGENT_PORT),
            environment={**self.client_environment, **memory_monitor(head)},
            secrets=node_secrets,
            depends_on=args.get("head_depends_on", ()),
            memory_limit=HEAD_MEMORY,
            memory_request="2g",
            shm_size="4g",
        )
        worker_specs = []
        node = args.get("vllm_node")
        self.worker_services = {host: f"{name}-worker-{host}" for host in args["worker_hosts"]}
        # Ray's metrics exporter listens on every interface (ray/dashboard/modules/reporter/reporter_agent.py:
        # address "" unless the node IP is 127.0.0.1), so nodes sharing one machine's network need ports of
        # their own: a worker on the head's host, and the local stack's two "hosts" on one machine (nova's agent
        # failed on stella's port, and its raylet, which fate-shares with the agent, with it).
        self.worker_metrics_ports = {host: settings.metrics_port + 1 + i for i, host in enumerate(args["worker_hosts"])}
        for host in args["worker_hosts"]:
            ip = platform.internal_host(host, f"{name}-worker-{host}")
            worker_specs.append(
                ServiceSpec(
                    name=f"{name}-worker-{host}",
                    host=host,
                    image=args["image"],
                    command=(
                        *RAY_START,
                        "--block",
                        f"--address={self.gcs_address}",
                        f"--node-ip-address={ip}",
                        "--num-gpus=1",
                        # On the head's host both share the host network: the worker takes a metrics
                        # port of its own (above) and its own dashboard-agent port.
                        f"--metrics-export-port={self.worker_metrics_ports[host]}",
                        f"--dashboard-agent-listen-port={WORKER_AGENT_PORT}",
                    ),
                    gpu=True,
                    healthcheck=agent_health(ip, WORKER_AGENT_PORT),
                    environment={
                        **self.client_environment,
                        **memory_monitor(host),
                        # tensor/pipeline: vLLM's workers (the GPU is held by vLLM, the offload job runs on the
                        # CPU); replica: the offload job's cuML, capped within this worker's memory limit
                        **(
                            {**node.environment, "VLLM_HOST_IP": ip}
                            if node
                            else {RMM_POOL_ENV: str(rmm_pool_max_bytes(WORKER_MEMORY))}
                        ),
                    },
                    secrets=(*node_secrets, *(node.secrets if node else ())),
                    volumes=node.volumes if node else (),
                    rdma=node.rdma if node else False,
                    memory_limit=node.memory_limit if node else WORKER_MEMORY,
                    memory_request=WORKER_MEMORY_REQUEST,
                    shm_size="16g",
                    depends_on=args.get("worker_depends_on", {}).get(host, ()),
                )
            )
        platform.deploy_ray(name, head_spec, worker_specs, settings, parent=self)
        self.metrics_targets = [f"{head_ip}:{settings.metrics_port}"]
        if platform.nodes_addressable:
            self.metrics_targets += [
                f"{platform.internal_host(h, f'{name}-worker-{h}')}:{self.worker_metrics_ports[h]}"
                for h in args["worker_hosts"]
            ]
        self.dashboard_url = f"http://{head_ip}:{settings.dashboard_port}"
        self.client_address = f"ray://{head_ip}:{settings.client_port}"
        self.register_outputs(
            {
                "gcsAddress": self.gcs_address,
                "dashboardUrl": self.dashboard_url,
                "clientAddress": self.client_address,
                "authToken": self.auth_token,
            }
        )
