"""Every pip dependency our images install is pinned to one version.

Why: a build on a cold cache (a new builder, a CI runner) resolves again; an unpinned dependency then
gives the image new bytes and a new digest, and a new digest restarts vLLM, Ray and batch on every box
although nothing of ours changed. The locks are generated from the project venv (images/lock_vllm_cpu.py),
so they also say what the tests ran against.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

from images import lock_vllm_cpu as lock

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("Dockerfile.*")) + sorted(
    (ROOT / "images" / "standins").glob("*/Dockerfile")
)
# vLLM's own build requirements, from its release tag, in the optional source build: vLLM's to pin.
FOREIGN = {"requirements/build.txt"}
VALUE_OPTIONS = {"-r", "-c", "--find-links", "--extra-index-url", "--index-url"}


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in a Dockerfile's RUN instructions."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    installs = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        lexer = shlex.shlex(line[4:], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, parts = list(lexer), [[]]
        for token in tokens:
            if token in {"&&", ";", "||", "|"}:
                parts.append([])
            else:
                parts[-1].append(token)
        for words in parts:
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
                elif words[i : i + 3] == ["-m", "pip", "install"]:
                    installs.append(words[i + 3 :])
    return installs


def copied_from(dockerfile: Path, target: str) -> Path:
    """The context file a Dockerfile copies to `target`."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and words[-1] == target and not words[1].startswith("--from"):
            return (dockerfile.parent if "standins" in dockerfile.parts else ROOT) / words[1]
    raise AssertionError(f"{dockerfile.name}: nothing is copied to {target}")


def exact(line: str) -> bool:
    """`name==version` (hashes allowed); a build-arg version such as `cuml==${V}` is not one."""
    try:
        spec = Requirement(line.split(" --hash")[0].rstrip(" \\")).specifier
    except InvalidRequirement:
        return False
    return len(spec) == 1 and next(iter(spec)).operator == "=="


def requirement_lines(path: Path) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT / "images")))
def test_every_pip_install_is_pinned(dockerfile: Path) -> None:
    for args in pip_installs(dockerfile):
        files, named, i = [], [], 0
        while i < len(args):
            if args[i] in {"-r", "-c"}:
                files.append(args[i + 1])
            if args[i] in VALUE_OPTIONS:
                i += 2
                continue
            if not args[i].startswith(("-", "/", "$(")):
                named.append(args[i])
            i += 1
        for name in files:
            if name in FOREIGN or "base-pins" in name:  # base-pins: the base's own versions, frozen at build
                continue
            path = copied_from(dockerfile, name)
            unpinned = [line for line in requirement_lines(path) if not exact(line)]
            assert not unpinned, f"{dockerfile.name}: {path.name} pins no exact version of {unpinned}"
        loose = [a for a in named if not exact(a)]
        assert not loose, f"{dockerfile.name}: pip install {loose} without an exact version"
        pinned_deps = "-c" in args or "--no-deps" in args
        assert pinned_deps or set(files) <= FOREIGN, (
            f"{dockerfile.name}: pip install {args}: the dependencies are free (no -c lock, no --no-deps)"
        )


def test_cuml_is_one_release_checked_by_hash() -> None:
    lines = requirement_lines(ROOT / "images" / "requirements-cuml.txt")
    assert len(lines) == 1 and lines[0].startswith("cuml-cu13==26.2.0 ")
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", lines[0])
    assert len(hashes) >= 2  # at least the aarch64 wheel of the base's Python and one more


def test_the_locks_are_what_the_venv_holds() -> None:
    """A dependency added to requirements-*.txt without `python images/lock_vllm_cpu.py` fails here."""
    runtime = lock.requirement_lines(ROOT / "requirements-runtime.txt")
    offload = lock.requirement_lines(ROOT / "requirements-offload.txt")
    expected = {
        "requirements-runtime-lock.txt": lock.closure(runtime),
        "requirements-gb10.txt": {
            k: v for k, v in lock.closure(runtime + offload).items() if k not in lock.BASE_SUPPLIED
        },
    }
    for name, pins in expected.items():
        committed = lock.requirement_lines(ROOT / "images" / name)
        assert committed == [pins[k] for k in sorted(pins)], f"images/{name} is stale: run images/lock_vllm_cpu.py"
