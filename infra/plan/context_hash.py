"""The build-context hash pulumi-docker-build compares to decide whether an image must be rebuilt.

Why: an `Image` is rebuilt (and pushed under a new digest, which restarts every service that runs it)
whenever this hash differs from the one in state, so the offline plan must compute it the same way to
show what an edit really does. pulumi-docker-build v0.0.22, provider/internal/context.go:
- `getIgnorePatterns`: the patterns of `<Dockerfile>.dockerignore` if that file exists, else of
  `<context>/.dockerignore` (moby's ignorefile.ReadAll);
- `hashBuildContext`: sha256 over the Dockerfile's content (`hashDockerfile`: not its name, and hashed
  even when the ignore file excludes it), then `hashPath` over the context filtered by those patterns
  (fsutil.NewFilterFS, walked in lexical order per directory);
- `hashFile`: for each regular file or symlink (followed), its content, then its slash-separated
  relative path, then Go's `FileMode.String()` (e.g. `-rw-r--r--`); directories add nothing.
provider/internal/image.go, `(*Image) Diff`: a changed hash is `diff["contextHash"] = update`, an update
(a rebuild), never a replacement.
The patterns are matched with the Docker SDK's PatternMatcher (a port of moby's), so the files hashed
are the files `docker build` sends; tests/integration/test_build_context_docker.py checks that against
a real Docker Engine.

One departure, on purpose: in a git checkout, files git ignores are left out (a local torch wheel in
.whl/, which `make stack-up` links there). The provider would hash them too, but then the committed
plans (tests/snapshots) would depend on what lies around one machine's checkout rather than on the
repository. What a clean clone sends is what the plan hashes.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from docker.utils.build import PatternMatcher


def ignore_patterns(context: Path, dockerfile: Path) -> list[str]:
    """The patterns that apply, as pulumi-docker-build picks them; comments and blank lines dropped."""
    for candidate in (Path(f"{dockerfile}.dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            lines = (line.strip() for line in candidate.read_text().splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    return []


def not_git_ignored(context: Path) -> set[str] | None:
    """Files under `context` that git tracks or would add (not ignored), relative to it; None outside a
    git checkout (then every file counts)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(context), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        return None
    if done.returncode != 0:
        return None
    return {p for p in done.stdout.decode().split("\0") if p}


def context_files(context: Path, patterns: list[str], *, git_filter: bool = True) -> list[str]:
    """Relative paths of the regular files (and symlinks) the context sends, in the provider's walk order
    (`git_filter`: less what git ignores, see the module's docstring)."""
    matcher = PatternMatcher(patterns)
    # The SDK always keeps `.dockerignore` (the CLI sends it to the daemon, which drops it again when the
    # patterns exclude it); fsutil's filter, which the provider hashes through, has no such exception.
    forced = matcher.patterns.pop()
    if not (forced.exclusion and forced.cleaned_pattern == ".dockerignore"):
        raise RuntimeError(f"docker.utils.build.PatternMatcher changed: last pattern {forced.cleaned_pattern!r}")
    known = not_git_ignored(context) if git_filter else None
    kept = []
    for relative in matcher.walk(str(context)):
        path = context / relative
        if (path.is_symlink() or path.is_file()) and (known is None or relative in known):
            kept.append(relative)
    return sorted(kept, key=lambda p: p.split("/"))


def go_file_mode(mode: int) -> str:
    """Go's os.FileMode.String() for a regular file or symlink (`-rw-r--r--`, `Lrwxrwxrwx`)."""
    kind = "L" if stat.S_ISLNK(mode) else "-"
    bits = "rwxrwxrwx"
    return kind + "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate(bits))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def context_hash(context: Path, dockerfile: Path) -> str:
    """Hex sha256 of the Dockerfile and the filtered context, as pulumi-docker-build's hashBuildContext."""
    h = hashlib.sha256()
    if dockerfile.is_file():
        h.update(dockerfile.read_bytes())
    if context.is_dir():
        for relative in context_files(context, ignore_patterns(context, dockerfile)):
            path = context / relative
            if path.is_dir():  # a symlink to a directory: the provider skips it (EISDIR)
                continue
            for chunk in _chunks(path):
                h.update(chunk)
            h.update(relative.encode())
            h.update(go_file_mode(path.lstat().st_mode).encode())
    return h.hexdigest()
