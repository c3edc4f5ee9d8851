"""`python -m infra.plan`: files written, output printed, config errors, and --diff."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.plan import build_plan
from infra.plan.diff import diff_plans, format_diff
from tests.plans import stack_plan

ROOT = Path(__file__).resolve().parents[2]


def plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.plan", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def stella_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("plan")
    return out, plan_cli("--stack", "stella", "--out", str(out))


def test_plan_writes_plan_json_and_generated_files(stella_out) -> None:
    out, result = stella_out
    assert result.returncode == 0, result.stderr
    plan = json.loads((out / "stella" / "plan.json").read_text())
    assert set(plan) == {"stack", "resources", "outputs"} and plan["stack"] == "stella"
    assert all(set(r) == {"type", "name", "parent", "inputs"} for r in plan["resources"])
    files = sorted(str(p.relative_to(out / "stella" / "files")) for p in (out / "stella" / "files").rglob("*.*"))
    assert files == [
        "nova/docker-compose.yml", "stella/alerts.yml", "stella/docker-compose.yml",
        "stella/grafana-dashboards.yml", "stella/grafana-datasource.yml", "stella/haproxy.cfg",
        "stella/lb-stack-keys.map", "stella/offload-role.sql", "stella/prometheus.yml",
        "stella/vllm-gb10-dashboard.json",
    ]  # fmt: skip


def test_plan_prints_counts_by_type_and_the_outputs(stella_out) -> None:
    _, result = stella_out
    assert "stack stella: 83 resources" in result.stdout
    assert "    2  vllm-gb10:host:Gb10Host" in result.stdout
    assert "   21  vllm-gb10:compose:Service" in result.stdout  # one per service, under its component
    assert 'loadBalancerUrl: "https://stella.lan:8080/v1"' in result.stdout
    assert 'postgresUrl: "[secret]"' in result.stdout


def test_a_config_error_exits_non_zero_naming_file_and_key(tmp_path: Path) -> None:
    text = (ROOT / "Pulumi.stella.yaml").read_text().replace('vllm-gb10:maxNumSeqs: "64"', "vllm-gb10:maxNumSeqs: lots")
    (tmp_path / "Pulumi.stella.yaml").write_text(text)
    result = plan_cli("--stack", "stella", "--project-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Pulumi.stella.yaml: vllm-gb10:maxNumSeqs: Input should be a valid integer" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written for a bad config"


def test_an_unknown_stack_is_refused(tmp_path: Path) -> None:
    result = plan_cli("--stack", "nowhere", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "Pulumi.nowhere.yaml: no such stack file" in result.stderr


def test_diff_against_an_older_plan_lists_added_changed_and_removed(stella_out, tmp_path: Path) -> None:
    out, _ = stella_out
    old = json.loads((out / "stella" / "plan.json").read_text())
    dropped = old["resources"].pop(0)  # the new plan will have it: "added"
    old["resources"].append({"type": "command:remote:Command", "name": "gone", "parent": None, "inputs": {}})
    for r in old["resources"]:
        if r["name"] == "stella-compose-up":
            r["inputs"]["triggers"] = ["0" * 64]
    old["outputs"]["loadBalancerUrl"] = "http://old:8080/v1"
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    result = plan_cli("--stack", "stella", "--out", str(tmp_path / "new"), "--diff", str(old_path))
    assert result.returncode == 0, result.stderr
    assert f"+ {dropped['type']} {dropped['name']}" in result.stdout
    assert "- command:remote:Command gone" in result.stdout
    # A changed trigger replaces the command, as Pulumi would (an update would not re-run it).
    assert "+- command:remote:Command stella-compose-up (replace)" in result.stdout
    assert "    ~ inputs.triggers[0]: '0000" in result.stdout
    assert "    ~ loadBalancerUrl: 'http://old:8080/v1' => 'https://stella.lan:8080/v1'" in result.stdout
    # the two preflights are replaced on every run, and said so apart from the changes
    assert "+- command:remote:Command stella-preflight (replace: its trigger is the run's stamp" in result.stdout
    assert "1 to add, 0 to change, 3 to replace (2 on every run), 1 to delete" in result.stdout


def test_diff_of_identical_plans_is_empty_apart_from_the_preflights_every_run(stella_out) -> None:
    out, _ = stella_out
    plan = json.loads((out / "stella" / "plan.json").read_text())
    diff = diff_plans(plan, plan)
    assert diff.empty
    assert {name for _, name in diff.every_run} == {"stella-preflight", "nova-preflight"}
    assert format_diff(diff).splitlines()[-1] == "no changes apart from the per-run replacements"
    edge = stack_plan("edge").to_json()
    assert format_diff(diff_plans(edge, edge)) == "no changes"


def test_unreadable_diff_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "old.json"
    bad.write_text("{not json")
    result = plan_cli("--stack", "stella", "--out", str(tmp_path), "--diff", str(bad))
    assert result.returncode == 2 and f"--diff {bad}" in result.stderr


def test_make_preview_plans_every_stack(tmp_path: Path) -> None:
    """`make preview` plans each Pulumi.<stack>.yaml. Its recipe is read with `make -n`, which runs nothing
    (a real `make preview` may reinstall the venv first), and each plan it names is run here."""
    if shutil.which("make") is None:
        pytest.fail("make is required")
    dry = subprocess.run(["make", "-s", "-n", "preview"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr
    stacks = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml"))
    assert f"for s in {' '.join(stacks)}; do" in dry.stdout and "-m infra.plan --stack $s" in dry.stdout
    for stack in stacks:
        result = plan_cli("--stack", stack, "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert f"stack {stack}:" in result.stdout


def test_plan_evaluates_the_policy_pack_and_stella_has_no_mandatory_violation(stella_out) -> None:
    _, result = stella_out
    assert "policy violations:" in result.stdout
    assert "[mandatory]" not in result.stdout


def test_a_mandatory_policy_violation_makes_the_plan_exit_non_zero(tmp_path: Path) -> None:
    text = (
        ROOT / "Pulumi.stella.yaml"
    ).read_text() + '  vllm-gb10:gpuMemoryUtilization: "0.9"\n  vllm-gb10:vllmMemoryLimit: 40g\n'
    (tmp_path / "Pulumi.stella.yaml").write_text(text)
    result = plan_cli("--stack", "stella", "--project-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert (
        "[mandatory] vllm-memory-utilization: command:remote:CopyToRemote stella-compose-docker-compose.yml: "
        "vllm-stella: --gpu-memory-utilization 0.90 is above 0.85" in result.stdout
    )
    assert "mandatory policy violations" in result.stderr


def test_public_data_services_are_the_explicit_exception_the_policy_allows(tmp_path: Path) -> None:
    text = (ROOT / "Pulumi.stella.yaml").read_text() + '  vllm-gb10:publicDataServices: "true"\n'
    (tmp_path / "Pulumi.stella.yaml").write_text(text)
    result = plan_cli("--stack", "stella", "--project-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout
    # not a violation, but not silent either: the plan says which default the stack file turned off
    assert "policy violations: none" in result.stdout
    assert "policy exemption: data-services-private: exempted by publicDataServices: true" in result.stdout
    plain = plan_cli("--stack", "stella", "--out", str(tmp_path / "out2"))
    assert "policy exemption" not in plain.stdout


def test_diff_shows_compose_changes_by_service_and_key_and_replacements_as_pulumi_would(tmp_path: Path) -> None:
    old = stack_plan("stella")
    new = build_plan("stella", overrides={"lbBalanceFactor": "175", "batchChunkSize": "7"})
    diff = diff_plans(old.to_json(), new.to_json(), old.files, new.files)
    compose = diff.files["stella/docker-compose.yml"]
    assert "~ batch-api: environment.BATCH_CHUNK_SIZE: '100' => '7'" in compose
    assert "~ batch-worker: environment.BATCH_CHUNK_SIZE: '100' => '7'" in compose
    assert not [line for line in compose if line.startswith("~ lb:")], "HAProxy reloads its files: no label"
    assert [line.strip() for line in diff.files["stella/haproxy.cfg"]] == [
        "-    hash-balance-factor 150".strip(),
        "+    hash-balance-factor 175".strip(),
    ]
    assert "nova/docker-compose.yml" not in diff.files
    replaced = {name for _, name in diff.replaced}
    assert "stella-compose-up" in replaced
    # pulumi-command 1.2 updates a CopyToRemote in place: only a changed `triggers` replaces it
    changed = {name for _, name in diff.changed}
    assert {"stella-compose-haproxy.cfg", "stella-compose-docker-compose.yml"} <= changed - replaced
    text = format_diff(diff)
    assert "+- command:remote:Command stella-compose-up (replace)" in text and "to replace" in text
    assert "~ command:remote:CopyToRemote stella-compose-haproxy.cfg\n" in text


@pytest.mark.parametrize(
    ("overrides", "replaced"),
    [
        ({"namespace": "other"}, {"kubernetes:apps/v1:StatefulSet", "kubernetes:core/v1:Service"}),
        ({"storageClass": "fast-nvme"}, {"kubernetes:apps/v1:StatefulSet", "kubernetes:core/v1:PersistentVolumeClaim"}),
    ],
)
def test_kubernetes_changes_pulumi_cannot_make_in_place_are_replacements(overrides: dict, replaced: set) -> None:
    diff = diff_plans(stack_plan("edge").to_json(), build_plan("edge", overrides=overrides).to_json())
    assert replaced <= {type_ for type_, _ in diff.replaced}
    assert not [
        key for key in diff.replaced if key[0] == "kubernetes:core/v1:ConfigMap" and "storageClass" in overrides
    ]
