"""Prometheus rules, scrape config and the Grafana dashboard, checked with the real promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.plan import Plan
from infra.render.monitoring import ALERTS_FILE, DASHBOARD_FILE, PROMETHEUS_DATASOURCE_UID
from tests.conftest import require_binary
from tests.plans import stack_plan

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = ROOT / "tests" / "unit" / "monitoring" / "alerts_test.yml"
SEEDS_ALERTS = {
    "GpuUnderusedWhileJobsRun", "BatchErrorRateHigh", "LoadBalancerErrorRateHigh", "BatchQueueDeep",
    "DiskFreeLow", "GpuTemperatureHigh", "MemoryHigh", "BatchJobStalled",
}  # fmt: skip
ALERTS = SEEDS_ALERTS | {"LoadBalancerImbalance"}  # ADR-003: load within 10% across GPUs
# issue 31: the memory guard's actions, and a guard that cannot act
ALERTS |= {
    "MemoryGuardPaused",
    "MemoryGuardShed",
    "MemoryGuardContainerStopped",
    "MemoryGuardNothingLeftToShed",
    "MemoryGuardFailing",
    "MemoryGuardDown",
}
ALERTS |= {"BatchResultsOverdue", "BatchExpiryStalled"}  # issue 37: expiry that really happens


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=["stella", "edge"])
def plan(request) -> Plan:
    return stack_plan(request.param)


def prometheus_files(plan: Plan) -> dict[str, str]:
    """prometheus.yml and alerts.yml as the stack ships them (compose: host dir; edge: the ConfigMap)."""
    if plan.stack == "edge":
        return yaml.safe_load(plan.files["k8s/configmap-prometheus-files.yaml"])["data"]
    return {name: plan.files[f"stella/{name}"] for name in ("prometheus.yml", "alerts.yml")}


def test_the_alert_rules_parse() -> None:
    result = promtool("check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_fires_on_sample_series_and_stays_quiet_inside_its_threshold() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = {r["alert"] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]}
    assert rules == ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert fired == ALERTS
    assert {
        "GpuUnderusedWhileJobsRun",
        "LoadBalancerErrorRateHigh",
        "BatchJobStalled",
        "LoadBalancerImbalance",
        "BatchResultsOverdue",
        "BatchExpiryStalled",
    } <= quiet


@pytest.mark.parametrize(
    ("rule", "broken", "alert"),
    [
        ("max(batch_queue_depth) > 100", "max(batch_queue_depth) > 1000", "BatchQueueDeep"),
        ("          > 1.10\n", "          > 1.25\n", "LoadBalancerImbalance"),  # the 10% bound
        ('state="UP"} == 1', 'state="UP"} >= 0', "LoadBalancerImbalance"),  # a down backend counted
        ("memguard_level >= 1", "memguard_level >= 2", "MemoryGuardPaused"),  # a pause not alerted
        ('{action="stop"}[15m]) > 0', '{action="pause"}[15m]) > 0', "MemoryGuardShed"),  # the wrong action
        ("memguard_shed_exhausted == 1", "memguard_shed_exhausted == 0", "MemoryGuardNothingLeftToShed"),
        ("(batch_expiry_overdue_age_seconds) > 0", "(batch_expiry_overdue_age_seconds) > 1e9", "BatchResultsOverdue"),
        ("> 6 * 3600", "> 24 * 3600", "BatchExpiryStalled"),
    ],
)
def test_a_broken_rule_fails_the_rule_tests(tmp_path: Path, rule: str, broken: str, alert: str) -> None:
    """The rule tests can fail: break a rule and its expected (or expected quiet) alert shows the difference."""
    assert rule in ALERTS_FILE.read_text()
    (tmp_path / "alerts.yml").write_text(ALERTS_FILE.read_text().replace(rule, broken))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["alerts.yml"]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert result.returncode != 0 and alert in result.stdout + result.stderr


def test_the_shipped_prometheus_config_passes_promtool(plan: Plan, tmp_path: Path) -> None:
    files = prometheus_files(plan)
    assert files["alerts.yml"] == ALERTS_FILE.read_text()
    (tmp_path / "alerts.yml").write_text(files["alerts.yml"])
    (tmp_path / "prometheus.yml").write_text(
        files["prometheus.yml"].replace("/etc/prometheus/alerts.yml", "alerts.yml")
    )
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service_and_the_gpu_hosts(plan: Plan) -> None:
    config = yaml.safe_load(prometheus_files(plan)["prometheus.yml"])
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert set(jobs) == {"vllm", "haproxy", "batch-api", "batch-worker", "ray", "dcgm", "node", "memguard"}
    every = [t for targets in jobs.values() for t in targets]
    assert len(every) == len(set(every)), "two jobs or nodes scrape one endpoint"
    if plan.stack == "stella":
        assert jobs["dcgm"] == ["10.10.10.1:9400", "10.10.10.2:9400"]
        assert jobs["ray"] == ["10.10.10.1:8090", "10.10.10.1:8091", "10.10.10.2:8091"]
        assert jobs["batch-worker"] == ["10.10.10.1:8101"]
        assert jobs["memguard"] == ["10.10.10.1:9105", "10.10.10.2:9105"]  # one guard per gpu host
    else:
        assert jobs["vllm"] == ["vllm-gb10.app-cognition.svc.cluster.local:8000"]
        assert jobs["dcgm"] == ["dcgm-exporter-gb10.app-cognition.svc.cluster.local:9400"]
        assert jobs["memguard"] == ["memguard-gb10.app-cognition.svc.cluster.local:9105"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(plan: Plan) -> None:
    if plan.stack == "edge":
        files = yaml.safe_load(plan.files["k8s/configmap-grafana-files.yaml"])["data"]
    else:
        files = {
            n.split("/", 1)[1]: t
            for n, t in plan.files.items()
            if n.startswith("stella/grafana") or n.endswith(".json")
        }
    (datasource,) = yaml.safe_load(files["grafana-datasource.yml"])["datasources"]
    assert datasource["uid"] == PROMETHEUS_DATASOURCE_UID and datasource["url"] == plan.outputs["prometheusUrl"]
    assert json.loads(files["vllm-gb10-dashboard.json"]) == json.loads(DASHBOARD_FILE.read_text())
    assert plan.outputs["grafanaAdminPassword"] == "[secret]"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(dashboard_expressions())],
            }
        ]
    }
    (tmp_path / "dashboard-queries.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard-queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_covers_what_the_seeds_ask_for() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("gpu utilisation", "gpu memory", "temperature", "power", "tokens per second", "requests per second",
                  "queue depth", "job progress", "error rates", "load per backend", "stickiness"):  # fmt: skip
        assert words in titles, words
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {PROMETHEUS_DATASOURCE_UID}


def test_batch_metrics_named_in_rules_and_dashboard_exist_in_the_runtime() -> None:
    from runtime.batch import metrics

    exported = set()
    for metric in metrics.registry.collect():
        exported |= {sample.name for sample in metric.samples} | {metric.name, f"{metric.name}_total"}
    used = set(re.findall(r"\bbatch_[a-z_]+", ALERTS_FILE.read_text() + " ".join(dashboard_expressions()))) - {
        "batch_id"
    }
    assert used and used <= exported, used - exported


def test_every_ray_target_is_a_port_a_ray_node_exports_on() -> None:
    """Scrape targets and `ray start` flags come from one setting; a node that exports elsewhere shows here."""
    plan = stack_plan("stella")
    config = yaml.safe_load(plan.files["stella/prometheus.yml"])
    (targets,) = [job["static_configs"][0]["targets"] for job in config["scrape_configs"] if job["job_name"] == "ray"]
    host_of = {"10.10.10.1": "stella", "10.10.10.2": "nova"}
    for target in targets:
        ip, port = target.split(":")
        services = yaml.safe_load(plan.files[f"{host_of[ip]}/docker-compose.yml"])["services"]
        exported = [name for name, s in services.items() if f"--metrics-export-port={port}" in s.get("command", [])]
        assert len(exported) == 1, f"{target}: exported by {exported}"


def test_memguard_metrics_named_in_rules_exist_in_the_guard() -> None:
    from runtime.memguard import service

    exported = set()
    for metric in service.registry.collect():
        exported |= {sample.name for sample in metric.samples} | {metric.name, f"{metric.name}_total"}
    used = set(re.findall(r"\bmemguard_[a-z_]+", ALERTS_FILE.read_text()))
    assert len(used) >= 5 and used <= exported, used - exported
