"""Stack `local` is stella on one machine: the same program with another stack file, nothing else."""

from __future__ import annotations

import json
import re

import yaml

from infra.components.image import PYTHON_IMAGE
from infra.plan import PROJECT_DIR, build_plan
from infra.plan.stackfile import read_stack_file
from tests.plans import stack_plan

# What Pulumi.local.yaml changes, and why: loopback hosts, the CPU image and its tiny model, small disks,
# and third-party images by tag (stand-ins carry upstream's tags, never its digests).
EXPECTED_DIFFERENT_KEYS = {
    "hosts",
    "registry",
    "vllmDockerfile",
    "imagePlatform",
    "pullByDigest",
    "model",
    "servedModelName",
    "modelConfigFile",
    "models",  # a second tiny model (issue 20), so that the stack test routes by model
    "maxModelLen",
    "maxNumSeqs",
    "gpuMemoryUtilization",
    "kvCacheMemoryBytes",
    "vllmExtraArgs",
    "memoryReserveGib",  # the start-time headroom check's reserve: four CPU servers on one machine
    "minFreeDiskGb",
    "remoteDir",
    # the memory guard reads this shared 24 GiB machine's /proc: it acts only near exhaustion there
    "memguardPauseAvailableGib",
    "memguardShedAvailableGib",
    "memguardRecoverAvailableGib",
}


def _values(stack: str) -> dict[str, str]:
    return {k.split(":", 1)[1]: v for k, v in read_stack_file(PROJECT_DIR, stack).values.items()}


def test_local_differs_from_stella_only_in_these_stack_file_keys() -> None:
    stella, local = _values("stella"), _values("local")
    different = {k for k in stella.keys() | local.keys() if stella.get(k) != local.get(k)}
    # Secrets are placeholders in both; the private key name is the same.
    assert different == EXPECTED_DIFFERENT_KEYS


def test_stella_with_the_local_values_renders_exactly_the_local_files() -> None:
    """No code path depends on the stack's name: stella given local's values renders local's files byte for byte."""
    local_values = _values("local")
    as_stella = build_plan("stella", overrides=local_values)
    local = stack_plan("local")
    assert as_stella.files == local.files
    assert set(local.files) >= {"stella/docker-compose.yml", "nova/docker-compose.yml", "stella/haproxy.cfg"}


def test_local_hosts_are_loopback_and_use_the_same_names_and_roles_as_stella() -> None:
    stella = yaml.safe_load((PROJECT_DIR / "Pulumi.stella.yaml").read_text())["config"]["vllm-gb10:hosts"]
    local = json.loads(_values("local")["hosts"])
    assert [(h["name"], sorted(h["roles"])) for h in local] == [(h["name"], sorted(h["roles"])) for h in stella]
    assert all(h["address"].startswith("127.") for h in local)


def test_every_third_party_image_of_the_local_stack_has_a_stand_in() -> None:
    """What the compose files and our Dockerfiles pull must exist here: each is pulled or stood in."""
    from infra.local.images import STANDINS

    plan = stack_plan("local")
    ours = {ref for ref in (plan.outputs["vllmImage"], plan.outputs["runtimeImage"])}
    referenced = {
        service["image"]
        for name, text in plan.files.items()
        if name.endswith("docker-compose.yml")
        for service in yaml.safe_load(text)["services"].values()
    } - ours
    builds = {r["name"]: r["inputs"] for r in plan.resources if r["type"] == "docker-build:index:Image"}
    bases = {b["buildArgs"]["PYTHON_IMAGE"] for b in builds.values()}  # what FROM ${PYTHON_IMAGE} takes here
    assert referenced and bases == {"python:3.11.14-slim-bookworm"}
    assert referenced | bases == {tag for _, tag in STANDINS}


def test_our_dockerfiles_build_from_the_pinned_python_base_and_stella_passes_no_other() -> None:
    """The Dockerfiles' default base is the component's digest-pinned reference; only a stack that runs
    stand-ins (pullByDigest: false) replaces it, by the tag alone."""
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.runtime"):
        text = (PROJECT_DIR / "images" / dockerfile).read_text()
        assert re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M) == [PYTHON_IMAGE], dockerfile
        assert set(re.findall(r"^FROM (\S+)", text, re.M)) == {"${PYTHON_IMAGE}"}, dockerfile
    stella = build_plan("stella", overrides={"vllmDockerfile": "images/Dockerfile.cpu", "imagePlatform": ""})
    for build in (r["inputs"] for r in stella.resources if r["type"] == "docker-build:index:Image"):
        assert "PYTHON_IMAGE" not in build.get("buildArgs", {})


def _third_party_images(plan: object) -> dict[str, str]:
    """service name -> image, for every compose service that runs a third-party image."""
    ours = {plan.outputs["vllmImage"], plan.outputs["runtimeImage"]}  # type: ignore[attr-defined]
    return {
        f"{name.split('/')[0]}/{service_name}": service["image"]
        for name, text in plan.files.items()  # type: ignore[attr-defined]
        if name.endswith("docker-compose.yml")
        for service_name, service in yaml.safe_load(text)["services"].items()
        if service["image"] not in ours
    }


def test_local_runs_stellas_third_party_images_by_their_tags() -> None:
    """The only image difference: stella pulls name:tag@sha256:…, local runs name:tag (its stand-in)."""
    from infra.platforms.image_refs import tag_only

    stella, local = _third_party_images(stack_plan("stella")), _third_party_images(stack_plan("local"))
    assert stella.keys() == local.keys()
    assert {k: tag_only(v) for k, v in stella.items()} == local
    assert all("@sha256:" not in ref for ref in local.values())


def test_no_two_ray_nodes_on_the_local_machine_share_a_port_that_ray_binds_on_every_interface() -> None:
    """The local stack's two "hosts" are one machine's network: Ray's metrics exporter listens on 0.0.0.0,
    so two nodes with one --metrics-export-port leave the second's agent, and its raylet, dead."""
    plan = stack_plan("local")
    ports = [
        arg.split("=", 1)[1]
        for host in ("stella", "nova")
        for service in yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"].values()
        for arg in service.get("command") or ()
        if isinstance(arg, str) and arg.startswith("--metrics-export-port=")
    ]
    assert len(ports) == 3 and len(set(ports)) == 3, ports
