"""The post-deploy check: declared after every host's `up`, re-run when any host changes, with a command
that runtime.smoke's own parser accepts, on both platforms."""

from __future__ import annotations

import shlex

import pytest
from pulumi.runtime import rpc

from infra.plan import Plan, build_plan
from runtime import smoke
from tests.plans import stack_plan


@pytest.fixture(scope="module")
def stella() -> Plan:
    return stack_plan("stella")


def _check(plan: Plan):
    (found,) = [
        r for r in plan.recording.resources if r.type == "command:remote:Command" and r.name == "post-deploy-check"
    ]
    return found


def test_it_runs_after_every_hosts_up_and_again_when_any_host_changes(stella: Plan) -> None:
    check = _check(stella)
    ups = {r.name for r in stella.recording.resources if r.name.endswith("-compose-up")}
    assert ups == {"stella-compose-up", "nova-compose-up"}
    assert ups <= set(check.depends_on)
    hashes = [r.inputs["triggers"][0] for r in stella.recording.resources if r.name in ups]
    assert sorted(check.inputs["triggers"]) == sorted(hashes)
    changed = build_plan("stella", overrides={"lbBalanceFactor": "175"})
    assert _check(changed).inputs["triggers"] != check.inputs["triggers"]


def test_its_command_checks_every_server_and_the_balancer(stella: Plan) -> None:
    check = _check(stella).inputs
    script = check["create"].splitlines()
    # The load balancer's key comes on stdin into a 0600 env file, never on the command line.
    assert script[:3] == [
        "set -eu",
        "secrets=$(mktemp) && trap 'rm -f \"$secrets\"' EXIT",
        '(umask 077 && cat > "$secrets")',
    ]
    assert check["stdin"][rpc._special_sig_key] == rpc._special_secret_sig  # stored as a secret in state
    argv = shlex.split(script[-1])
    assert argv[:4] == ["docker", "run", "--rm", "--network=host"] and "--env-file" in argv
    args = smoke.build_parser().parse_args(argv[argv.index("runtime.smoke") + 1 :])
    assert args.vllm == ["http://10.10.10.1:8000/v1", "http://10.10.10.2:8000/v1"]
    assert args.lb == "https://10.10.10.1:8080/v1" and args.model == "Qwen/Qwen3-4B"
    assert args.batch_api == "https://10.10.10.1:8100/v1"
    assert stella.outputs["servedModelName"] == "Qwen/Qwen3-4B"


def test_edge_runs_it_as_a_job() -> None:
    edge = stack_plan("edge")
    (job,) = [
        r for r in edge.recording.resources if r.type == "kubernetes:batch/v1:Job" and r.name == "post-deploy-check"
    ]
    container = job.inputs["spec"]["template"]["spec"]["containers"][0]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:3] == ["python", "-m", "runtime.smoke"] and "--vllm" in argv


def test_outputs_mode_names_what_is_missing(tmp_path) -> None:
    bad = tmp_path / "outputs.json"
    bad.write_text('{"loadBalancerUrl": "http://127.0.0.1:1/v1"}')
    assert smoke.main(["--outputs", str(bad), "--timeout", "0"]) == 2


def test_a_server_that_does_not_answer_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = smoke.main(
        ["--vllm", "http://127.0.0.1:9/v1", "--lb", "http://127.0.0.1:9/v1", "--model", "m", "--timeout", "0"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "failed: vLLM http://127.0.0.1:9/health: ConnectError" in err
    assert "failed: chat completion through the load balancer http://127.0.0.1:9 (model m)" in err
