"""HAProxy in front of the vLLM servers: sticky sessions with bounded load and failover, API keys.

Clients need a key. The stack's own keys (the operator's, output loadBalancerApiKey, and the batch
worker's) are in a rendered map of digests. Users' keys live in a keys directory with HAProxy's
admin socket, managed with `python -m runtime.lbkeys` and applied at once: on compose a directory
beside the project (`lb-keys/api-keys.map`); on kubernetes a volume of the pod, shared with the
sidecar `keys` (our runtime image, as HAProxy's uid), which seeds the map before HAProxy starts
and in which `kubectl exec` runs the CLI. vLLM's own key reaches HAProxy as a secret variable.
"""

from __future__ import annotations

import posixpath
from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.components.tls import TLS_DIR, ServerTls, write_pem_files
from infra.config import LoadBalancerSettings
from infra.platforms import ServicePlatform
from infra.render.haproxy import (
    GENERATION_TIMEOUT_S,
    Backend,
    LoadBalancerConfig,
    ModelRoute,
    render_haproxy_cfg,
    render_models_lua,
)
from infra.services import (
    ConfigFile,
    Exposure,
    HealthCheck,
    HostPath,
    Port,
    Reload,
    Secret,
    ServiceSpec,
    Sidecar,
    Volume,
    host_port,
)
from runtime import lbkeys

# HAProxy 3.2 LTS, patch 3.2.24 (Alpine variant); digest as pinned in a public project (one source
# seen: verify with `docker buildx imagetools inspect haproxy:3.2.24-alpine` when moving it).
HAPROXY_IMAGE = "haproxy:3.2.24-alpine@sha256:1aca32ee932b96d2a75f1882909325839dd23c138ba9c6fd26e4d88179f30f13"
CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
STACK_KEYS_PATH = "/usr/local/etc/haproxy/stack-keys.map"
MODELS_LUA_PATH = "/usr/local/etc/haproxy/models.lua"  # several offered models: GET /v1/models
KEYS_DIR = "lb-keys"  # beside the compose project on the load balancer's host
KEYS_MOUNT = posixpath.dirname(lbkeys.HAPROXY_MAP_PATH)  # where HAProxy reads users' keys
USER_KEYS_FILE = lbkeys.MAP_FILE
BACKEND_KEY_ENV = "VLLM_API_KEY"
HAPROXY_UID = 99  # the `haproxy` user of the official image, which owns the admin socket it makes
KEYS_VOLUME = "lb-keys"  # kubernetes: a PVC, so users' keys outlive the pod
LBKEYS = ("python", "-m", "runtime.lbkeys")  # in the sidecar, whose mount is the CLI's default --dir


def key_map_line(key: str, name: str) -> str:
    return f"{lbkeys.digest(key)} {name}\n"


class LoadBalancerArgs(TypedDict):
    platform: ServicePlatform
    host: str
    backends: list[tuple[str, str]]  # (name, host:port)
    # Several offered models: served name -> its servers' (name, host:port), the default model's first
    # (its servers are `backends`). Each gets a backend; the request body's model picks it.
    model_backends: NotRequired[dict[str, list[tuple[str, str]]]]
    settings: LoadBalancerSettings
    backend_key: pulumi.Output[str]  # vLLM's own API key, sent to the servers
    tls: NotRequired[ServerTls | None]  # compose: HAProxy serves the clients' port over TLS; None: plain HTTP
    # The runtime image: on a platform without host state directories (kubernetes) the key manager
    # sidecar runs it; without it, such a platform gets the stack's own keys only.
    keys_image: NotRequired[pulumi.Input[str]]


class LoadBalancer(pulumi.ComponentResource):
    config_text: str
    url: str
    internal_url: str
    stats_url: str
    stats_address: str
    api_key: pulumi.Output[str]  # the operator's key (secret)
    worker_key: pulumi.Output[str]  # the batch worker's key (secret)
    keys_dir: str | None  # compose: the keys directory on the load balancer's host, relative to its project

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:lb:LoadBalancer", name, None, opts)
        platform, settings, host = args["platform"], args["settings"], args["host"]
        tls = args.get("tls")
        stats_ip = platform.internal_host(host, name)
        self.api_key = generated_password(f"{name}-operator-key", self, length=48)
        self.worker_key = generated_password(f"{name}-batch-worker-key", self, length=48)
        # Digests of 48-character random keys reveal nothing: the map is a plain file, not a secret.
        stack_keys = pulumi.Output.unsecret(
            pulumi.Output.all(self.api_key, self.worker_key).apply(
                lambda keys: key_map_line(keys[0], "operator") + key_map_line(keys[1], "batch-worker")
            )
        )
        maps: tuple[str, ...] = (STACK_KEYS_PATH,)
        host_paths: tuple[HostPath, ...] = ()
        volumes: tuple[Volume, ...] = ()
        sidecars: tuple[Sidecar, ...] = ()
        self.keys_dir = None
        if platform.host_state_dirs:
            self.keys_dir = KEYS_DIR
            host_paths = (
                HostPath("lb-keys", f"./{KEYS_DIR}", KEYS_MOUNT, writable=True, seed_files=(USER_KEYS_FILE,)),
            )
        elif "keys_image" in args:
            volumes = (Volume(KEYS_VOLUME, KEYS_MOUNT, size_gi=1),)
            mounts = ((KEYS_VOLUME, lbkeys.DEFAULT_DIR),)
            sidecars = (
                Sidecar(
                    "keys",
                    args["keys_image"],
                    (*LBKEYS, "hold"),
                    mounts,
                    init=(*LBKEYS, "init"),
                    liveness=(*LBKEYS, "list"),  # the map is still readable and well-formed
                ),
            )
        routes = tuple(
            ModelRoute(model, tuple(Backend(n, a) for n, a in servers))
            for model, servers in args.get("model_backends", {}).items()
        )
        several = len(routes) > 1
        user_keys = bool(host_paths or sidecars)
        if user_keys:
            maps += (f"{KEYS_MOUNT}/{USER_KEYS_FILE}",)
        self.config_text = render_haproxy_cfg(
            LoadBalancerConfig(
                backends=tuple(Backend(n, a) for n, a in args["backends"]),
                bind=host_port(platform.bind_address(host, Exposure.PUBLIC), settings.port),
                stats_bind=host_port(platform.bind_address(host, Exposure.INTERNAL), settings.stats_port),
                balance_factor=settings.balance_factor,
                session_header=settings.session_header,
                api_key_maps=maps,
                admin_socket=f"{KEYS_MOUNT}/{lbkeys.SOCKET_FILE}" if user_keys else None,
                backend_key_env=BACKEND_KEY_ENV,
                tls_pem=f"{TLS_DIR}/server.pem" if tls else None,
                models=routes if several else (),
                models_lua=MODELS_LUA_PATH if several else None,
            )
        )
        files = [
            ConfigFile("haproxy.cfg", CONFIG_PATH, self.config_text),
            ConfigFile("lb-stack-keys.map", STACK_KEYS_PATH, stack_keys),
        ]
        if several:  # a changed list reaches the container as a changed mounted file (recreated)
            files.append(ConfigFile("haproxy-models.lua", MODELS_LUA_PATH, render_models_lua(routes)))
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=HAPROXY_IMAGE,
                files=tuple(files),
                host_paths=host_paths,
                volumes=volumes,
                sidecars=sidecars,
                pod_user=HAPROXY_UID if sidecars else None,
                # The image's own entrypoint (docker-entrypoint.sh) runs `haproxy -W -db -f CONFIG_PATH`.
                entrypoint=("/bin/sh", "-c") if tls else None,
                command=(write_pem_files(f"haproxy -W -db -f {CONFIG_PATH}"),) if tls else (),
                secrets=(Secret(BACKEND_KEY_ENV, args["backend_key"]), *(tls.secrets if tls else ())),
                ports=(
                    Port(settings.port, settings.port, Exposure.PUBLIC, "http"),
                    Port(settings.stats_port, settings.stats_port, Exposure.INTERNAL, "stats"),
                ),
                healthcheck=HealthCheck(
                    command=("haproxy", "-c", "-q", "-f", CONFIG_PATH),
                    interval_s=30,
                    start_period_s=5,
                    http_path="/stats",
                    http_port=settings.stats_port,
                ),
                memory_limit="1g",
                # A changed haproxy.cfg, key map or models.lua is a master-worker reload (SIGUSR2): the
                # old worker finishes its streams while the new one takes new connections. Only an image
                # or environment change recreates HAProxy: a soft stop (SIGUSR1) that lets the longest
                # generation finish.
                reload=Reload(
                    signal="SIGUSR2",
                    check=("haproxy", "-c", "-q", "-f", CONFIG_PATH),
                    success_log="Loading success.",
                    failure_log="Loading failure",
                ),
                stop_signal="SIGUSR1",
                stop_grace_s=GENERATION_TIMEOUT_S + 30,
            ),
            parent=self,
        )
        # Public URLs are https on both platforms: kubernetes terminates TLS at its Ingress, compose here.
        self.url = f"https://{platform.external_address(host, settings.port, name)}/v1"
        internal = platform.internal_address(host, settings.port, name, Exposure.PUBLIC)
        self.internal_url = f"{'https' if tls else 'http'}://{internal}/v1"
        self.stats_url = f"http://{stats_ip}:{settings.stats_port}/stats"
        self.stats_address = platform.internal_address(host, settings.stats_port, name)  # /metrics for Prometheus
        self.register_outputs({"url": self.url, "statsUrl": self.stats_url})
