"""Day two on the compose platform (issue 30): a change to the vLLM servers rolls one host at a time
between a drain and a ready on the load balancer's host, and a change to HAProxy's files is a reload,
never a recreate. The plan is what `pulumi up` would run; the stack test runs it for real."""

from __future__ import annotations

import re

import yaml

from infra.plan import Plan, build_plan
from infra.plan.diff import diff_plans, format_diff
from tests.plans import stack_plan

COMMAND = "command:remote:Command"


def _command(plan: Plan, name: str) -> tuple[dict, list[str]]:
    (found,) = [r for r in plan.recording.resources if r.type == COMMAND and r.name == name]
    return found.inputs, found.depends_on


def test_each_host_rolls_between_a_drain_and_a_ready_on_the_load_balancers_host() -> None:
    plan = stack_plan("stella")
    order = []
    for host in ("stella", "nova"):
        drain, drain_after = _command(plan, f"{host}-drain")
        ready, ready_after = _command(plan, f"{host}-ready")
        _, up_after = _command(plan, f"{host}-compose-up")
        assert f"{host}-drain" in up_after, "the host's `up` waits for its drain"
        assert f"{host}-compose-up" in ready_after, "its ready waits for its `up`"
        # both run on the load balancer's host (stella), through the runtime image's lbdrain
        assert drain["connection"]["value"]["host"] == ready["connection"]["value"]["host"] == "stella.lan"
        assert f"python -m runtime.lbdrain --dir /keys drain {host} --timeout-s 600" in drain["create"]
        assert f"python -m runtime.lbdrain --dir /keys ready {host} --timeout-s 120" in ready["create"]
        assert "--network none" in drain["create"] and "--cap-drop ALL --cap-add DAC_OVERRIDE" in drain["create"]
        assert "nothing to drain" in drain["update"], "only the trigger (a replacement) drains"
        order.append((int(re.search(r"roll step (\d+)", drain["create"]).group(1)), host, drain_after))
    order.sort()
    assert [host for _, host, _ in order] == ["stella", "nova"], "the stack file's order"
    assert "stella-ready" in order[1][2], "nova drains only once stella is back in rotation"


def test_only_a_change_of_a_hosts_servers_rolls_it_and_the_diff_says_in_which_order() -> None:
    base = stack_plan("stella")

    def triggers(plan: Plan) -> dict[str, object]:
        return {
            name: _command(plan, name)[0]["triggers"]
            for name in ("stella-drain", "nova-drain", "stella-ready", "nova-ready")
        }

    flag = build_plan("stella", overrides={"vllmExtraArgs": '["--seed", "7"]'})
    assert all(before != after for before, after in zip(triggers(base).values(), triggers(flag).values(), strict=True))
    shown = format_diff(diff_plans(base.to_json(), flag.to_json()))
    assert "rolling, one host at a time: stella, then nova" in shown, shown
    for unrelated in ({"batchChunkSize": "7"}, {"lbBalanceFactor": "175"}, {"redisPort": "6380"}):
        other = build_plan("stella", overrides=unrelated)
        assert triggers(other) == triggers(base), unrelated
        assert "rolling" not in format_diff(diff_plans(base.to_json(), other.to_json())), unrelated


def test_a_load_balancer_config_change_is_a_reload_and_only_an_image_change_recreates_it() -> None:
    base = stack_plan("stella")
    changed = build_plan("stella", overrides={"lbBalanceFactor": "175"})

    def lb(plan: Plan) -> dict:
        return yaml.safe_load(plan.files["stella/docker-compose.yml"])["services"]["lb"]

    assert lb(changed) == lb(base), "compose sees no change, so `up` keeps the container"
    assert lb(base)["stop_signal"] == "SIGUSR1"  # HAProxy's soft stop: streams in flight finish
    assert lb(base)["stop_grace_period"] == "630s"  # the longest generation (600 s) and a margin
    up_before = _command(base, "stella-compose-up")[0]["create"]
    up_after = _command(changed, "stella-compose-up")[0]["create"]
    stamp = re.compile(r"!= ([0-9a-f]{64}) \]; then\n  cid=\$\(.* ps -q lb\)")
    assert stamp.search(up_before) and stamp.search(up_after)
    assert stamp.search(up_before).group(1) != stamp.search(up_after).group(1), "a new digest: the reload runs"
    assert "haproxy -c -q -f /usr/local/etc/haproxy/haproxy.cfg" in up_after  # checked before the signal
    assert 'docker kill -s SIGUSR2 "$cid"' in up_after
