"""Third-party images (issue 15 items 2 and 9): pinned by tag and digest to current releases, the S3
server is a maintained one (RustFS, not MinIO), its health check and the lifecycle policy see it, and
the GPU-memory panel shows what a unified-memory GB10 reports."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from infra.components.load_balancer import HAPROXY_IMAGE
from infra.components.monitoring import DCGM_EXPORTER_IMAGE, GRAFANA_IMAGE, NODE_EXPORTER_IMAGE, PROMETHEUS_IMAGE
from infra.components.object_store import S3_SERVER_IMAGE
from infra.components.postgres import POSTGRES_IMAGE
from infra.components.redis import REDIS_IMAGE
from infra.plan import PROJECT_DIR
from infra.platforms.image_refs import tag_only
from tests.plans import stack_plan
from tests.unit.test_policies import COPY, compose, good_service, stack_violations

PINNED = re.compile(r"^[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
BY_DIGEST = (REDIS_IMAGE, POSTGRES_IMAGE, HAPROXY_IMAGE, PROMETHEUS_IMAGE, GRAFANA_IMAGE, NODE_EXPORTER_IMAGE)
# No published multi-arch digest could be found for this tag (README "Third-party images"): tag only.
BY_TAG_ONLY = {DCGM_EXPORTER_IMAGE}


@pytest.mark.parametrize("ref", [*BY_DIGEST, S3_SERVER_IMAGE])
def test_third_party_images_are_pinned_by_tag_and_digest(ref: str) -> None:
    assert PINNED.match(ref), ref


def test_the_stella_compose_files_pull_every_third_party_image_by_digest_but_dcgm() -> None:
    plan = stack_plan("stella")
    ours = {plan.outputs["vllmImage"], plan.outputs["runtimeImage"]}
    images = {
        service["image"]
        for name, text in plan.files.items()
        if name.endswith("docker-compose.yml")
        for service in yaml.safe_load(text)["services"].values()
    } - ours
    assert images == {*BY_DIGEST, S3_SERVER_IMAGE, *BY_TAG_ONLY}
    assert "minio/" not in json.dumps(sorted(images)), "MinIO's images were removed from Docker Hub"


def test_tag_only_drops_just_the_digest() -> None:
    assert tag_only(S3_SERVER_IMAGE) == "rustfs/rustfs:1.0.0"
    assert tag_only("redis:8.8.3") == "redis:8.8.3"
    assert tag_only("registry.lan:5000/vllm-gb10:0.1.0") == "registry.lan:5000/vllm-gb10:0.1.0"


def _s3_service(stack: str, host: str = "stella") -> dict:
    text = stack_plan(stack).files[f"{host}/docker-compose.yml"]
    return yaml.safe_load(text)["services"]["minio"]


def test_the_s3_server_is_rustfs_on_the_cluster_address_with_its_secret_from_the_env_file() -> None:
    service = _s3_service("stella")
    assert service["image"] == S3_SERVER_IMAGE
    assert service["network_mode"] == "host"
    command = service["command"]
    assert command[0] == "rustfs" and command[-1] == "/data"
    assert command[command.index("--address") + 1] == "10.10.10.1:9000"
    assert command[command.index("--console-address") + 1] == "10.10.10.1:9001"
    env = service["environment"]
    assert env["RUSTFS_ACCESS_KEY"] == "vllm-gb10"
    assert env["RUSTFS_SECRET_KEY"].startswith("${RUSTFS_SECRET_KEY:?")
    assert env["RUSTFS_CHECK_UPDATE"] == "false"
    # RustFS's readiness endpoint, probed where the server listens (not localhost: it binds one address).
    assert service["healthcheck"]["test"] == [
        "CMD", "curl", "-fsS", "-o", "/dev/null", "http://10.10.10.1:9000/health/ready"
    ]  # fmt: skip


def test_edge_probes_rustfs_readiness_over_http() -> None:
    manifest = yaml.safe_load(stack_plan("edge").files["k8s/statefulset-minio.yaml"])
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == S3_SERVER_IMAGE
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


# --- the policy recognises the S3 server it guards


def _pair(days: int | None, image: str) -> dict:
    command = ["python", "-m", "runtime.batch.bucket", "--bucket", "batch"]
    command += ["--expire-days", str(days)] if days else []
    setup = good_service(image="reg/vllm-gb10-runtime:0.1.0", restart="on-failure", healthcheck=None, command=command)
    return compose({"minio": good_service(image=image), "minio-setup": setup})


@pytest.mark.parametrize("image", [S3_SERVER_IMAGE, tag_only(S3_SERVER_IMAGE)])
def test_result_lifecycle_sees_the_rustfs_server(image: str) -> None:
    assert stack_violations("result-lifecycle", [(COPY, _pair(7, image))]) == []
    assert stack_violations("result-lifecycle", [(COPY, _pair(30, image))])
    assert stack_violations("result-lifecycle", [(COPY, _pair(None, image))]), "no rule: results never expire"


def test_rustfs_access_key_is_an_id_but_its_secret_key_is_a_secret() -> None:
    from tests.unit.test_policies import violations

    ok = good_service(image=S3_SERVER_IMAGE, environment={"RUSTFS_ACCESS_KEY": "vllm-gb10"})
    assert violations("no-plaintext-secrets", COPY, compose({"minio": ok})) == []
    bad = good_service(image=S3_SERVER_IMAGE, environment={"RUSTFS_SECRET_KEY": "hunter2hunter2"})
    assert violations("no-plaintext-secrets", COPY, compose({"minio": bad}))


# --- dashboard: GB10 reports unified memory, not a framebuffer


def test_memory_panel_shows_unified_memory_not_dcgm_framebuffer() -> None:
    dashboard = json.loads((PROJECT_DIR / "infra" / "monitoring" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert not [e for e in exprs if "DCGM_FI_DEV_FB_" in e], "DCGM framebuffer fields do not exist on GB10"
    (panel,) = [p for p in dashboard["panels"] if "nified memory" in p["title"]]
    panel_exprs = {t["expr"] for t in panel["targets"]}
    assert panel_exprs == {
        "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "memguard_mem_available_bytes",  # what the memory guard reads and acts on
    }
    assert "DCGM_FI_DEV_FB_USED" in panel["description"], "the panel says why it is not a GPU-memory series"
