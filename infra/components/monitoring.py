"""Prometheus and Grafana, plus the exporters on the GB10 hosts (NVIDIA DCGM, node exporter).

Prometheus scrapes the targets the program hands it (vLLM, HAProxy, batch API and worker, Ray,
the exporters) and evaluates the seeds' alert rules; Grafana comes up with Prometheus as its
data source and the vllm-gb10 dashboard, both provisioned from files.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.components.tls import TLS_DIR, ServerTls, write_pem_files
from infra.config import MonitoringSettings
from infra.platforms import ServicePlatform
from infra.render.monitoring import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    ScrapeJob,
    render_grafana_dashboards,
    render_grafana_datasource,
    render_prometheus_config,
)
from infra.services import ConfigFile, Exposure, HealthCheck, HostPath, Port, Secret, ServiceSpec, Volume, host_port

# Third-party images by tag and multi-arch digest, each as pinned in several public projects (README
# "Third-party images" lists them). DCGM exporter: no published multi-arch digest was found for this
# tag (only a linux/amd64 manifest), so it is pinned by its exact release tag alone.
PROMETHEUS_IMAGE = "prom/prometheus:v3.15.0@sha256:efd719c99d83b060d9daefdcf00360461adf279f45ef5391f8d111892118753e"
GRAFANA_IMAGE = "grafana/grafana:13.2.3@sha256:b28bae15e219c998fb0e0424ed724930cc61b1f61fb404d47c862f9a23f9e572"
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.2-4.8.1-ubuntu22.04"
NODE_EXPORTER_IMAGE = (
    "prom/node-exporter:v1.12.1@sha256:1b4e4438faca4dd7e001dd445d161a4a2091b0fededa84093b3a8dfeae1f1be0"
)
DCGM_PORT, NODE_PORT = 9400, 9100
# The images' users, whose group their volumes are made writable to (kubernetes fsGroup): prometheus's
# Dockerfile runs `USER nobody` (busybox: 65534) after `chown -R nobody:nobody /prometheus`; grafana's
# sets `ARG GF_UID="472"` (its GF_GID is 0) and runs as 472, and Grafana's own Kubernetes guide sets
# fsGroup 472.
PROMETHEUS_GID, GRAFANA_GID = 65534, 472
RULES_PATH = "/etc/prometheus/alerts.yml"
DASHBOARDS_DIR = "/etc/grafana/dashboards"


class MonitoringArgs(TypedDict):
    platform: ServicePlatform
    host: str  # where Prometheus and Grafana run
    gpu_hosts: list[str]  # each gets an NVIDIA DCGM exporter
    node_hosts: list[str]  # each gets a node exporter (disk and memory)
    jobs: list[ScrapeJob]  # the services' own metrics endpoints
    settings: MonitoringSettings
    tls: NotRequired[ServerTls | None]  # compose: Grafana serves TLS itself


def _wget(host: str, port: int, path: str, *, https: bool = False) -> HealthCheck:
    """The Prometheus, Grafana and node-exporter images carry busybox wget; `host` is the probe address.
    Over https the probe asks whether the service answers, not who it is (the certificate's names are
    the public ones)."""
    url = f"{'https' if https else 'http'}://{host_port(host, port)}{path}"
    return HealthCheck(
        command=("wget", "-q", *(("--no-check-certificate",) if https else ()), "-O", "/dev/null", url),
        interval_s=15,
        start_period_s=30,
        http_path=path,
        http_port=port,
    )


class Monitoring(pulumi.ComponentResource):
    prometheus_url: str
    grafana_url: str
    grafana_password: pulumi.Output[str]
    prometheus_config: str

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:monitoring:Monitoring", name, None, opts)
        platform, settings, host = args["platform"], args["settings"], args["host"]
        tls = args.get("tls")
        public, internal = Exposure.PUBLIC, Exposure.INTERNAL
        prometheus_listen = host_port(platform.bind_address(host, internal), settings.prometheus_port)
        exporters: list[ScrapeJob] = [
            ScrapeJob("dcgm", tuple(self._dcgm_exporter(platform, h) for h in args["gpu_hosts"])),
            ScrapeJob("node", tuple(self._node_exporter(platform, h) for h in args["node_hosts"])),
        ]
        self.prometheus_config = render_prometheus_config(
            [*args["jobs"], *exporters], scrape_interval_s=settings.scrape_interval_s, rules_path=RULES_PATH
        )
        prometheus = "prometheus"
        platform.deploy(
            ServiceSpec(
                name=prometheus,
                host=host,
                image=PROMETHEUS_IMAGE,
                command=(
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--storage.tsdb.retention.time={settings.retention_days}d",
                    f"--web.listen-address={prometheus_listen}",
                ),
                files=(
                    ConfigFile("prometheus.yml", "/etc/prometheus/prometheus.yml", self.prometheus_config),
                    ConfigFile("alerts.yml", RULES_PATH, ALERTS_FILE.read_text()),
                ),
                ports=(Port(settings.prometheus_port, settings.prometheus_port, internal, "web"),),
                volumes=(Volume("prometheus-data", "/prometheus", size_gi=50),),
                volume_group=PROMETHEUS_GID,
                healthcheck=_wget(platform.probe_address(host, internal), settings.prometheus_port, "/-/ready"),
                memory_limit="4g",
                stateful=True,
            ),
            parent=self,
        )
        self.prometheus_url = f"http://{platform.internal_address(host, settings.prometheus_port, prometheus)}"
        self.grafana_password = generated_password(f"{name}-grafana-password", self)
        platform.deploy(
            ServiceSpec(
                name="grafana",
                host=host,
                image=GRAFANA_IMAGE,
                environment={
                    "GF_SECURITY_ADMIN_USER": "admin",
                    "GF_SERVER_HTTP_ADDR": platform.bind_address(host, public),
                    "GF_SERVER_HTTP_PORT": str(settings.grafana_port),
                    "GF_USERS_ALLOW_SIGN_UP": "false",
                    # Grafana's default, pinned here so no image or ini default turns it on: no anonymous viewer
                    # (let alone admin), no sign-up, and no admin/admin first login (the password is generated).
                    "GF_AUTH_ANONYMOUS_ENABLED": "false",
                    "GF_AUTH_DISABLE_LOGIN_FORM": "false",
                    **(
                        {
                            "GF_SERVER_PROTOCOL": "https",
                            "GF_SERVER_CERT_FILE": f"{TLS_DIR}/cert.pem",
                            "GF_SERVER_CERT_KEY": f"{TLS_DIR}/key.pem",
                        }
                        if tls
                        else {}
                    ),
                },
                # The image's own entrypoint is /run.sh.
                entrypoint=("/bin/sh", "-c") if tls else None,
                command=(write_pem_files("/run.sh"),) if tls else (),
                secrets=(Secret("GF_SECURITY_ADMIN_PASSWORD", self.grafana_password), *(tls.secrets if tls else ())),
                files=(
                    ConfigFile(
                        "grafana-datasource.yml",
                        "/etc/grafana/provisioning/datasources/prometheus.yml",
                        render_grafana_datasource(self.prometheus_url),
                    ),
                    ConfigFile(
                        "grafana-dashboards.yml",
                        "/etc/grafana/provisioning/dashboards/vllm-gb10.yml",
                        render_grafana_dashboards(DASHBOARDS_DIR),
                    ),
                    ConfigFile(
                        "vllm-gb10-dashboard.json", f"{DASHBOARDS_DIR}/vllm-gb10.json", DASHBOARD_FILE.read_text()
                    ),
                ),
                ports=(Port(settings.grafana_port, settings.grafana_port, public, "http"),),
                volumes=(Volume("grafana-data", "/var/lib/grafana", size_gi=5),),
                volume_group=GRAFANA_GID,
                healthcheck=_wget(
                    platform.probe_address(host, public), settings.grafana_port, "/api/health", https=tls is not None
                ),
                memory_limit="1g",
                stateful=True,
            ),
            parent=self,
        )
        self.grafana_url = f"https://{platform.external_address(host, settings.grafana_port, 'grafana')}"
        self.register_outputs({"prometheusUrl": self.prometheus_url, "grafanaUrl": self.grafana_url})

    def _dcgm_exporter(self, platform: ServicePlatform, host: str) -> str:
        name, internal = f"dcgm-exporter-{host}", Exposure.INTERNAL
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=DCGM_EXPORTER_IMAGE,
                command=("-a", host_port(platform.bind_address(host, internal), DCGM_PORT)),
                ports=(Port(DCGM_PORT, DCGM_PORT, internal, "metrics"),),
                healthcheck=HealthCheck(
                    command=("bash", "-c", f"exec 3<>/dev/tcp/{platform.probe_address(host, internal)}/{DCGM_PORT}"),
                    http_path="/health",
                    http_port=DCGM_PORT,
                ),
                gpu_visible=True,
                memory_limit="512m",
                # Observability, not serving: a box where DCGM cannot run still deploys, and says so (README
                # "Grafana on a GB10"); Prometheus shows the target down and GpuMetricsMissing fires.
                optional=True,
            ),
            parent=self,
        )
        return platform.internal_address(host, DCGM_PORT, name)

    def _node_exporter(self, platform: ServicePlatform, host: str) -> str:
        name, internal = f"node-exporter-{host}", Exposure.INTERNAL
        platform.deploy(
            ServiceSpec(
                name=name,
                host=host,
                image=NODE_EXPORTER_IMAGE,
                command=(
                    f"--web.listen-address={host_port(platform.bind_address(host, internal), NODE_PORT)}",
                    "--path.rootfs=/host/root",
                    "--path.procfs=/host/proc",
                    "--path.sysfs=/host/sys",
                ),
                host_paths=(
                    HostPath("host-root", "/", "/host/root"),
                    HostPath("host-proc", "/proc", "/host/proc"),
                    HostPath("host-sys", "/sys", "/host/sys"),
                ),
                ports=(Port(NODE_PORT, NODE_PORT, internal, "metrics"),),
                healthcheck=_wget(platform.probe_address(host, internal), NODE_PORT, "/"),
                pin_to_gpu_node=True,  # kubernetes: the GB10 node is the one whose disk and memory matter
                memory_limit="256m",
            ),
            parent=self,
        )
        return platform.internal_address(host, NODE_PORT, name)
