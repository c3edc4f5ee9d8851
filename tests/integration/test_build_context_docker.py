"""The real rung for the build context: what `docker build` sends, with the repository's .dockerignore.

A `FROM scratch` + `COPY . /ctx` image built from a copy of the tracked files holds exactly the
context the daemon received, and the classic builder's cache gives the same image ID when that context
is byte-for-byte the same. So: a README or stack-file edit must give the same ID, a runtime edit a new
one, and the files in /ctx must be the files infra/plan/context_hash.py hashes (the plan's model).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.docker_engine import Engine
from infra.plan.context_hash import context_files, ignore_patterns
from tests.integration.docker_fixtures import docker_engine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBE = "FROM scratch\nCOPY . /ctx\n"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with docker_engine(tmp_path_factory.mktemp("docker-state")) as found:
        yield found


def docker(engine: Engine, *args: str) -> str:
    done = subprocess.run(["docker", *args], env=engine.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def build(engine: Engine, context: Path, dockerfile: Path) -> str:
    return docker(engine, "build", "-q", "--network", "host", "-f", str(dockerfile), str(context)).splitlines()[-1]


def image_files(engine: Engine, image: str, tmp: Path) -> list[str]:
    container = docker(engine, "create", image, "/none")  # never started: scratch has no shell
    try:
        archive = tmp / "export.tar"
        docker(engine, "export", "-o", str(archive), container)
    finally:
        docker(engine, "rm", container)
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile() and m.name.startswith("ctx/")]
    return sorted((n.removeprefix("ctx/") for n in names), key=lambda p: p.split("/"))


def test_docker_sends_the_modelled_context_and_a_doc_edit_builds_the_same_image(engine: Engine, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for relative in tracked:
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, repo / relative)
    probe = tmp_path / "Dockerfile.probe"  # outside the context: the CLI sends it apart
    probe.write_text(PROBE)

    first = build(engine, repo, probe)
    sent = image_files(engine, first, tmp_path)
    assert sent == context_files(repo, ignore_patterns(repo, probe))
    assert "README.md" not in sent and "runtime/batch/api.py" in sent

    with (repo / "README.md").open("a") as f:
        f.write("\nAn edit of the docs.\n")
    with (repo / "Pulumi.stella.yaml").open("a") as f:
        f.write("  vllm-gb10:maxNumSeqs: 7\n")
    with (repo / "infra" / "program.py").open("a") as f:
        f.write("\n# an edit of the program\n")
    assert build(engine, repo, probe) == first

    with (repo / "runtime" / "batch" / "api.py").open("a") as f:
        f.write("\n# a runtime edit\n")
    assert build(engine, repo, probe) != first
