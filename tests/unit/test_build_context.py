"""What the images' build context holds, and what an edit does to the plan.

pulumi-docker-build rebuilds an image when the hash of its context changes, and a rebuilt image
restarts every service that runs it. The context must hold only what the Dockerfiles COPY, and the
offline plan must hash it as the provider does (infra/plan/context_hash.py), so that the plan shows a
doc edit as no change and a runtime edit as new images.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from infra import program
from infra.plan import build_plan
from infra.plan.context_hash import context_files, context_hash, go_file_mode, ignore_patterns
from infra.plan.diff import diff_plans, format_diff

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("Dockerfile.*"))


def copy_sources(dockerfile: Path) -> set[str]:
    """The context paths a Dockerfile's COPY/ADD instructions read (not `--from` stages)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: set[str] = set()
    for line in text.splitlines():
        words = shlex.split(line.split("#", 1)[0]) if line.strip() and not line.lstrip().startswith("#") else []
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources.update(a.rstrip("/") for a in args[:-1])
    return sources


def tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_context_holds_exactly_what_the_dockerfiles_copy() -> None:
    sources = set().union(*(copy_sources(d) for d in DOCKERFILES))
    assert {"runtime", "requirements-runtime.txt"} <= sources
    files = context_files(ROOT, ignore_patterns(ROOT, DOCKERFILES[0]))
    outside = [f for f in files if not any(f == s or f.startswith(f"{s}/") for s in sources)]
    assert not outside, f"sent to the builder but copied by no Dockerfile: {outside}"
    tracked = tracked_files()
    for source in sources:
        under = [f for f in tracked if f == source or f.startswith(f"{source}/")]
        assert under, f"{source} is copied but nothing of it is tracked"
        missing = [f for f in under if f not in files and "__pycache__" not in f]
        assert not missing, f"copied by a Dockerfile but kept out of the context: {missing}"


def test_go_file_modes_read_as_go_writes_them() -> None:
    assert go_file_mode(0o100644) == "-rw-r--r--"
    assert go_file_mode(0o100755) == "-rwxr-xr-x"
    assert go_file_mode(0o120777) == "Lrwxrwxrwx"


def test_the_hash_covers_content_names_and_the_dockerfile_but_not_ignored_files(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.py").write_text("a\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY app /app\n")
    (tmp_path / ".dockerignore").write_text("*\n!app/\n")
    dockerfile = tmp_path / "Dockerfile"
    first = context_hash(tmp_path, dockerfile)
    (tmp_path / "README.md").write_text("docs\n")
    assert context_hash(tmp_path, dockerfile) == first
    (tmp_path / "app" / "a.py").rename(tmp_path / "app" / "b.py")
    renamed = context_hash(tmp_path, dockerfile)
    assert renamed != first
    (tmp_path / "app" / "b.py").chmod(0o755)
    assert context_hash(tmp_path, dockerfile) != renamed
    # <Dockerfile>.dockerignore wins over the context's, as in the provider's getIgnorePatterns
    (tmp_path / "Dockerfile.dockerignore").write_text("*\n")
    assert context_files(tmp_path, ignore_patterns(tmp_path, dockerfile)) == []


@pytest.fixture()
def repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tracked files in a scratch folder, which the program builds its images from."""
    copy = tmp_path / "repo"
    for relative in tracked_files():
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    monkeypatch.setattr(program, "REPO_ROOT", copy)
    monkeypatch.chdir(copy)
    return copy


def test_a_doc_or_stack_file_edit_changes_nothing_and_a_runtime_edit_rebuilds_the_images(repo_copy: Path) -> None:
    before = build_plan("stella", repo_copy)
    with (repo_copy / "README.md").open("a") as f:
        f.write("\nAn edit of the docs.\n")
    with (repo_copy / "Pulumi.edge.yaml").open("a") as f:
        f.write("  vllm-gb10:maxNumSeqs: 7\n")  # another stack's file
    with (repo_copy / "Pulumi.stella.yaml").open("a") as f:
        f.write("# a comment in the stack's own file\n")
    with (repo_copy / "tests" / "unit" / "test_config.py").open("a") as f:
        f.write("\n# a test edit\n")
    after = build_plan("stella", repo_copy)
    quiet = diff_plans(before.to_json(), after.to_json(), before.files, after.files)
    assert quiet.empty, format_diff(quiet)
    assert {name for _, name in quiet.every_run} == {"stella-preflight", "nova-preflight"}

    with (repo_copy / "runtime" / "batch" / "api.py").open("a") as f:
        f.write("\n# a runtime edit\n")
    edited = build_plan("stella", repo_copy)
    diff = diff_plans(after.to_json(), edited.to_json(), after.files, edited.files)
    images = {n for t, n in diff.changed if t == "docker-build:index:Image"}
    assert images == {"vllm-image-build", "runtime-image-build"}, format_diff(diff)
    assert not [k for k in diff.replaced if k[0] == "docker-build:index:Image"], "a rebuild is an update"
    replaced = {n for _, n in diff.replaced}
    assert {"stella-compose-up", "nova-compose-up"} <= replaced  # new digests restart the services
    copies = {n for t, n in diff.changed if t == "command:remote:CopyToRemote"}
    assert "stella-compose-docker-compose.yml" in copies and not copies & replaced, "a new file is an update"


def test_a_file_git_ignores_in_the_context_changes_no_committed_plan(repo_copy: Path) -> None:
    """`make stack-up` links a torch wheel into .whl/ (git ignores it): the plans stay those of the repository."""
    subprocess.run(["git", "init", "-q"], cwd=repo_copy, check=True)
    before = build_plan("local", repo_copy)
    (repo_copy / ".whl" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"a wheel")
    (repo_copy / "runtime" / "batch" / "__pycache__").mkdir(exist_ok=True)
    (repo_copy / "runtime" / "batch" / "__pycache__" / "api.cpython-311.pyc").write_bytes(b"bytecode")
    after = build_plan("local", repo_copy)
    diff = diff_plans(before.to_json(), after.to_json(), before.files, after.files)
    assert diff.empty, format_diff(diff)
    (repo_copy / "runtime" / "new_module.py").write_text("'''not yet committed, not ignored: it ships'''\n")
    added = build_plan("local", repo_copy)
    changed = diff_plans(after.to_json(), added.to_json())
    assert {n for t, n in changed.changed if t == "docker-build:index:Image"} == {
        "vllm-image-build",
        "runtime-image-build",
    }
