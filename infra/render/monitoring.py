"""prometheus.yml and Grafana's provisioning files, rendered from the stack's scrape targets.

The alert rules (infra/monitoring/alerts.yml) and the dashboard (infra/monitoring/dashboard.json)
are files in the repo, shipped as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

MONITORING_DIR = Path(__file__).resolve().parent.parent / "monitoring"
ALERTS_FILE = MONITORING_DIR / "alerts.yml"
DASHBOARD_FILE = MONITORING_DIR / "dashboard.json"
PROMETHEUS_DATASOURCE_UID = "prometheus"  # the dashboard's panels name this uid


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: tuple[str, ...]  # host:port
    metrics_path: str = "/metrics"


def render_prometheus_config(jobs: list[ScrapeJob], *, scrape_interval_s: int, rules_path: str) -> str:
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"},
        "rule_files": [rules_path],
        "scrape_configs": [
            {"job_name": job.name, "metrics_path": job.metrics_path, "static_configs": [{"targets": list(job.targets)}]}
            for job in jobs
            if job.targets
        ],
    }
    header = "# Rendered by infra/render/monitoring.py - do not edit by hand.\n"
    return header + str(yaml.safe_dump(config, sort_keys=False))


def render_grafana_datasource(prometheus_url: str) -> str:
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": PROMETHEUS_DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
            }
        ],
    }
    return str(yaml.safe_dump(datasource, sort_keys=False))


def render_grafana_dashboards(dashboards_dir: str) -> str:
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "vllm-gb10",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": dashboards_dir},
            }
        ],
    }
    return str(yaml.safe_dump(provider, sort_keys=False))
