"""The local stack up for real: Docker Engine, Compose and sshd on 127.0.0.2/.3, driven as a user would.

One module-scoped stack: `make stack-up`'s code brings it up (our images built from our Dockerfiles,
every remote script run over real SSH), the tests use it through its outputs, one re-applies two
config changes, and the finaliser runs `stack-down` and checks nothing is left, pass or fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from harness.servers import wait_for
from infra.local.engine import ApplyError
from infra.local.stack import LocalStack, StackError, down, up
from infra.local.state import State
from infra.plan import PROJECT_DIR
from runtime.tlsfiles import trusting

# The first test that uses the stack also waits for its fixture: a cold build of the CPU vLLM image
# (6 min here) and both hosts' `up`, one after the other; the roll re-creates four vLLM servers in turn.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(2400)]

TIMEOUT_S = 600


class RunningStack:
    def __init__(self, local: LocalStack, outputs: dict[str, Any], docker_env: dict[str, str]):
        self.local = local
        self.outputs = outputs
        self.docker_env = docker_env

    @property
    def trust(self) -> ssl.SSLContext:
        """What a client of the public endpoints trusts: the system's store plus the stack's CA (an output)."""
        return trusting(self.outputs["tlsCaCertificate"])

    def docker(self, *args: str) -> str:
        return subprocess.run(["docker", *args], env=self.docker_env, capture_output=True, text=True, check=True).stdout

    def docker_logs(self, container: str, since: str) -> str:
        logs = subprocess.run(
            ["docker", "logs", "--since", since, container], env=self.docker_env, capture_output=True, text=True
        )
        return logs.stdout + logs.stderr

    def unpause(self, container: str) -> None:
        """Unpause; a container that is not paused (any more) is no error."""
        subprocess.run(["docker", "unpause", container], env=self.docker_env, capture_output=True)

    def containers(self) -> dict[str, dict[str, Any]]:
        ids = self.docker("ps", "-aq", "--filter", "label=dev.vllm-gb10.service").split()
        return {c["Name"].lstrip("/"): c for c in json.loads(self.docker("inspect", *ids))}

    def secrets(self) -> set[str]:
        """Every secret the stack generated, as a user reads them from the outputs."""
        names = ("batchApiKey", "grafanaAdminPassword", "minioSecretKey", "rayAuthToken", "loadBalancerApiKey")
        values = {self.outputs[k] for k in names}
        for key in ("postgresUrl", "redisUrl"):
            password = urlparse(self.outputs[key]).password
            assert password, key
            values.add(password)
        # The TLS private keys are in no output: the local engine's state holds them, as Pulumi's would.
        for resource in State.load(self.local.state_file).resources.values():
            if resource.type == "tls:index/privateKey:PrivateKey":
                pem = resource.outputs["privateKeyPem"]
                values |= {pem, base64.b64encode(pem.encode()).decode()}
        assert len(values) >= 9
        return values


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the stack test needs root (it starts sshd on loopback addresses and a private dockerd)")


# These two run before the module's stack exists (its fixture starts at the first test that uses it).
def test_a_port_already_taken_is_named_and_nothing_starts(tmp_path: Path) -> None:
    _require_root()
    local = LocalStack(state_dir=tmp_path / "state", overrides={"remoteDir": str(tmp_path / "hosts")})
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.2", 8000))
        squatter.listen()
        # named as the process table names it: `python`, or pytest-xdist's title for its workers
        me = re.escape(psutil.Process().name())
        with pytest.raises(StackError, match=rf"127\.0\.0\.2:8000 is taken by pid {os.getpid()} \({me}"):
            up(local)
    assert not (tmp_path / "state" / "hosts").exists()  # no sshd was started, no key made
    assert not (tmp_path / "hosts").exists()


def test_an_image_that_fails_to_build_is_named_and_the_stack_is_taken_down(tmp_path: Path) -> None:
    _require_root()
    build = PROJECT_DIR / "build"  # inside the build context; absent in a fresh clone
    build.mkdir(exist_ok=True)
    bad = Path(tempfile.mkdtemp(dir=build, prefix="bad-image-")) / "Dockerfile"
    bad.write_text("FROM python:3.11.14-slim-bookworm\nRUN echo 'the seeded build failure' && exit 7\n")
    local = LocalStack(
        state_dir=tmp_path / "state",
        overrides={"remoteDir": str(tmp_path / "hosts"), "vllmDockerfile": str(bad.relative_to(PROJECT_DIR))},
    )
    try:
        with pytest.raises(
            ApplyError,
            match=r"(?s)vllm-image-build: docker build of .*bad-image-.*/Dockerfile failed.*non-zero code: 7",
        ):
            up(local)
    finally:
        shutil.rmtree(bad.parent)
    assert not (tmp_path / "state" / "state.json").exists()
    assert not [
        p for p in psutil.process_iter(["name", "cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ], "an sshd of the failed stack is still running"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    _require_root()
    state = tmp_path_factory.mktemp("stack-state")
    local = LocalStack(state_dir=state, overrides={"remoteDir": str(state / "hosts")})
    try:
        outputs = up(local)
        from infra.local.docker_engine import ensure_engine

        yield RunningStack(local, outputs, ensure_engine(local.engine_dir).env)
    finally:
        down(local)  # raises when anything of the stack is left behind


def test_batch_through_the_api_with_the_openai_client(stack: RunningStack, tmp_path: Path) -> None:
    from openai import OpenAI

    client = OpenAI(
        base_url=stack.outputs["batchApiUrl"],
        api_key=stack.outputs["batchApiKey"],
        timeout=60,
        http_client=httpx.Client(verify=stack.trust),
    )
    ids = [f"req-{i}" for i in range(12)]
    lines = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": f"count {cid}"}], "max_tokens": 4},
        }
        for cid in ids
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status in {"completed", "failed", "expired", "cancelled"} and b
        ),
        TIMEOUT_S,
        f"batch {batch.id} to finish",
        interval=0.5,
    )
    assert done.status == "completed", done
    assert done.request_counts.completed == len(ids) and done.request_counts.failed == 0
    rows = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(ids)
    assert all(r["response"]["status_code"] == 200 for r in rows)


def test_a_lost_redis_comes_back_from_its_s3_backup_with_the_documented_commands(stack: RunningStack) -> None:
    """Disaster recovery as the README tells an operator: a snapshot to S3, Redis loses everything (FLUSHALL
    with the operator's redisUrl output), `restore --replace` from the worker's container brings the finished
    batch and its API keys back, and its output file is served again."""
    import redis
    from openai import AuthenticationError, OpenAI

    client = OpenAI(
        base_url=stack.outputs["batchApiUrl"],
        api_key=stack.outputs["batchApiKey"],
        timeout=60,
        http_client=httpx.Client(verify=stack.trust),
    )
    line = {
        "custom_id": "dr-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    }
    uploaded = client.files.create(file=("dr.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(
        lambda: (b := client.batches.retrieve(batch.id)).status in {"completed", "failed"} and b,
        TIMEOUT_S,
        f"batch {batch.id} to finish",
        interval=0.5,
    )
    assert done.status == "completed", done
    output = client.files.content(done.output_file_id).text

    taken = stack.docker("exec", "vllm-gb10-batch-worker", "python", "-m", "runtime.batch.backup", "snapshot")
    assert re.match(r"s3://\S+/backups/redis/\S+: \d+ keys, \d+ bytes$", taken.strip()), taken
    redis.Redis.from_url(stack.outputs["redisUrl"]).flushall()
    with pytest.raises(AuthenticationError):  # the API keys were in Redis too: the loss is total
        client.batches.retrieve(batch.id)

    restored = stack.docker(
        "exec", "vllm-gb10-batch-worker", "python", "-m", "runtime.batch.backup", "restore", "--replace"
    )
    assert restored.startswith("restored "), restored
    back = client.batches.retrieve(batch.id)
    assert (back.status, back.request_counts.completed, back.output_file_id) == (
        "completed",
        1,
        done.output_file_id,
    )
    assert client.files.content(back.output_file_id).text == output


def test_chat_through_the_load_balancer_reaches_both_hosts(stack: RunningStack) -> None:
    url = stack.outputs["loadBalancerUrl"] + "/chat/completions"
    backends: set[str] = set()
    key = {"Authorization": f"Bearer {stack.outputs['loadBalancerApiKey']}"}
    with httpx.Client(timeout=60, headers=key, verify=stack.trust) as http:
        for session in range(64):
            response = http.post(
                url,
                headers={"X-Session-ID": f"user-{session}"},
                json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            assert response.status_code == 200, response.text
            backends.add(response.headers["X-LB-Backend"])
            if len(backends) == 2:
                break
    assert backends == {"stella", "nova"}


OFFERED = ("tiny-llama", "tiny-llama-b")  # Pulumi.local.yaml: model, then models[0]


def test_each_offered_model_is_answered_by_its_own_servers_through_the_load_balancer(stack: RunningStack) -> None:
    base = stack.outputs["loadBalancerUrl"]
    key = {"Authorization": f"Bearer {stack.outputs['loadBalancerApiKey']}"}
    with httpx.Client(timeout=60, headers=key, verify=stack.trust) as http:
        listed = http.get(f"{base}/models")
        assert listed.status_code == 200, listed.text
        models = listed.json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"], m["owned_by"], m["loaded"]) for m in models["data"]] == [
            (name, "model", "vllm-gb10", True) for name in OFFERED
        ]
        for name in OFFERED:
            chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            response = http.post(f"{base}/chat/completions", json=chat)
            assert response.status_code == 200, response.text
            # vLLM answers 404 for a model it does not serve: this one came from that model's own server.
            assert response.json()["model"] == name
        missing = http.post(f"{base}/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert "tiny-llama, tiny-llama-b" in missing.json()["error"]["message"]
        assert http.get(f"{base}/models", headers={"Authorization": "Bearer sk-guess"}).status_code == 401


def test_the_load_balancer_serves_only_keys_it_knows_and_revokes_them_at_once(stack: RunningStack) -> None:
    url = stack.outputs["loadBalancerUrl"] + "/chat/completions"
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    def chat(key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(url, json=body, headers=headers, timeout=60, verify=stack.trust).status_code

    assert chat(None) == 401 and chat("sk-lb-guessed") == 401
    # vLLM itself refuses requests that do not come through the load balancer (it has its own key)
    vllm = stack.outputs["vllmUrls"][0] + "/chat/completions"
    assert httpx.post(vllm, json=body, timeout=60).status_code == 401
    keys_dir = Path(stack.local.overrides["remoteDir"]) / "stella" / "lb-keys"

    def lbkeys(*args: str) -> subprocess.CompletedProcess[str]:
        # as the README tells an operator to run it on the load balancer's host
        return subprocess.run(
            ["docker", "run", "--rm", "--user", "0", "-v", f"{keys_dir}:/keys", stack.outputs["runtimeImage"],
             "python", "-m", "runtime.lbkeys", *args],
            env=stack.docker_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    created = lbkeys("create", "alice")
    assert created.returncode == 0 and "applied to the running HAProxy" in created.stderr, created.stderr
    alice = created.stdout.strip()
    assert chat(alice) == 200
    revoked = lbkeys("revoke", "alice")
    assert revoked.returncode == 0 and "applied to the running HAProxy" in revoked.stderr, revoked.stderr
    assert chat(alice) == 401 and chat(stack.outputs["loadBalancerApiKey"]) == 200


def test_a_ray_job_through_the_jobs_api(stack: RunningStack) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs_api = stack.outputs["rayJobsAddress"]
    # Ray's token auth: without the token (the stack output rayAuthToken) nobody runs code on the cluster.
    refused = httpx.post(f"{jobs_api}/api/jobs/", json={"entrypoint": "touch /tmp/pwned"}, timeout=30)
    assert refused.status_code == 401, refused.text
    client = JobSubmissionClient(jobs_api, headers={"Authorization": f"Bearer {stack.outputs['rayAuthToken']}"})
    entrypoint = (
        'python -c "import ray; ray.init(); '
        "ips = ray.get([ray.remote(num_gpus=0.5)(lambda: ray.util.get_node_ip_address()).remote() for _ in range(4)]); "
        "print('nodes', sorted(set(ips)))\""
    )
    job = client.submit_job(entrypoint=entrypoint)
    status = wait_for(
        lambda: (s := client.get_job_status(job)) in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and s,
        TIMEOUT_S,
        f"Ray job {job}",
        interval=0.5,
    )
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "nodes [" in client.get_job_logs(job)


# Run on a Ray node through the Jobs API: who the node's OFFLOAD_DSN logs in as, and whether it may run a
# program on the database host (base64, so no shell quoting stands between the script and Python).
OFFLOAD_ROLE_PROBE = """
import os, psycopg
conn = psycopg.connect(os.environ["OFFLOAD_DSN"], autocommit=True)
row = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
print("role", row[0], "superuser", row[1])
try:
    conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    print("program ran")
except psycopg.errors.InsufficientPrivilege:
    print("program refused")
"""


def test_a_ray_job_reaches_postgres_as_the_offload_role_not_the_owner(stack: RunningStack) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(
        stack.outputs["rayJobsAddress"], headers={"Authorization": f"Bearer {stack.outputs['rayAuthToken']}"}
    )
    encoded = base64.b64encode(OFFLOAD_ROLE_PROBE.encode()).decode()
    job = client.submit_job(entrypoint=f"python -c \"import base64; exec(base64.b64decode('{encoded}'))\"")
    status = wait_for(
        lambda: (s := client.get_job_status(job)) in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and s,
        TIMEOUT_S,
        f"Ray job {job}",
        interval=0.5,
    )
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert "role offload superuser False" in logs and "program refused" in logs, logs
    # The owner's URL (the operator's output) is another role, a superuser.
    assert not stack.outputs["postgresUrl"].startswith("postgresql://offload:")


def test_the_post_deploy_check_passes_from_the_outputs_as_make_smoke_runs_it(stack: RunningStack) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.smoke", "--outputs", str(stack.local.outputs_file), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # Every vLLM server: two hosts times two offered models.
    assert done.stdout.count("ok: vLLM") == len(stack.outputs["vllmUrls"]) == 4
    assert "ok: chat completion through the load balancer" in done.stdout


def test_the_batch_services_hold_their_scoped_s3_users_and_never_the_root_credentials(stack: RunningStack) -> None:
    """Issue 37's proof by container inspect: the batch API and worker sign as the bucket-scoped users the
    set-up made (the worker's backups as the backups' user); the root key is in no batch container."""
    root_key, root_secret = stack.outputs["minioAccessKey"], stack.outputs["minioSecretKey"]
    containers = stack.containers()
    for name in ("vllm-gb10-batch-api", "vllm-gb10-batch-worker"):
        env = dict(item.split("=", 1) for item in containers[name]["Config"]["Env"])
        assert env["BATCH_S3_ACCESS_KEY_ID"] == "vllm-gb10-batch", name
        assert root_secret not in env.values() and root_key not in env.values(), name
    worker = dict(item.split("=", 1) for item in containers["vllm-gb10-batch-worker"]["Config"]["Env"])
    assert worker["BATCH_BACKUP_S3_ACCESS_KEY_ID"] == "vllm-gb10-backup"


def test_every_vllm_server_started_through_the_headroom_check_which_refuses_a_short_host(stack: RunningStack) -> None:
    """Each server's log opens with the check's figures; the same command, image and host network on a host
    whose MemAvailable is 1 GiB (a recorded meminfo on stdin, the test-only source) is refused with exit 75,
    naming the numbers, and vLLM never starts."""
    servers = {
        name: c
        for name, c in stack.containers().items()
        if c["Config"]["Labels"]["dev.vllm-gb10.service"].startswith("vllm-")
    }
    assert len(servers) == 4
    for name in servers:
        assert "headroom: ok: needed weights" in stack.docker_logs(name, since="0"), name
    server = servers["vllm-gb10-vllm-stella"]
    meminfo = "MemTotal:       131072000 kB\nMemFree:          524288 kB\nMemAvailable:    1048576 kB\n"
    done = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", "-e", "HEADROOM_MEMINFO=/proc/self/fd/0",
         server["Config"]["Image"], *server["Config"]["Cmd"]],
        input=meminfo, env=stack.docker_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 75, done.stdout[-2000:] + done.stderr[-2000:]
    assert "headroom: refusing to start: needed: weights " in done.stderr
    assert "available: 1.00 GiB on host stella (MemAvailable, short by " in done.stderr
    assert "vllm" not in done.stdout.lower() and len(done.stderr.strip().splitlines()) == 1, "vLLM never started"


def test_make_bench_box_measures_every_offered_model_through_the_stacks_balancer(
    stack: RunningStack, tmp_path: Path
) -> None:
    """`make bench-box STACK=local` as it runs it (the outputs file, the tiny Llama's tokenizer), a short sweep:
    vLLM's own `vllm bench serve` through HAProxy with the stack's key and CA, for both offered models."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.box", "--stack", "local", "--outputs", str(stack.local.outputs_file),
         "--concurrency", "1,2", "--prompts", "4", "--input-len", "32", "--output-len", "8",
         "--results-dir", str(tmp_path)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    for heading in ("req/s", "out tok/s", "TTFT p50/p99 ms", "ITL p50/p99 ms"):
        assert heading in done.stdout
    # The results folder also holds the tiny Llama's tokenizer that bench.box makes for a local stack.
    (summary,) = tmp_path.glob("*/summary.json")
    levels = json.loads(summary.read_text())["levels"]
    assert sorted((lv["model"], lv["concurrency"]) for lv in levels) == [
        ("tiny-llama", 1), ("tiny-llama", 2), ("tiny-llama-b", 1), ("tiny-llama-b", 2),
    ]  # fmt: skip
    assert all(lv["completed"] == 4 and lv["failed"] == 0 and lv["request_throughput"] > 0 for lv in levels), levels
    for model in ("tiny-llama", "tiny-llama-b"):
        assert f"170,000-request job, {model}: " in done.stdout


def test_prometheus_scrapes_every_target_and_loaded_the_rules(stack: RunningStack) -> None:
    base = stack.outputs["prometheusUrl"]

    def all_up() -> list[dict[str, Any]] | None:
        targets = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    try:
        targets = wait_for(all_up, 120, "every Prometheus target up", interval=0.5)
    except TimeoutError:
        targets = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        down_ = [(t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        raise AssertionError(f"targets not up: {down_}") from None
    jobs = {t["labels"]["job"] for t in targets}
    assert {"vllm", "haproxy", "batch-api", "batch-worker", "ray", "dcgm", "node"} <= jobs
    groups = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
    alerts = {rule["name"] for group in groups for rule in group["rules"]}
    expected = set(
        re.findall(r"^\s*- alert: (\w+)", (stack.local.project_dir / "infra/monitoring/alerts.yml").read_text(), re.M)
    )
    assert expected and alerts == expected


def test_a_service_that_fails_at_up_is_named_with_its_last_log_lines(stack: RunningStack, tmp_path: Path) -> None:
    """The up script's own failure report, run by the same engine: who is in trouble, and their last words."""
    from infra.platforms.compose import up_script
    from infra.render.compose import project_name

    image = stack.outputs["runtimeImage"]
    services = {
        "fine": {"command": ["sleep", "600"]},  # running, no health check: not in trouble
        "sick": {
            "command": ["sh", "-c", "echo sick-marker: cannot bind; sleep 600"],
            "healthcheck": {"test": ["CMD", "false"], "interval": "1s", "retries": 1},
        },
        "crashed": {"command": ["sh", "-c", "echo crash-marker: bad flag >&2; exit 3"]},
    }
    compose = {
        "services": {
            name: {"image": image, "init": True, "network_mode": "host", **svc} for name, svc in services.items()
        }
    }
    (tmp_path / "docker-compose.yml").write_text(json.dumps(compose))
    script = up_script(str(tmp_path), "probe", "test", wait_timeout=60)
    try:
        done = subprocess.run(
            ["sh", "-c", script], input="", env=stack.docker_env, capture_output=True, text=True, timeout=300
        )
    finally:
        subprocess.run(
            ["docker", "compose", "--project-name", project_name("probe"), "-f", str(tmp_path / "docker-compose.yml"),
             "down", "--timeout", "1"],
            env=stack.docker_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    report = done.stderr[done.stderr.index("services on probe not healthy") :]
    assert "crashed|exited||3" in report and "sick|running|" in report and "fine|running||0" in report
    assert "--- last log lines of crashed:\ncrash-marker: bad flag" in report
    assert "--- last log lines of sick:\nsick-marker: cannot bind" in report
    assert "last log lines of fine" not in report


def test_the_public_endpoints_serve_tls_that_the_stack_ca_verifies(stack: RunningStack) -> None:
    """Load balancer, batch API and Grafana: a client trusting the CA output verifies each (names
    included); one with the system's store alone refuses it; plain HTTP gets no API."""
    public = {
        "loadBalancerUrl": "/health",
        "batchApiUrl": "/health",
        "grafanaUrl": "/api/health",
    }
    for output, path in public.items():
        url = urlparse(stack.outputs[output])
        assert url.scheme == "https", output
        base = f"https://{url.netloc}"
        assert httpx.get(base + path, verify=stack.trust, timeout=30).status_code == 200, output
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(base + path, timeout=30)  # the system's trust store only
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{url.netloc}{path}", timeout=30).raise_for_status()
        with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
            with stack.trust.wrap_socket(raw, server_hostname=url.hostname) as tls:
                assert tls.version() in {"TLSv1.2", "TLSv1.3"}, output
    assert "BEGIN CERTIFICATE" in stack.outputs["tlsCaCertificate"]


def test_no_secret_in_rendered_files_container_config_or_logs(stack: RunningStack) -> None:
    secrets = stack.secrets()
    remote = Path(stack.local.overrides["remoteDir"])
    rendered = [p for p in remote.rglob("*") if p.is_file() and p.name != ".secrets.env"]
    assert rendered, f"no rendered files under {remote}"
    for path in rendered:
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"a secret in {path}"
    env_file = next(remote.rglob(".secrets.env"))
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    for name, info in stack.containers().items():
        visible = json.dumps(
            [
                info["Config"].get("Cmd"),
                info.get("Args"),
                info["Config"].get("Labels"),
                info["Config"].get("Entrypoint"),
            ]
        )
        assert not [s for s in secrets if s in visible], f"a secret in docker inspect of {name}"
        logs = subprocess.run(["docker", "logs", name], env=stack.docker_env, capture_output=True, text=True).stdout
        assert not [s for s in secrets if s in logs], f"a secret in the logs of {name}"


def _reapply(changed: LocalStack) -> list[str]:
    """`up` again with other config; its log lines, also printed as they come (`-s` shows a roll's progress)."""
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    up(changed, log=log)
    return lines


def _command_stderr(stack: RunningStack, name: str) -> str:
    found = State.load(stack.local.state_file).get("command:remote:Command", name)
    assert found is not None, name
    return str(found.outputs.get("stderr", ""))


def _submit(stack: RunningStack, tmp_path: Path, count: int, max_tokens: int) -> tuple[Any, str, list[str]]:
    from openai import OpenAI

    client = OpenAI(
        base_url=stack.outputs["batchApiUrl"],
        api_key=stack.outputs["batchApiKey"],
        timeout=60,
        http_client=httpx.Client(verify=stack.trust),
    )
    ids = [f"roll-{i}" for i in range(count)]
    body = {"model": "tiny-llama", "max_tokens": max_tokens, "ignore_eos": True}  # vLLM: every token generated
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
         "body": {**body, "messages": [{"role": "user", "content": f"count {cid}"}]}}
        for cid in ids
    ]  # fmt: skip
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    return client, batch.id, ids


class Chatter:
    """A user chatting through the load balancer every 250 ms, on a thread; every answer that is not a 200."""

    def __init__(self, stack: RunningStack):
        self.url = stack.outputs["loadBalancerUrl"] + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {stack.outputs['loadBalancerApiKey']}"}
        self.trust = stack.trust
        self.sent = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=120, headers=self.headers, verify=self.trust) as http:
            while not self.stop.wait(0.25):
                self.sent += 1
                body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
                try:
                    answer = http.post(self.url, headers={"X-Session-ID": f"chat-{self.sent % 16}"}, json=body)
                    if answer.status_code != 200:
                        self.errors.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=180)


ROLL_REQUESTS = 1500


def test_a_vllm_change_rolls_host_by_host_while_a_batch_and_a_chat_run_without_a_failure(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Issue 30's proof: a flag change recreates every vLLM server, one host after the other, drained first;
    a 1,500-request batch job on the http engine and a chat every 250 ms through the balancer see no error."""
    before = stack.containers()
    client, batch_id, ids = _submit(stack, tmp_path, ROLL_REQUESTS, max_tokens=48)
    wait_for(
        lambda: client.batches.retrieve(batch_id).request_counts.completed > 0, TIMEOUT_S, "the job's first answers"
    )
    chatter = Chatter(stack)
    changed = LocalStack(
        state_dir=stack.local.state_dir,
        overrides={**stack.local.overrides, "vllmExtraArgs": '["--enforce-eager", "--seed", "7"]'},
    )
    try:
        at_start = client.batches.retrieve(batch_id).request_counts.completed
        lines = _reapply(changed)
        at_end = client.batches.retrieve(batch_id).request_counts.completed
    finally:
        chatter.finish()
        stack.local = changed
    print(f"roll: job at {at_start}/{ROLL_REQUESTS} when it began, {at_end} when it ended; {chatter.sent} chats")
    assert at_start < ROLL_REQUESTS, "the job was running when the roll began"
    steps = [line.split()[2] for line in lines if re.search(r"-(drain|ready|compose-up) \(replaced", line)]
    order = ["stella-drain", "stella-compose-up", "stella-ready", "nova-drain", "nova-compose-up", "nova-ready"]
    assert [s for s in steps if s in order] == order, lines
    after = stack.containers()
    servers = {n: c for n, c in after.items() if c["Config"]["Labels"]["dev.vllm-gb10.service"].startswith("vllm-")}
    assert len(servers) == 4 and all(before[n]["Id"] != c["Id"] for n, c in servers.items()), "all recreated"
    kept = {n for n, c in after.items() if n not in servers and before.get(n, {}).get("Id") == c["Id"]}
    assert {"vllm-gb10-lb", "vllm-gb10-ray-head", "vllm-gb10-batch-worker"} <= kept, "nothing else restarted"
    started = {
        host: sorted(
            c["State"]["StartedAt"] for c in servers.values() if c["Config"]["Labels"]["dev.vllm-gb10.host"] == host
        )
        for host in ("stella", "nova")
    }
    assert started["stella"][-1] < started["nova"][0], f"one host after the other: {started}"
    assert "drained" in _command_stderr(stack, "nova-drain") and "in rotation" in _command_stderr(stack, "nova-ready")
    assert not chatter.errors, chatter.errors[:5]
    done = wait_for(
        lambda: (
            (b := client.batches.retrieve(batch_id)).status in {"completed", "failed", "expired", "cancelled"} and b
        ),
        TIMEOUT_S,
        f"batch {batch_id} to finish",
        interval=1,
    )
    assert done.status == "completed" and done.request_counts.failed == 0, done
    rows = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(ids), "every custom_id exactly once"
    assert all(r["response"]["status_code"] == 200 for r in rows)


def _stream_on(stack: RunningStack, host: str) -> tuple[httpx.Client, Any, Iterator[str]]:
    """A streamed chat through the balancer that its hash sends to `host`, with its first chunk read."""
    http = httpx.Client(
        timeout=300, headers={"Authorization": f"Bearer {stack.outputs['loadBalancerApiKey']}"}, verify=stack.trust
    )
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 200}
    for n in range(200):
        context = http.stream(
            "POST", stack.outputs["loadBalancerUrl"] + "/chat/completions",
            headers={"X-Session-ID": f"long-{n}"}, json={**body, "stream": True},
        )  # fmt: skip
        response = context.__enter__()
        if response.headers["X-LB-Backend"] == host:
            chunks = response.iter_lines()
            assert next(chunks).startswith("data: ")
            return http, context, chunks
        response.read()
        context.__exit__(None, None, None)
    raise AssertionError(f"no session went to {host}")


def test_config_changes_reach_exactly_the_services_they_affect(stack: RunningStack) -> None:
    """A changed balance factor is a reload of the running HAProxy: its container is kept and a stream in
    flight through it finishes. A batch setting recreates exactly the batch services."""
    before = {name: c["Id"] for name, c in stack.containers().items()}
    lb_cfg = stack.docker("exec", "vllm-gb10-lb", "cat", "/usr/local/etc/haproxy/haproxy.cfg")
    assert "hash-balance-factor 150" in lb_cfg
    # A stream held open across the reload: nova's server pauses mid-stream (nova's project does not change)
    # until HAProxy says its reload took; then the post-deploy check finds every server answering again.
    http, stream, chunks = _stream_on(stack, "nova")
    paused_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    stack.docker("pause", "vllm-gb10-vllm-nova")

    def unpause_once_reloaded() -> None:
        try:
            wait_for(
                lambda: "Loading success." in stack.docker_logs("vllm-gb10-lb", since=paused_at),
                TIMEOUT_S,
                "HAProxy's reload",
                interval=0.5,
            )
        finally:
            stack.unpause("vllm-gb10-vllm-nova")

    unpauser = threading.Thread(target=unpause_once_reloaded, daemon=True)
    unpauser.start()
    changed = LocalStack(
        state_dir=stack.local.state_dir,
        overrides={**stack.local.overrides, "lbBalanceFactor": "175", "batchChunkSize": "7"},
    )
    try:
        lines = _reapply(changed)
    finally:
        unpauser.join(timeout=TIMEOUT_S)
        stack.unpause("vllm-gb10-vllm-nova")
    rest = [line for line in chunks if line]
    stream.__exit__(None, None, None)
    http.close()
    assert rest[-1] == "data: [DONE]", rest[-3:]
    # The preflight runs on every `up` (a stamp replaces it), whatever changed.
    replaced = {line.split()[2] for line in lines if "(replaced" in line}
    assert {"stella-preflight", "nova-preflight"} <= replaced, lines
    assert not replaced & {"stella-drain", "nova-drain"}, "no server change: nothing rolls"
    after = stack.containers()
    recreated = {name for name, c in after.items() if before.get(name) != c["Id"]}
    assert recreated == {"vllm-gb10-batch-api", "vllm-gb10-batch-worker"}
    assert "lb: reloaded in place (SIGUSR2)" in _command_stderr(stack, "stella-compose-up")
    assert "hash-balance-factor 175" in stack.docker(
        "exec", "vllm-gb10-lb", "cat", "/usr/local/etc/haproxy/haproxy.cfg"
    )
    for name in ("vllm-gb10-batch-api", "vllm-gb10-batch-worker"):
        assert "BATCH_CHUNK_SIZE=7" in after[name]["Config"]["Env"]
    stack.local = changed
