"""The batch services hold their scoped S3 users' keys, never the S3 server's root key, in every stack's
rendered plan (compose: the services' environment and the secrets env; kubernetes: the Deployments and
their Secrets). The users themselves are made by the bucket set-up (runtime.batch.s3_users)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
import yaml
from pulumi.runtime import rpc

from infra.components.object_store import ACCESS_KEY, BACKUP_ACCESS_KEY, BATCH_ACCESS_KEY
from infra.plan import Plan
from tests.plans import stack_plan

BATCH_SERVICES = ("batch-api", "batch-worker")


def _unwrap(value: Any) -> str:
    return str(rpc.unwrap_rpc_secret(value) if rpc.is_rpc_secret(value) else value)


def _data(value: Any) -> dict[str, Any]:
    data: dict[str, Any] = rpc.unwrap_rpc_secret(value) if rpc.is_rpc_secret(value) else value
    return data


def _fill(value: str, secrets: dict[str, str]) -> str:
    """A compose value with its ${NAME:?…} references to the secrets env file filled in."""
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: secrets[m.group(1)], value)


def _compose_envs(plan: Plan, names: tuple[str, ...] = BATCH_SERVICES) -> tuple[str, dict[str, dict[str, str]]]:
    """The root secret and each named service's environment, secrets filled in, over every host."""
    root, envs = "", {}
    for path, text in plan.files.items():
        if not path.endswith("/docker-compose.yml"):
            continue
        host = path.split("/", 1)[0]
        (up,) = [r for r in plan.recording.resources if r.name == f"{host}-compose-up"]
        lines = _unwrap(up.inputs["stdin"]).splitlines()
        secrets = {k: v.strip("'") for k, v in (line.split("=", 1) for line in lines)}
        root = secrets.get("RUSTFS_SECRET_KEY", root)
        services = yaml.safe_load(text)["services"]
        for name in names:
            if name in services:
                envs[name] = {k: _fill(str(v), secrets) for k, v in services[name]["environment"].items()}
    return root, envs


def _kubernetes_envs(plan: Plan, names: tuple[str, ...] = BATCH_SERVICES) -> tuple[str, dict[str, dict[str, str]]]:
    secrets = {
        r.name: {k: _unwrap(v) for k, v in _data(r.inputs["stringData"]).items()}
        for r in plan.recording.resources
        if r.type == "kubernetes:core/v1:Secret" and "stringData" in r.inputs
    }
    envs = {}
    for path, text in plan.files.items():
        workload = path.startswith(("k8s/deployment-", "k8s/statefulset-"))
        manifest = yaml.safe_load(text) if workload else None
        if manifest and manifest["metadata"]["name"] in names:
            name = manifest["metadata"]["name"]
            (container,) = manifest["spec"]["template"]["spec"]["containers"]
            plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            envs[name] = {**plain, **secrets[f"{name}-env"]}
    return secrets["minio-env"]["RUSTFS_SECRET_KEY"], envs


@pytest.mark.parametrize("stack", ["edge", "local", "stella"])
def test_no_batch_service_holds_the_s3_root_key(stack: str) -> None:
    plan = stack_plan(stack)
    root, envs = (_kubernetes_envs if stack == "edge" else _compose_envs)(plan)
    assert root and set(envs) == set(BATCH_SERVICES), (stack, envs.keys())
    for name, env in envs.items():
        leaks = [k for k, v in env.items() if root in v]
        assert leaks == [], f"{stack}: {name} holds the S3 root secret in {leaks}"
        assert env["BATCH_S3_ACCESS_KEY_ID"] == BATCH_ACCESS_KEY != ACCESS_KEY
        assert env["BATCH_S3_SECRET_ACCESS_KEY"] not in ("", root)
    worker = envs["batch-worker"]
    assert worker["BATCH_BACKUP_S3_ACCESS_KEY_ID"] == BACKUP_ACCESS_KEY
    assert worker["BATCH_BACKUP_S3_SECRET_ACCESS_KEY"] not in (root, worker["BATCH_S3_SECRET_ACCESS_KEY"])
    assert "BATCH_BACKUP_S3_SECRET_ACCESS_KEY" not in envs["batch-api"]  # the API takes no backups


@pytest.mark.parametrize("stack", ["edge", "local", "stella"])
def test_the_s3_server_holds_its_sse_master_key(stack: str) -> None:
    """SSE-S3 without a KMS needs RUSTFS_SSE_S3_MASTER_KEY (32 bytes, base64; runtime.batch.bucket), a
    generated secret: on compose from the secrets env file, on kubernetes from the server's Secret."""
    plan = stack_plan(stack)
    _, envs = (_kubernetes_envs if stack == "edge" else _compose_envs)(plan, ("minio",))
    key = envs["minio"]["RUSTFS_SSE_S3_MASTER_KEY"]
    assert len(base64.b64decode(key, validate=True)) == 32
