"""Typed stack configuration, read once and validated before any resource is declared.

Every key lives under the project namespace (`vllm-gb10:<key>`) and has a default here as well as
in Pulumi.yaml (Pulumi's mock runtime does not apply Pulumi.yaml defaults; a test keeps the two
equal). A bad value raises `ConfigError` naming the stack file and the key, e.g.
`Pulumi.stella.yaml: vllm-gb10:hosts[1].address: Field required`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from infra.render.haproxy import check_balance_factor

PROJECT = "vllm-gb10"

RawReader = Callable[[str], "str | None"]
"""Looks up one raw config value by its bare key (no namespace); None when unset."""


class ConfigError(ValueError):
    """A stack configuration value is missing or wrong; the message names file and key."""


class Role(StrEnum):
    """What a host runs. Singleton roles must be held by exactly one host."""

    GPU = "gpu"
    RAY_HEAD = "ray-head"
    DATA = "data"
    LB = "lb"
    BATCH = "batch"


SINGLETON_ROLES = (Role.RAY_HEAD, Role.DATA, Role.LB, Role.BATCH)

# Raw flags end up in plain text: the stack file, the rendered compose file / manifest, and Pulumi state.
# What looks like a secret there is refused, naming where the secret belongs instead.
SECRET_FLAGS = {
    "--api-key": "vLLM's own key is not how this platform authenticates: the servers bind the cluster address "
    "and are reached through the load balancer",
    "--hf-token": "set it with `pulumi config set --secret hfToken`",
}
SECRET_VALUES = (
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "a Hugging Face token: set it with `pulumi config set --secret hfToken`"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "an API key: keys never go in a stack file"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URL with a password: credentials never go in a stack file"),
)


def refuse_secret_literals(args: list[str]) -> list[str]:
    """Raise naming the first raw argument that looks like a secret (a flag that takes one, or its shape)."""
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in SECRET_FLAGS:
            raise ValueError(f"[{i}] {flag} takes a secret, which would be stored in plain text; {SECRET_FLAGS[flag]}")
        for pattern, what in SECRET_VALUES:
            if pattern.search(arg):
                raise ValueError(f"[{i}] looks like {what}")
    return args


class Parallelism(StrEnum):
    """How the model is spread over the GPU hosts."""

    REPLICA = "replica"  # one vLLM server per GPU host, behind the load balancer
    TENSOR = "tensor"  # one vLLM server across all GPU hosts, tensor parallel over Ray
    PIPELINE = "pipeline"  # one vLLM server across all GPU hosts, pipeline parallel over Ray


class Platform(StrEnum):
    COMPOSE = "compose"
    KUBERNETES = "kubernetes"


_HOST_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*$")
_NAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Host(_Frozen):
    """One GB10 box reached over SSH (compose platform)."""

    name: Annotated[str, Field(pattern=_NAME)]
    address: Annotated[str, Field(min_length=1, description="SSH address (hostname or IP)")]
    cluster_address: Annotated[
        ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        Field(alias="clusterAddress", description="IP the services bind to and reach each other on"),
    ] = None
    public_address: Annotated[
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        Field(
            alias="publicAddress",
            description=(
                "IP the public endpoints (load balancer, batch API, Grafana) bind to; 0.0.0.0: every interface."
            ),
        ),
    ] = ipaddress.IPv4Address("0.0.0.0")
    ssh_user: Annotated[str, Field(alias="sshUser", min_length=1)] = "ubuntu"
    ssh_port: Annotated[int, Field(alias="sshPort", ge=1, le=65535)] = 22
    host_key: Annotated[str, Field(alias="hostKey", description="pinned SSH host public key")]
    private_key_secret: Annotated[str, Field(alias="privateKeySecret")] = "sshPrivateKey"
    roles: Annotated[frozenset[Role], Field(min_length=1)]

    @field_validator("host_key")
    @classmethod
    def _host_key_shape(cls, value: str) -> str:
        if not _HOST_KEY.match(value.strip()):
            raise ValueError(
                "must be one public key line such as 'ssh-ed25519 AAAA…' (get it with: ssh-keyscan -t ed25519 HOST)"
            )
        return value.strip()

    @property
    def bind_ip(self) -> str:
        """The IP that internal services bind to on this host."""
        if self.cluster_address is not None:
            return str(self.cluster_address)
        return str(ipaddress.ip_address(self.address))


def _key(alias: str, default: Any, description: str, **constraints: Any) -> Any:
    return Field(default, alias=alias, description=description, **constraints)


class ImageSettings(_Frozen):
    registry: str = _key("registry", "registry.lan:5000", "Registry the images are pushed to and pulled from.")
    registry_username: str = _key("registryUsername", "", "Registry user; empty for a registry without auth.")
    image_tag: str = _key("imageTag", "0.1.0", "Tag of the images built by this stack.", pattern=r"^[\w][\w.-]{0,127}$")
    vllm_version: str = _key(
        "vllmVersion",
        "0.32.0",
        "vLLM release of the GB10 image: its prebuilt base must carry it (checked at build); the source build "
        "compiles tag v<version>. The tests parse our command lines with this version's CPU build.",
        pattern=r"^\d+\.\d+\.\d+$",
    )
    cuda_arch: str = _key(
        "cudaArch", "12.1", "CUDA compute capability the source build compiles for (GB10: 12.1); prebuilt: unused."
    )
    builder: str = _key("imageBuilder", "", "buildx builder to use (e.g. a remote arm64 builder); empty: default.")
    vllm_dockerfile: str = _key(
        "vllmDockerfile",
        "images/Dockerfile.gb10",
        "Dockerfile of the vLLM image (path from the project root); a local stack builds images/Dockerfile.cpu.",
        pattern=r"^[\w.-][\w./-]*$",
    )
    pull_by_digest: bool = _key(
        "pullByDigest",
        True,
        "Pull third-party images by tag and digest; false: by tag only (a local stack whose stand-ins carry the tags).",
    )
    platform: str = _key(
        "imagePlatform",
        "linux/arm64",
        "Platform the images are built for (GB10: linux/arm64); empty: the building machine's own.",
        pattern=r"^$|^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$",
    )

    @field_validator("image_tag")
    @classmethod
    def _not_latest(cls, value: str) -> str:
        if value == "latest":
            raise ValueError("'latest' is not a pinned tag; use a version such as 0.1.0")
        return value


class OfferedModel(_Frozen):
    """One more model the stack offers besides the default `model` (an entry of `models`)."""

    model: str = _key("model", ..., "Hugging Face model id (or path) of the weights.", min_length=1)
    served_model_name: str = _key("servedModelName", "", "Model name clients send; empty: the model id.")
    model_config_file: str = _key(
        "modelConfigFile",
        "",
        "The model's config.json (path from the project root) for KV sizing; empty: the bundled catalog.",
    )

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


class VllmSettings(_Frozen):
    model: str = _key("model", "Qwen/Qwen3-4B", "Hugging Face model id served by vLLM.", min_length=1)
    served_model_name: str = _key("servedModelName", "", "Model name clients send; empty: the model id.")
    model_config_file: str = _key(
        "modelConfigFile",
        "",
        "The model's config.json (path from the project root) for KV sizing; empty: the bundled catalog.",
    )
    host_profile: str = _key(
        "hostProfile",
        "gb10",
        "KV policy host profile of the GPU hosts: gb10 (128 GB), gb10-64 (64 GB), h100, rtx4090, rtx4080; "
        "the preflight refuses a GB10 whose memory is not its profile's.",
    )
    max_model_len: int = _key("maxModelLen", 8192, "Context length per sequence.", ge=256)
    max_num_seqs: int = _key(
        "maxNumSeqs", 64, "Target concurrent sequences per vLLM server; the KV policy sizes for it.", ge=1
    )
    gpu_memory_utilization: float = _key(
        "gpuMemoryUtilization",
        0.0,
        "Override: share of GPU memory vLLM may use; 0: the KV policy's (0.85 on GB10).",
        ge=0.0,
        le=0.95,
    )
    kv_cache_dtype: Literal["", "auto", "fp8"] = _key(
        "kvCacheDtype", "", "Override: KV cache dtype auto or fp8; empty: the KV policy decides."
    )
    kv_cache_memory_bytes: int = _key(
        "kvCacheMemoryBytes", 0, "Override: KV cache size in bytes; 0: the KV policy's.", ge=0
    )
    parallelism: Parallelism = _key(
        "parallelism",
        Parallelism.REPLICA,
        "replica: one server per GPU host; tensor or pipeline: one server over all GPU hosts via Ray.",
    )
    port: int = _key("vllmPort", 8000, "Port of each vLLM OpenAI server.", ge=1, le=65535)
    nccl_socket_ifname: str = _key(
        "ncclSocketIfname",
        "",
        "tensor/pipeline (required there): the boxes' direct link (e.g. enp1s0f1np1), for NCCL, Gloo, "
        "TensorPipe and UCX on every Ray node of vLLM.",
        pattern=r"^[\w.,^=-]*$",
    )
    nccl_ib_hca: str = _key(
        "ncclIbHca",
        "",
        "tensor/pipeline: the RDMA device(s) of that link for NCCL (e.g. rocep1s0f1); set, vLLM's nodes get "
        "/dev/infiniband, unlimited memlock and IPC_LOCK; empty: NCCL over sockets.",
        pattern=r"^[\w.,:^=-]*$",
    )
    extra_args: list[str] = _key("vllmExtraArgs", [], "Raw extra vLLM CLI flags, appended last (overrides).")

    @field_validator("extra_args")
    @classmethod
    def _no_secret_literals(cls, value: list[str]) -> list[str]:
        return refuse_secret_literals(value)

    memory_limit: str = _key(
        "vllmMemoryLimit",
        "",
        "Container memory limit of vLLM; empty: its gpu_memory_utilization share of the host plus 4 GiB.",
        pattern=r"^(\d+[kmg])?$",
    )

    memory_reserve_gib: float = _key(
        "memoryReserveGib",
        12.0,
        "Memory a unified-memory gpu host must keep available beyond what a vLLM engine's plan needs (weights, KV, "
        "overhead): each engine's start-time headroom check refuses to start short of the sum.",
        ge=0.0,
    )

    models: list[OfferedModel] = _key(
        "models",
        [],
        "Extra models the stack offers besides model (offered: model first, then these), each "
        "{model, servedModelName?, modelConfigFile?}; compose and parallelism replica only: each gets its own vLLM "
        "server on every gpu host, at vllmPort + its position (1, 2, ...), sized together with the others.",
    )

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def offered(self) -> tuple[OfferedModel, ...]:
        """Every model the stack offers: the default (`model`) first, then `models`."""
        default = OfferedModel(
            model=self.model, served_model_name=self.served_model_name, model_config_file=self.model_config_file
        )
        return (default, *self.models)


class DataSettings(_Frozen):
    redis_port: int = _key("redisPort", 6379, "Redis port.", ge=1, le=65535)
    redis_maxmemory_percent: int = _key(
        "redisMaxMemoryPercent",
        75,
        "Redis maxmemory as a share of its container's memory limit; full, it refuses writes (noeviction), and "
        "the batch API refuses new work near it.",
        ge=10,
        le=90,
    )
    postgres_port: int = _key("postgresPort", 5432, "Postgres port.", ge=1, le=65535)
    postgres_db: str = _key("postgresDb", "llm", "Postgres database.", pattern=r"^[a-z_][a-z0-9_]*$")
    postgres_user: str = _key("postgresUser", "llm", "Postgres user.", pattern=r"^[a-z_][a-z0-9_]*$")
    minio_port: int = _key("minioPort", 9000, "MinIO S3 API port.", ge=1, le=65535)
    minio_console_port: int = _key("minioConsolePort", 9001, "MinIO console port.", ge=1, le=65535)
    bucket: str = _key(
        "batchBucket", "batch", "Bucket for batch inputs and results.", pattern=r"^[a-z0-9][a-z0-9.-]{2,62}$"
    )
    result_retention_days: int = _key(
        "resultRetentionDays",
        7,
        "Days before batch results expire: the worker's expiry sweep deletes them, the bucket's lifecycle rule "
        "is a second line.",
        ge=1,
        le=7,
    )
    public: bool = _key(
        "publicDataServices",
        False,
        "Bind Redis, Postgres and MinIO to each host's publicAddress, not its cluster address (policy exception).",
    )


class LoadBalancerSettings(_Frozen):
    port: int = _key("lbPort", 8080, "Load balancer port for OpenAI clients.", ge=1, le=65535)
    stats_port: int = _key("lbStatsPort", 8404, "HAProxy stats page and /metrics (internal).", ge=1, le=65535)
    balance_factor: int = _key(
        "lbBalanceFactor",
        150,
        "hash-balance-factor: a backend above this % of the mean load spills sessions; 0: no bound.",
    )

    @field_validator("balance_factor")
    @classmethod
    def _one_balance_factor_rule(cls, value: int) -> int:
        return check_balance_factor(value)  # the renderer's and the CLI's rule

    session_header: str = _key(
        "lbSessionHeader", "X-Session-ID", "Header that carries the session key.", pattern=r"^[A-Za-z0-9-]+$"
    )
    drain_timeout_s: int = _key(
        "lbDrainTimeoutSeconds",
        600,
        "Rolling change: how long a host's vLLM servers drain (requests in flight finish) before they stop.",
        ge=0,
        le=86400,
    )


class RaySettings(_Frozen):
    gcs_port: int = _key("rayGcsPort", 6380, "Ray GCS port on the head.", ge=1, le=65535)
    dashboard_port: int = _key("rayDashboardPort", 8265, "Ray dashboard and Jobs API port.", ge=1, le=65535)
    client_port: int = _key("rayClientPort", 10001, "Ray client (ray://) port.", ge=1, le=65535)
    metrics_port: int = _key("rayMetricsPort", 8090, "Prometheus metrics port of each Ray node.", ge=1, le=65535)


class BatchServiceSettings(_Frozen):
    api_port: int = _key("batchApiPort", 8100, "Batch API port.", ge=1, le=65535)
    engine: Literal["http", "offline"] = _key(
        "batchEngine", "http", "http: vLLM pool via the load balancer; offline: in-process vLLM."
    )
    chunk_size: int = _key(
        "batchChunkSize", 100, "Requests per checkpointed chunk at a job's start (chunks then grow).", ge=1, le=10000
    )
    chunk_size_max: int = _key(
        "batchChunkSizeMax", 1000, "Largest chunk: chunks grow to 2% of the requests before them, up to this.",
        ge=1, le=10000,
    )  # fmt: skip
    concurrency: int = _key("batchConcurrency", 64, "In-flight requests the worker keeps at the engine.", ge=1)
    request_priority: int = _key(
        "batchRequestPriority", 10, "http engine: vLLM priority of batch requests (interactive traffic is 0).", ge=0
    )
    model_wait_seconds: int = _key(
        "batchModelWaitSeconds",
        3600,
        "A batch job whose model is not served (swapped, no longer offered) waits this long, then fails naming it.",
        ge=1,
    )


class MonitoringSettings(_Frozen):
    prometheus_port: int = _key("prometheusPort", 9090, "Prometheus port (internal).", ge=1, le=65535)
    grafana_port: int = _key("grafanaPort", 3000, "Grafana port (public: the dashboards).", ge=1, le=65535)
    retention_days: int = _key("prometheusRetentionDays", 15, "Days of metrics Prometheus keeps.", ge=1, le=365)
    scrape_interval_s: int = _key("scrapeIntervalSeconds", 15, "Prometheus scrape interval.", ge=5, le=300)


ShedRole = Literal["ray-worker", "batch-worker", "vllm"]


class MemoryGuardSettings(_Frozen):
    """The memory guard on each GPU host (runtime.memguard; README "The memory guard" justifies the defaults)."""

    port: int = _key("memguardPort", 9105, "Memory guard /metrics port on each GPU host (internal).", ge=1, le=65535)
    pause_available_gib: int = _key(
        "memguardPauseAvailableGib",
        8,
        "Memory guard: under this much MemAvailable (GiB) the host's batch workers claim no new job.",
        ge=1,
    )
    shed_available_gib: int = _key(
        "memguardShedAvailableGib",
        4,
        "Memory guard: under this much MemAvailable (GiB) it stops the next container of memguardShed.",
        ge=1,
    )
    recover_available_gib: int = _key(
        "memguardRecoverAvailableGib",
        12,
        "Memory guard: MemAvailable (GiB) the host must be back over, memguardRecoverSeconds long, to resume.",
        ge=1,
        validate_default=True,  # the order check runs when only the other two are set
    )
    pause_psi_some: int = _key(
        "memguardPausePsiSome",
        20,
        "Memory guard: PSI memory 'some avg10' (percent) over which it pauses, as under memguardPauseAvailableGib.",
        ge=1,
        le=100,
    )
    shed_psi_full: int = _key(
        "memguardShedPsiFull",
        10,
        "Memory guard: PSI memory 'full avg10' (percent) over which it sheds, as under memguardShedAvailableGib.",
        ge=1,
        le=100,
    )
    recover_seconds: int = _key(
        "memguardRecoverSeconds",
        30,
        "Memory guard: how long the host must stay clear (by the margins) before each step back down a level.",
        ge=1,
        le=3600,
    )
    shed: list[ShedRole] = _key(
        "memguardShed",
        ["ray-worker", "batch-worker"],
        "Memory guard (compose): what it stops, first first: ray-worker (the offload node), batch-worker (the "
        "offline engine; an http worker is never stopped), vllm (the host's vLLM servers: only if listed). "
        "Data services cannot be named; []: it pauses, never sheds.",
    )

    @field_validator("recover_available_gib")
    @classmethod
    def _ordered(cls, value: int, info: ValidationInfo) -> int:
        pause, shed = info.data.get("pause_available_gib"), info.data.get("shed_available_gib")
        if pause is not None and shed is not None and not shed < pause < value:
            raise ValueError(
                f"memguardShedAvailableGib ({shed}) < memguardPauseAvailableGib ({pause}) < "
                f"memguardRecoverAvailableGib ({value}) must hold: the guard sheds below pause and resumes above it"
            )
        return value

    @field_validator("shed")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"names a role twice: {value}")
        return value


class KubernetesSettings(_Frozen):
    """Where the kubernetes platform puts things: the cluster, namespace, GB10 node and ingress."""

    kubeconfig: str = _key("kubeconfig", "", "kubernetes: kubeconfig file; empty: $KUBECONFIG or ~/.kube/config.")
    context: str = _key("kubeContext", "", "kubernetes: kubeconfig context; empty: the current one.")
    namespace: str = _key(
        "namespace",
        "app-cognition",
        "kubernetes: namespace of every object.",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    gpu_node_label_key: str = _key(
        "gpuNodeLabelKey", "kubernetes.io/hostname", "kubernetes: node label that picks the GB10 node.", min_length=1
    )
    gpu_node_label_value: str = _key(
        "gpuNodeLabelValue", "hw-brain-01", "kubernetes: value of that label on the GB10 node.", min_length=1
    )
    storage_class: str = _key("storageClass", "", "kubernetes: StorageClass of the PVCs; empty: the default one.")
    ingress_class: str = _key(
        "ingressClass",
        "",
        "kubernetes: IngressClass of the public endpoints' Ingress; empty: the cluster's default class.",
        pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    gateway_name: str = _key(
        "gatewayName",
        "",
        "kubernetes: Gateway (Gateway API) the public endpoints attach to as HTTPRoutes; empty: one Ingress.",
        pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    gateway_namespace: str = _key(
        "gatewayNamespace",
        "",
        "kubernetes: namespace of that Gateway; empty: the stack's namespace.",
        pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    ingress_domain: str = _key(
        "ingressDomain",
        "cognition.lan",
        "kubernetes: public endpoints are <service>.<ingressDomain> (load balancer, batch API).",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    kuberay_version: str = _key(
        "kuberayVersion",
        "1.7.0",
        "kubernetes: KubeRay operator Helm chart version (1.5.1 or later: Ray token auth); the RayCluster is "
        "checked against this release's CRD (tests/unit/crds).",
        pattern=r"^\d+\.\d+\.\d+$",
    )
    vllm_image_digest: str = _key(
        "vllmImageDigest",
        "",
        "kubernetes: digest (sha256:…) the vllm-gb10 image is pulled by; required there. "
        "From stack stella's output vllmImage, after the @.",
        pattern=r"^$|^sha256:[0-9a-f]{64}$",
    )
    runtime_image_digest: str = _key(
        "runtimeImageDigest",
        "",
        "kubernetes: digest (sha256:…) the vllm-gb10-runtime image is pulled by; required there. "
        "From stack stella's output runtimeImage, after the @.",
        pattern=r"^$|^sha256:[0-9a-f]{64}$",
    )

    @field_validator("vllm_image_digest", "runtime_image_digest")
    @classmethod
    def _not_all_zero(cls, value: str) -> str:
        """sha256:000…0 is the shape of a digest, not one: a placeholder left in the stack file would pass
        the pattern and fail only when the kubelet cannot pull it, after the rest of the stack is up."""
        if value and set(value.removeprefix("sha256:")) == {"0"}:
            raise ValueError(
                "the all-zero digest is a placeholder, not an image: set the digest stack stella pushed "
                "(pulumi stack output vllmImage / runtimeImage --stack stella, the part after @)"
            )
        return value


class HostOpsSettings(_Frozen):
    min_free_disk_gb: int = _key("minFreeDiskGb", 100, "Preflight: free disk needed on each host (GB).", ge=1)
    remote_dir: str = _key(
        "remoteDir",
        "/opt/vllm-gb10",
        "Directory on each host for compose files; each host's project is in <remoteDir>/<host>.",
        pattern=r"^/[\w./-]+$",
    )


class TlsSettings(_Frozen):
    names: list[str] = _key(
        "tlsNames",
        [],
        "Extra DNS names or IPs the generated certificate covers (hosts' names and addresses always are).",
    )

    @field_validator("names")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9*][A-Za-z0-9.*:-]*", name):
                raise ValueError(f"{name!r} is not a DNS name or an IP address")
        return value


GROUPS: dict[str, type[_Frozen]] = {
    "image": ImageSettings,
    "vllm": VllmSettings,
    "data": DataSettings,
    "lb": LoadBalancerSettings,
    "ray": RaySettings,
    "batch": BatchServiceSettings,
    "monitoring": MonitoringSettings,
    "memguard": MemoryGuardSettings,
    "k8s": KubernetesSettings,
    "ops": HostOpsSettings,
    "tls": TlsSettings,
}

SECRET_KEYS: dict[str, str] = {
    "sshPrivateKey": "SSH private key for the hosts (PEM/OpenSSH text).",
    "hfToken": "Hugging Face token for gated models.",
    "registryPassword": "Registry password or token; unused when registryUsername is empty.",
    "tlsCertificate": "PEM certificate (chain) of the public endpoints; unset: one from a CA generated for the LAN.",
    "tlsPrivateKey": "PEM private key of tlsCertificate; set both or neither.",
}


class StackConfig(_Frozen):
    """The whole stack configuration, handed to the program and its components."""

    stack: str
    platform: Platform
    hosts: tuple[Host, ...]
    image: ImageSettings
    vllm: VllmSettings
    data: DataSettings
    lb: LoadBalancerSettings
    ray: RaySettings
    batch: BatchServiceSettings
    monitoring: MonitoringSettings
    memguard: MemoryGuardSettings
    k8s: KubernetesSettings
    ops: HostOpsSettings
    tls: TlsSettings

    def hosts_with(self, role: Role) -> list[Host]:
        return [h for h in self.hosts if role in h.roles]

    def host_with(self, role: Role) -> Host:
        (host,) = self.hosts_with(role)
        return host


def stack_file(stack: str) -> str:
    return f"Pulumi.{stack}.yaml"


def schema_entries() -> Iterator[tuple[str, str, Any, str, bool]]:
    """(key, Pulumi type, default, description, secret) for every primitive key, for Pulumi.yaml."""
    yield "platform", "string", Platform.COMPOSE.value, "compose (GB10 hosts over SSH) or kubernetes.", False
    for model in GROUPS.values():
        for field in model.model_fields.values():
            if _is_object_list(field.annotation):
                continue  # Pulumi.yaml cannot type a list of objects (like hosts): see object_keys()
            yield _alias(field), _pulumi_type(field.annotation), _plain(field.default), field.description or "", False
    for key, description in SECRET_KEYS.items():
        yield key, "string", None, description, True


def _alias(field: FieldInfo) -> str:
    """A config field's stack key (every field is declared with one, by `_key`)."""
    if field.alias is None:
        raise TypeError(f"config field without a stack key: {field!r}")
    return field.alias


def _pulumi_type(annotation: Any) -> str:
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if get_origin(annotation) is list:
        return "array"
    return "string"


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return str(value)
    return value


def _is_structured(annotation: Any) -> bool:
    return get_origin(annotation) in (list, dict) or any(get_origin(a) in (list, dict) for a in get_args(annotation))


def _is_object_list(annotation: Any) -> bool:
    args = get_args(annotation)
    return (
        get_origin(annotation) is list
        and len(args) == 1
        and isinstance(args[0], type)
        and issubclass(args[0], BaseModel)
    )


def object_keys() -> dict[str, FieldInfo]:
    """Keys whose value is a list of objects (besides hosts): typed here, not in Pulumi.yaml."""
    return {
        _alias(field): field
        for model in GROUPS.values()
        for field in model.model_fields.values()
        if _is_object_list(field.annotation)
    }


def known_keys() -> set[str]:
    return {key for key, *_ in schema_entries()} | {"hosts"} | set(object_keys())


def load(read: RawReader, stack: str, present_keys: Iterable[str] = ()) -> StackConfig:
    """Build the StackConfig from raw values; raise ConfigError naming file and key.

    `present_keys` are the project keys set in the stack; one we do not know (a typo) is an
    error rather than a silently ignored setting. Hosts' private-key secret names are allowed.
    """
    where = stack_file(stack)
    groups: dict[str, Any] = {}
    for group, model in GROUPS.items():
        raw: dict[str, Any] = {}
        for field in model.model_fields.values():
            key = _alias(field)
            value = read(key)
            if value is None:
                continue
            raw[key] = _decode(value, field.annotation, where, key)
        groups[group] = _validate(model, raw, where, prefix="")
    platform_raw = read("platform")
    hosts_raw = _decode(read("hosts") or "[]", list, where, "hosts")
    if not isinstance(hosts_raw, list):
        raise ConfigError(f"{where}: {PROJECT}:hosts: must be a list of host objects")
    hosts = tuple(_validate(Host, entry, where, prefix=f"hosts[{i}].") for i, entry in enumerate(hosts_raw))
    _check_unknown_keys(set(present_keys), {h.private_key_secret for h in hosts}, where)
    try:
        platform = Platform(platform_raw or Platform.COMPOSE)
    except ValueError:
        choices = ", ".join(p.value for p in Platform)
        raise ConfigError(f"{where}: {PROJECT}:platform: {platform_raw!r} is not one of {choices}") from None
    config = StackConfig(stack=stack, platform=platform, hosts=hosts, **groups)
    _check_topology(config, where, read)
    return config


def _check_unknown_keys(present: set[str], host_secret_keys: set[str], where: str) -> None:
    allowed = known_keys() | host_secret_keys
    for key in sorted(present - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: {PROJECT}:{key}: unknown configuration key{hint}")


def _decode(value: str, annotation: Any, where: str, key: str) -> Any:
    if not (annotation is list or _is_structured(annotation)):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: {PROJECT}:{key}: not valid JSON/YAML structure ({err.msg})") from None


def _validate(model: type[_Frozen], raw: Any, where: str, prefix: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        path = prefix.rstrip(".")
        loc = list(first["loc"])
        if loc and loc[0] in model.model_fields:  # a default validated (validate_default) is named by its field
            loc[0] = model.model_fields[str(loc[0])].alias or loc[0]
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
        raise ConfigError(f"{where}: {PROJECT}:{path}: {first['msg']}") from None


def _check_topology(config: StackConfig, where: str, read: RawReader) -> None:
    """Cross-key rules: roles, unique names, IPs to bind to, secrets the hosts name."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{where}: {PROJECT}:{key}: {message}")

    _check_offered_models(config, fail)
    if config.platform is Platform.COMPOSE and not config.hosts:
        fail("hosts", "the compose platform needs at least one host")
    if config.platform is Platform.KUBERNETES:
        if config.hosts:
            fail("hosts", "the kubernetes platform places services itself; remove hosts (use gpuNodeLabelValue)")
        if config.vllm.parallelism is not Parallelism.REPLICA:
            fail("parallelism", "the kubernetes platform runs one vLLM replica on the GB10 node; use 'replica'")
        return
    names = [h.name for h in config.hosts]
    for i, name in enumerate(names):
        if name in names[:i]:
            fail(f"hosts[{i}].name", f"duplicate host name {name!r}")
    for i, host in enumerate(config.hosts):
        try:
            host.bind_ip  # noqa: B018 - evaluated for its check
        except ValueError:
            fail(
                f"hosts[{i}].clusterAddress",
                f"required when address {host.address!r} is a hostname: docker binds ports to an IP",
            )
        if read(host.private_key_secret) is None:
            fail(
                f"hosts[{i}].privateKeySecret",
                f"names config key {host.private_key_secret!r}, which is not set "
                f"(pulumi config set --secret {host.private_key_secret} < ~/.ssh/id_ed25519)",
            )
    for role in SINGLETON_ROLES:
        count = len(config.hosts_with(role))
        if count != 1:
            fail("hosts", f"exactly one host must have role {role.value!r} (found {count})")
    gpu_hosts = config.hosts_with(Role.GPU)
    if not gpu_hosts:
        fail("hosts", "at least one host must have role 'gpu'")
    if config.vllm.parallelism is not Parallelism.REPLICA and len(gpu_hosts) < 2:
        fail("parallelism", f"{config.vllm.parallelism.value} parallel needs two or more 'gpu' hosts")
    if config.vllm.parallelism is not Parallelism.REPLICA and not config.vllm.nccl_socket_ifname:
        # On a multi-homed box with host networking NCCL and Gloo pick an interface themselves, and Gloo may
        # take the hostname's 127.0.1.1: the boxes never meet (vLLM docs, distributed_troubleshooting.md).
        fail(
            "ncclSocketIfname",
            f"required with parallelism {config.vllm.parallelism.value} over {len(gpu_hosts)} gpu hosts: the name "
            "of the network interface of the boxes' direct link (e.g. enp1s0f1np1, see `ibdev2netdev` or "
            "`ip -br addr` on each box); NCCL, Gloo, TensorPipe and UCX are bound to it",
        )
    if config.image.registry_username and read("registryPassword") is None:
        fail("registryPassword", "required when registryUsername is set")
    if (read("tlsCertificate") is None) != (read("tlsPrivateKey") is None):
        fail("tlsCertificate", "tlsCertificate and tlsPrivateKey go together: set both, or neither for a generated CA")


# What a served model name may hold when several are offered: the load balancer matches it in its
# routing rules and Lua service, where spaces, quotes and backslashes would need escaping.
SERVED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def _check_offered_models(config: StackConfig, fail: Callable[[str, str], None]) -> None:
    """Served names are unique over every offered model. Several offered models are served by one vLLM
    server each on every gpu host (compose, parallelism replica), behind the load balancer's routing on
    the request's `model`; kubernetes and tensor/pipeline parallelism run one vLLM server, so they are
    refused there."""
    offered = config.vllm.offered
    for i, entry in enumerate(config.vllm.models):
        earlier = [m.served_name for m in offered[: i + 1]]  # the default, then models[0..i-1]
        if entry.served_name in earlier:
            first = earlier.index(entry.served_name)
            owner = "the default model's (model/servedModelName)" if first == 0 else f"that of models[{first - 1}]"
            fail(
                f"models[{i}].servedModelName",
                f"served model name {entry.served_name!r} is already {owner}; give each offered model its own",
            )
    if len(offered) < 2:
        return
    if config.platform is Platform.KUBERNETES:
        fail(
            "models",
            f"{len(offered)} offered models: the kubernetes platform runs one vLLM Deployment, for the default "
            f"model ({config.vllm.served_name!r}), on the GB10 node; several offered models need the compose "
            f"platform (one vLLM server per model on each gpu host); remove {PROJECT}:models",
        )
    if config.vllm.parallelism is not Parallelism.REPLICA:
        fail(
            "models",
            f"{len(offered)} offered models with {PROJECT}:parallelism {config.vllm.parallelism.value}: one vLLM "
            f"server spans every gpu host, for the default model ({config.vllm.served_name!r}) only; several "
            f"offered models need parallelism replica (one server per model on each gpu host)",
        )
    for i, entry in enumerate(offered):
        if not SERVED_NAME_PATTERN.match(entry.served_name):
            key = "servedModelName" if i == 0 else f"models[{i - 1}].servedModelName"
            fail(
                key,
                f"served model name {entry.served_name!r}: with several offered models the load balancer routes "
                f"on it, so it may hold only letters, digits and . _ : / @ + - (set servedModelName)",
            )
