"""Prometheus rules, scrape config and the Grafana dashboard, checked with the real promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.components.monitoring import DCGM_EXPORTER_IMAGE
from infra.plan import Plan
from infra.render.monitoring import ALERTS_FILE, DASHBOARD_FILE, MONITORING_DIR, PROMETHEUS_DATASOURCE_UID
from tests.conftest import require_binary
from tests.plans import stack_plan

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = ROOT / "tests" / "unit" / "monitoring" / "alerts_test.yml"
METRICS_FILE = MONITORING_DIR / "metrics.yml"  # every metric a query may name, by what exposes it
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
ALERTS |= {"GpuMetricsMissing"}  # issue 31: the DCGM exporter is optional, and its absence is said


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
        "GpuMetricsMissing",
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
        ('up{job="dcgm"} == 0', 'up{job="dcgm"} == 1', "GpuMetricsMissing"),
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
        assert jobs["ray"] == ["10.10.10.1:8090", "10.10.10.1:8091", "10.10.10.2:8092"]
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
                  "queue depth", "job progress", "error rates", "load per backend", "stickiness",
                  "energy", "memory pressure", "memory guard", "exporters up"):  # fmt: skip
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


# PromQL words that look like names but select nothing (aggregation modifiers, set and comparison operators).
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges and
    label lists are gone, less functions and aggregations (a name followed by `(`) and the language's words.
    promtool parses every query (above); this reads the names out of them."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in found if name.lower() not in _PROMQL_WORDS}


def test_metric_names_reads_the_selectors_out_of_a_query() -> None:
    expr = (
        'sum by (a, b) (rate(x_total{c="d}{", e=~"f"}[5m])) / on (g) group_left\n'
        'avg without (h) (y:rate5m offset 5m) > 3.6e9 and up{job="dcgm"} == bool 1 or vector(1) - time()'
    )
    assert metric_names(expr) == {"x_total", "y:rate5m", "up"}


def listed_metrics() -> dict[str, set[str]]:
    sources = yaml.safe_load(METRICS_FILE.read_text())["sources"]
    return {source: set(entry["metrics"]) for source, entry in sources.items()}


def unknown_metrics(dashboard: dict, alerts: dict, listed: set[str]) -> list[str]:
    """Each query that names a metric not in the list, as `where: names`."""
    queries = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    queries += [(f"alert {r['alert']}", r["expr"]) for g in alerts["groups"] for r in g["rules"]]
    return [f"{where}: {sorted(metric_names(e) - listed)}" for where, e in queries if metric_names(e) - listed]


def test_every_query_names_only_metrics_an_exporter_or_our_code_exposes() -> None:
    """A panel or alert on a metric nothing scrapes stays empty without a word: each name must be listed,
    under the exporter (or our code) that exposes it, and the list holds nothing no query uses."""
    dashboard, alerts = json.loads(DASHBOARD_FILE.read_text()), yaml.safe_load(ALERTS_FILE.read_text())
    listed = set().union(*listed_metrics().values())
    assert unknown_metrics(dashboard, alerts, listed) == []
    used = {n for p in dashboard["panels"] for t in p["targets"] for n in metric_names(t["expr"])}
    used |= {n for g in alerts["groups"] for r in g["rules"] for n in metric_names(r["expr"])}
    assert listed - used == set(), "listed but queried nowhere"


def test_a_panel_on_an_unknown_metric_fails_the_check() -> None:
    """On a GB10 DCGM's framebuffer fields say nothing (unified memory): a panel on one is refused here."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("GPU memory")]
    panel["targets"][0]["expr"] = "DCGM_FI_DEV_FB_USED * 1024 * 1024"
    listed = set().union(*listed_metrics().values())
    assert unknown_metrics(dashboard, yaml.safe_load(ALERTS_FILE.read_text()), listed) == [
        f"panel {panel['title']!r}: ['DCGM_FI_DEV_FB_USED']"
    ]


def dcgm_default_counters() -> set[str]:
    """The fields the pinned DCGM exporter exports by default: the uncommented rows of its counters CSV at
    the image's release tag (vendored unchanged, from github.com/NVIDIA/dcgm-exporter etc/)."""
    release = DCGM_EXPORTER_IMAGE.split(":", 1)[1].removesuffix("-ubuntu22.04")
    path = ROOT / "tests" / "unit" / "monitoring" / f"dcgm-default-counters-{release}.csv"
    assert path.is_file(), f"{DCGM_EXPORTER_IMAGE}: vendor its etc/default-counters.csv as {path.name}"
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {row[0].strip() for row in rows if row[1].strip() in {"gauge", "counter"}}


def test_the_dcgm_metrics_are_default_counters_of_the_pinned_exporter(plan: Plan) -> None:
    defaults = dcgm_default_counters()
    dcgm = listed_metrics()["dcgm"]
    assert dcgm <= defaults, dcgm - defaults
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in dcgm and "DCGM_FI_DEV_FB_USED" in defaults
    assert not {n for n in dcgm if n.startswith("DCGM_FI_DEV_FB_")}, "framebuffer fields say nothing on a GB10"
    # Run without -f/--collectors, so that it exports exactly the default counters.
    for command in exporter_commands(plan, "dcgm-exporter"):
        assert not {"-f", "--collectors"} & {a.split("=", 1)[0] for a in command}, command


def exporter_commands(plan: Plan, prefix: str) -> list[list[str]]:
    if plan.stack == "edge":
        found = []
        for name, text in plan.files.items():
            doc = yaml.safe_load(text)
            if name.startswith(f"k8s/deployment-{prefix}") and doc:
                found += [c.get("args", []) for c in doc["spec"]["template"]["spec"]["containers"]]
    else:
        services = {**compose(plan, "stella")["services"], **compose(plan, "nova")["services"]}
        found = [s.get("command", []) for name, s in services.items() if name.startswith(prefix)]
    assert found, f"no {prefix} in the {plan.stack} plan"
    return found


def compose(plan: Plan, host: str) -> dict:
    return yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])


def test_the_node_exporter_keeps_the_collectors_the_panels_read(plan: Plan) -> None:
    """meminfo, pressure and filesystem are node exporter defaults; a flag that turns one off empties panels."""
    for command in exporter_commands(plan, "node-exporter"):
        turned_off = [a for a in command if a.startswith("--no-collector.") or a == "--collector.disable-defaults"]
        assert turned_off == [], command


def test_our_listed_metrics_exist_in_the_runtime_registries() -> None:
    from runtime.batch import metrics
    from runtime.memguard import service

    exported = set()
    for registry in (metrics.registry, service.registry):
        for metric in registry.collect():
            exported |= {sample.name for sample in metric.samples} | {metric.name}
            if metric.type == "counter":  # a labelled counter has no samples until its first labels
                exported.add(f"{metric.name}_total")
    ours = listed_metrics()["runtime"]
    assert ours <= exported, ours - exported


def test_the_listed_vllm_metrics_are_defined_by_vllm() -> None:
    """Against the vLLM package installed here (its v1 metrics definitions); counters gain `_total`."""
    from importlib import resources

    text = "".join(f.read_text() for f in resources.files("vllm.v1.metrics").iterdir() if f.name.endswith(".py"))
    defined = set(re.findall(r'name="(vllm:[\w:]+)"', text))
    listed = listed_metrics()["vllm"]
    assert listed and {n.removesuffix("_total") for n in listed} <= defined, listed


def test_the_dcgm_exporter_is_optional_on_both_platforms(plan: Plan) -> None:
    """Nothing waits for it: compose starts it after the host's other services are up, and a failure there is
    a warning (tests/integration/test_compose_optional_docker.py runs that script); kubernetes does not await
    its Deployment, and the post-deploy check does not depend on it. The node exporter stays awaited."""
    if plan.stack == "edge":
        meta = yaml.safe_load(plan.files["k8s/deployment-dcgm-exporter-gb10.yaml"])["metadata"]
        assert meta.get("annotations") == {"pulumi.com/skipAwait": "true"}, "pulumi up would wait for the exporter"
        assert "annotations" not in yaml.safe_load(plan.files["k8s/deployment-node-exporter-gb10.yaml"])["metadata"]
        (check,) = [r for r in plan.recording.resources if r.name == "post-deploy-check" and r.type.endswith(":Job")]
        assert "node-exporter-gb10" in check.depends_on and "dcgm-exporter-gb10" not in check.depends_on
        return
    for host in ("stella", "nova"):
        exporter = f"dcgm-exporter-{host}"
        services = compose(plan, host)["services"]
        assert not [name for name, s in services.items() if exporter in s.get("depends_on", {})]
        (up,) = [
            r for r in plan.resources if r["type"] == "command:remote:Command" and r["name"] == f"{host}-compose-up"
        ]
        script = up["inputs"]["create"]
        (first,) = [line for line in script.splitlines() if "--remove-orphans --wait" in line]
        names = first.removesuffix("; then").split(f"--wait-timeout {wait_of(up)}", 1)[1].split()
        after = script.split(first, 1)[1]
        assert set(names) == set(services) - {exporter}, "the first `up` names every service but the exporter"
        assert f"--no-deps --wait --wait-timeout {wait_of(up)} {exporter}; then" in after
        assert f"warning: {exporter} did not come up on {host}" in after


def wait_of(up: dict) -> str:
    return re.search(r"--wait-timeout (\d+)", up["inputs"]["create"])[1]  # type: ignore[index]


def test_a_service_cannot_depend_on_an_optional_one() -> None:
    from infra.render.compose import compose_document
    from infra.services import ServiceSpec

    exporter = ServiceSpec(name="exporter", image="i", host="h", optional=True)
    with pytest.raises(ValueError, match=r"prometheus depends on \['exporter'\], which are optional"):
        compose_document(
            [exporter, ServiceSpec(name="prometheus", image="i", host="h", depends_on=("exporter",))], "h", "a"
        )
