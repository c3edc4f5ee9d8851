"""HAProxy in front of the vLLM servers: sticky sessions with bounded load and failover."""

from __future__ import annotations

from typing import TypedDict

import pulumi

from infra.config import LoadBalancerSettings
from infra.platforms import Platform
from infra.render.haproxy import Backend, LoadBalancerConfig, render_haproxy_cfg
from infra.services import ConfigFile, Exposure, HealthCheck, Port, ServiceSpec, host_port

# HAProxy 3.2 LTS, patch 3.2.24 (Alpine variant); digest as pinned in a public project (one source
# seen: verify with `docker buildx imagetools inspect haproxy:3.2.24-alpine` when moving it).
HAPROXY_IMAGE = "haproxy:3.2.24-alpine@sha256:1aca32ee932b96d2a75f1882909325839dd23c138ba9c6fd26e4d88179f30f13"
CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"


class LoadBalancerArgs(TypedDict):
    platform: Platform
    host: str
    backends: list[tuple[str, str]]  # (name, host:port)
    settings: LoadBalancerSettings


class LoadBalancer(pulumi.ComponentResource):
    config_text: str
    url: str
    internal_url: str
    stats_url: str
    stats_address: str

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:lb:LoadBalancer", name, None, opts)
        platform, settings, host = args["platform"], args["settings"], args["host"]
        stats_ip = platform.internal_host(host, name)
        self.config_text = render_haproxy_cfg(
            LoadBalancerConfig(
                backends=tuple(Backend(n, a) for n, a in args["backends"]),
                bind=host_port(platform.bind_address(host, Exposure.PUBLIC), settings.port),
                stats_bind=host_port(platform.bind_address(host, Exposure.INTERNAL), settings.stats_port),
                balance_factor=settings.balance_factor,
                session_header=settings.session_header,
            )
        )
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=HAPROXY_IMAGE,
                files=(ConfigFile("haproxy.cfg", CONFIG_PATH, self.config_text),),
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
            ),
            parent=self,
        )
        self.url = f"http://{platform.external_address(host, settings.port, name)}/v1"
        self.internal_url = f"http://{platform.internal_address(host, settings.port, name, Exposure.PUBLIC)}/v1"
        self.stats_url = f"http://{stats_ip}:{settings.stats_port}/stats"
        self.stats_address = platform.internal_address(host, settings.stats_port, name)  # /metrics for Prometheus
        self.register_outputs({"url": self.url, "statsUrl": self.stats_url})
