"""vLLM OpenAI servers: one replica per GPU host, or one server spread over the hosts via Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.config import Parallelism, VllmSettings
from infra.platforms import ServicePlatform
from infra.services import Exposure, HealthCheck, Port, Secret, ServiceSpec, Volume, http_health_check
from runtime.headroom import Need
from runtime.kvcache import engine_args_to_flags

MODEL_CACHE = Volume(name="model-cache", mount_path="/models", size_gi=200)
# Model download and CUDA graph capture on first start take minutes.
STARTUP_GRACE_S = 900
API_SERVER = ("python3", "-m", "vllm.entrypoints.openai.api_server")
PRIORITY_MIDDLEWARE = "runtime.vllm_guard.PriorityFloor"  # issue 32: no client jumps vLLM's queue
RAY_AGENT_PORT = 52367  # distinct from the Ray worker's default agent port on the same host
HEADROOM = ("python3", "-m", "runtime.headroom")  # issue 31: no engine starts without the memory its plan needs


@dataclass(frozen=True)
class ModelServer:
    """One offered model's server on each gpu host (several offered models: compose, replica)."""

    served_name: str
    model: str
    port: int
    engine_args: dict[str, Any]
    memory_limit: str
    headroom: Need | None = None


def with_headroom(command: tuple[str, ...], need: Need | None, host: str) -> tuple[str, ...]:
    """`command` behind the start-time headroom check (runtime.headroom), which execs it when `host` has the
    memory `need` names available and refuses naming the figures otherwise; as it is without a need
    (a discrete GPU's memory is not the host's)."""
    if need is None:
        return command
    figures = ("weights", need.weights), ("kv", need.kv), ("overhead", need.overhead), ("reserve", need.reserve)
    flags = [word for name, value in figures for word in (f"--{name}-bytes", str(value))]
    return (*HEADROOM, "--host-name", host, *flags, "--", *command)


def server_flags(
    settings: VllmSettings,
    host: str,
    port: int,
    engine_args: dict[str, Any],
    model: tuple[str, str] | None = None,
) -> list[str]:
    """vLLM server flags: model, address and port, the sized engine arguments, then raw extra flags.
    `model`: (weights, served name) of an offered model other than the default."""
    weights, served = model if model is not None else (settings.model, settings.served_name)
    head = ["--model", weights, "--served-model-name", served, "--host", host]
    # priority scheduling: the batch worker sends a higher `priority` value, so interactive requests go first;
    # the middleware (our runtime package, in both vLLM images) raises a client's priority below 0 to 0
    head += ["--port", str(port), "--scheduling-policy", "priority", "--middleware", PRIORITY_MIDDLEWARE]
    return [*head, *engine_args_to_flags(engine_args), *settings.extra_args]


def replica_server_names(name: str, host: str, extra_ports: list[int]) -> tuple[str, ...]:
    """The services of one host's replica servers: the default model's, then each other model's by port."""
    return (f"{name}-{host}", *(f"{name}-{host}-{port}" for port in extra_ports))


@dataclass(frozen=True)
class VllmNode:
    """What a container running vLLM's engine or its workers needs: in tensor/pipeline mode the Ray
    worker on the other box runs vLLM's workers, so it needs the same as the server."""

    environment: dict[str, str]
    secrets: tuple[Secret, ...]
    volumes: tuple[Volume, ...]
    memory_limit: str
    rdma: bool = False  # NCCL over RDMA (ncclIbHca): /dev/infiniband, unlimited memlock, IPC_LOCK


# Ray's memory monitor kills workers while vLLM loads weights on unified memory: NVIDIA's two-Spark vLLM
# playbook (dgx-spark-playbooks nvidia/vllm/README.md, "Start Ray head node" / "worker node") turns it off
# with this on every node; Ray's docs (ray-core/scheduling/ray-oom-prevention): 0 disables the monitor.
RAY_MEMORY_MONITOR_OFF = {"RAY_memory_monitor_refresh_ms": "0"}


def link_environment(ifname: str, ib_hca: str) -> dict[str, str]:
    """Every library that opens a socket between the boxes, bound to their direct link, as NVIDIA's
    two-Spark vLLM playbook sets them (dgx-spark-playbooks nvidia/vllm/README.md): NCCL (tensor and
    pipeline traffic), Gloo (torch.distributed's CPU group; vLLM docs serving/distributed_troubleshooting.md:
    it may otherwise bind the hostname's 127.0.1.1 on the host network), TensorPipe (torch RPC) and UCX.
    NCCL_IB_HCA picks the RDMA device of that link (vLLM docs serving/parallelism_scaling.md, InfiniBand)."""
    env = {name: ifname for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES")}
    if ib_hca:
        env["NCCL_IB_HCA"] = ib_hca
    return env


def vllm_node(settings: VllmSettings, hf_token: pulumi.Input[str] | None, memory_limit: str) -> VllmNode:
    env = {"HF_HOME": MODEL_CACHE.mount_path, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    distributed = settings.parallelism is not Parallelism.REPLICA
    if distributed:
        # infra.config requires ncclSocketIfname here: the boxes' direct link.
        env |= link_environment(settings.nccl_socket_ifname, settings.nccl_ib_hca) | RAY_MEMORY_MONITOR_OFF
    secrets = (Secret("HF_TOKEN", pulumi.Output.secret(hf_token)),) if hf_token else ()
    return VllmNode(env, secrets, (MODEL_CACHE,), memory_limit, rdma=distributed and bool(settings.nccl_ib_hca))


class VllmServiceArgs(TypedDict):
    platform: ServicePlatform
    image: pulumi.Input[str]
    hosts: list[str]  # GPU hosts; the first leads in tensor/pipeline mode
    settings: VllmSettings
    engine_args: dict[str, Any]  # from infra.vllm_sizing: the KV policy plus overrides
    hf_token: pulumi.Input[str] | None
    ray_gcs_address: str  # head host:port, used in tensor/pipeline mode
    # tensor/pipeline mode: what the leader needs to join the Ray cluster (its auth token)
    ray_client_environment: NotRequired[dict[str, str]]
    ray_client_secrets: NotRequired[tuple[Secret, ...]]
    # tensor/pipeline mode: the Ray head's service, which the leader waits for (healthy) before it joins
    ray_head_service: NotRequired[str]
    memory_limit: str  # from infra.vllm_sizing: what the engine may use on the host, plus headroom
    # from infra.vllm_sizing.headroom_need: what a host must have available before the default model's server starts
    headroom: NotRequired[Need | None]
    # Several offered models (replica): the offered models after the default, each with its own server on
    # every host, started after the previous model's server there is healthy (vLLM issue 35920).
    more_models: NotRequired[list[ModelServer]]
    # kubernetes: the services whose pods may reach the servers' API port (the load balancer, the batch
    # worker, Prometheus, the post-deploy check); vLLM's key leaves /invocations, /tokenize, ... open.
    clients: NotRequired[tuple[str, ...]]


class VllmService(pulumi.ComponentResource):
    """Outputs `backends`: (name, host:port) per server of the default model, for the load balancer;
    `model_backends`: the same per offered model (served name), the default first."""

    backends: list[tuple[str, str]]
    services_by_host: dict[str, tuple[str, ...]]  # host -> its servers' service names (the change that rolls)
    model_backends: dict[str, list[tuple[str, str]]]
    urls: list[str]
    api_key: pulumi.Output[str]  # vLLM's own key (VLLM_API_KEY): only the load balancer holds it

    def __init__(self, name: str, args: VllmServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:vllm:VllmService", name, None, opts)
        settings, platform = args["settings"], args["platform"]
        if not args["hosts"]:
            raise ValueError(f"{name}: vLLM needs at least one GPU host")
        port = settings.port
        node = vllm_node(settings, args["hf_token"], args["memory_limit"])
        env = node.environment
        # vLLM guards its /v1 routes with it (/health and /metrics stay open for checks and Prometheus):
        # besides binding the cluster address, only the load balancer's requests are served.
        self.api_key = generated_password(f"{name}-api-key", self, length=48)
        server_secrets = (*node.secrets, Secret("VLLM_API_KEY", self.api_key))
        internal = Exposure.INTERNAL  # clients reach vLLM through the load balancer

        def health(host: str, port: int = port) -> HealthCheck:
            probe = platform.probe_address(host, internal)
            return http_health_check(port, host=probe, interval_s=15, start_period_s=STARTUP_GRACE_S)

        def server(
            host: str,
            command: tuple[str, ...],
            *,
            entrypoint: tuple[str, ...] | None = None,
            environment: Mapping[str, pulumi.Input[str]] = env,
            secrets: tuple[Secret, ...] = server_secrets,
        ) -> ServiceSpec:
            return ServiceSpec(
                name=f"{name}-{host}",
                host=host,
                image=args["image"],
                entrypoint=entrypoint,
                command=command,
                ports=(Port(port, port),),
                healthcheck=health(host),
                environment=environment,
                secrets=secrets,
                volumes=node.volumes,
                gpu=True,
                memory_limit=node.memory_limit,
                shm_size="16g",
                stateful=False,
                admitted=args.get("clients"),
            )

        def flags(host: str) -> list[str]:
            return server_flags(settings, platform.bind_address(host, internal), port, args["engine_args"])

        more = args.get("more_models", [])
        if more and settings.parallelism is not Parallelism.REPLICA:
            raise ValueError(f"{name}: several offered models need parallelism replica")
        if settings.parallelism is Parallelism.REPLICA:
            servers = args["hosts"]
            for host in servers:
                command = with_headroom((*API_SERVER, *flags(host)), args.get("headroom"), host)
                platform.deploy(server(host, command), parent=self)
            for host in servers:
                names = replica_server_names(name, host, [extra.port for extra in more])
                for previous, own, extra in zip(names[:-1], names[1:], more, strict=True):
                    bind = platform.bind_address(host, internal)
                    model_flags = server_flags(
                        settings, bind, extra.port, extra.engine_args, model=(extra.model, extra.served_name)
                    )
                    platform.deploy(
                        dataclasses.replace(
                            server(host, with_headroom((*API_SERVER, *model_flags), extra.headroom, host)),
                            name=own,
                            ports=(Port(extra.port, extra.port),),
                            healthcheck=health(host, extra.port),
                            memory_limit=extra.memory_limit,
                            # One after another on a host: vLLMs starting at once race in memory profiling
                            # (vLLM issue 35920), so each waits for the previous model's server to be healthy.
                            depends_on=(previous,),
                        ),
                        parent=self,
                    )
        else:
            leader = args["hosts"][0]
            servers = [leader]
            size = str(len(args["hosts"]))
            size_flag = (
                "--tensor-parallel-size" if settings.parallelism is Parallelism.TENSOR else "--pipeline-parallel-size"
            )
            distributed_flags = ("--distributed-executor-backend", "ray", size_flag, size)
            # The leader's share of the model (the plan is per gpu host) is checked once Ray has joined.
            serve = " ".join(
                with_headroom((*API_SERVER, *flags(leader), *distributed_flags), args.get("headroom"), leader)
            )
            bind_ip = platform.internal_host(leader, name)
            join = (
                f"ray start --address={args['ray_gcs_address']} --node-ip-address={bind_ip} --num-gpus=1 "
                f"--dashboard-agent-listen-port={RAY_AGENT_PORT}"
            )
            head = args.get("ray_head_service")
            platform.deploy(
                dataclasses.replace(
                    server(
                        leader,
                        (f"{join} && exec {serve}",),
                        entrypoint=("/bin/bash", "-c"),
                        environment={**env, **args.get("ray_client_environment", {}), "VLLM_HOST_IP": bind_ip},
                        secrets=(*server_secrets, *args.get("ray_client_secrets", ())),
                    ),
                    # `ray start --address` fails when the head is not up yet; on the head's host compose waits
                    # for its health check, on another host that host's project comes up first.
                    depends_on=(head,) if head else (),
                    rdma=node.rdma,
                ),
                parent=self,
            )
        if settings.parallelism is Parallelism.REPLICA:
            ports = [extra.port for extra in more]
            self.services_by_host = {h: tuple(replica_server_names(name, h, ports)) for h in servers}
        else:
            self.services_by_host = {h: (f"{name}-{h}",) for h in servers}
        self.backends = [(h, platform.internal_address(h, port, f"{name}-{h}")) for h in servers]
        self.model_backends = {settings.served_name: self.backends}
        for extra in more:
            self.model_backends[extra.served_name] = [
                (h, platform.internal_address(h, extra.port, f"{name}-{h}-{extra.port}")) for h in servers
            ]
        self.urls = [f"http://{address}/v1" for backends in self.model_backends.values() for _, address in backends]
        self.register_outputs({"urls": self.urls})
