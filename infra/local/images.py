"""Stand-in images for the local stack: no image registry is reachable here, so nothing can be pulled.

Every third-party image our compose files name is rebuilt on this machine from Debian packages (or
PyPI, for the S3 server) and tagged with its upstream name, so the rendered compose file runs as is.
One `mmdebstrap` root file system, imported into Docker, is the base all of them build on; each
stand-in's Dockerfile and helper scripts live in images/standins/<dir>/ (that folder is its build
context). A build is skipped when the image carries the digest of its inputs, so an edit rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDINS_DIR = REPO_ROOT / "images" / "standins"
BASE_IMAGE = "vllm-gb10-standin-base:bookworm"
DIGEST_LABEL = "dev.vllm-gb10.standin-sha256"

# The mirrors this machine's apt uses (/etc/apt/sources.list.d/debian.sources), written out so the
# build does not depend on the host being Debian. http: apt verifies the signed Release files itself.
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Everything any stand-in runs, installed once. No python3-pip: the python stand-in and the S3 server
# use virtual environments (ensurepip, from python3-venv), so pip never fights Debian's own packages.
BASE_PACKAGES = (
    "bash",
    "ca-certificates",
    "procps",
    "wget",
    "python3",
    "python3-venv",
    "python3-yaml",
    "libnuma1",  # vLLM's CPU kernels link it
    "redis-server",
    "redis-tools",
    "postgresql-15",
    "haproxy",
    "prometheus",
    "prometheus-node-exporter",
)
# Slim like the upstream images: no manuals, docs (copyright kept), translations, nor the 200 MB of
# unpacked time-zone tables Debian's Prometheus UI drags in through libjs-moment-timezone.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/javascript/moment-timezone/data/unpacked/*",
    "path-exclude=/usr/share/javascript/moment-timezone/data/meta/*",
)
# postgresql-15 would create a "main" cluster at install time; the entrypoint runs initdb instead.
NO_MAIN_CLUSTER_HOOK = (
    'mkdir -p "$1/etc/postgresql-common/createcluster.d"'
    ' && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/standin.conf"'
)
# As Debian's own Docker images do: apt keeps no package caches (80 MB per `apt-get update` layer).
APT_DOCKER_CLEAN_HOOK = (
    "printf '%s\\n'"
    """ 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };'"""
    """ 'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };'"""
    """ 'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' 'Acquire::Languages "none";'"""
    ' > "$1/etc/apt/apt.conf.d/docker-clean"'
    ' && rm -f "$1"/var/cache/apt/*.bin'  # with those settings mmdebstrap's `apt-get clean` leaves them
)
# pip inside the containers must trust what this machine trusts (a TLS-inspecting proxy, maybe).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
    'CMD ["bash"]',
)

# (folder under images/standins, upstream tag), in build order. The components pin these images by
# tag and digest; stack `local` (pullByDigest: false) references them by these tags, which a locally
# built image can carry (never upstream's digest).
STANDINS: tuple[tuple[str, str], ...] = (
    ("python", "python:3.11.14-slim-bookworm"),
    ("redis", "redis:8.8.3"),
    ("pgvector", "pgvector/pgvector:0.8.6-pg17-bookworm"),
    ("haproxy", "haproxy:3.2.24-alpine"),
    ("prometheus", "prom/prometheus:v3.15.0"),
    ("node-exporter", "prom/node-exporter:v1.12.1"),
    ("grafana", "grafana/grafana:13.2.3"),
    ("dcgm-exporter", "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.2-4.8.1-ubuntu22.04"),
    ("rustfs", "rustfs/rustfs:1.0.0"),
)

Log = Callable[[str], None]
_TAIL_LINES = 40


def _env(docker_env: Mapping[str, str]) -> dict[str, str]:
    """The caller's DOCKER_HOST etc. over ours; the classic builder, as there is no buildx here."""
    return {**os.environ, **docker_env, "DOCKER_BUILDKIT": "0"}


def _run(argv: Sequence[str], docker_env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=_env(docker_env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def _fail(what: str, result: subprocess.CompletedProcess[str], log_file: Path) -> RuntimeError:
    """An error that names the image and shows why, without the caller having to open the log."""
    tail = "\n".join(result.stdout.splitlines()[-_TAIL_LINES:])
    return RuntimeError(f"{what} failed (exit {result.returncode}); full log {log_file}; last lines:\n{tail}")


def _inspect(docker_env: Mapping[str, str], ref: str) -> dict[str, object] | None:
    result = _run(["docker", "image", "inspect", "--format", "{{json .}}", ref], docker_env)
    if result.returncode != 0:
        return None
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _label(docker_env: Mapping[str, str], ref: str, key: str) -> str | None:
    data = _inspect(docker_env, ref)
    config = data.get("Config") if data else None
    labels = config.get("Labels") if isinstance(config, dict) else None
    value = labels.get(key) if isinstance(labels, dict) else None
    return value if isinstance(value, str) else None


def _image_id(docker_env: Mapping[str, str], ref: str) -> str:
    data = _inspect(docker_env, ref)
    return str(data["Id"]) if data else ""


def tree_digest(folder: Path, *extra: str) -> str:
    """sha256 of every file's relative path and bytes under `folder` (caches skipped), plus `extra`."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        h.update(item.encode() + b"\0")
    return h.hexdigest()


def _base_digest() -> str:
    """What the base is made of: suite, mirrors, packages, options and this machine's CA bundle."""
    parts = [DEBIAN_SUITE, *DEBIAN_SOURCES, *BASE_PACKAGES, *DPKG_EXCLUDES, NO_MAIN_CLUSTER_HOOK, APT_DOCKER_CLEAN_HOOK]
    parts += BASE_CHANGES
    if HOST_CA_BUNDLE.is_file():
        parts.append(hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def build_base(docker_env: Mapping[str, str], work_dir: Path, *, log: Log = print) -> str:
    """mmdebstrap one Debian root file system with every stand-in's packages and `docker import` it."""
    digest = _base_digest()
    if _label(docker_env, BASE_IMAGE, DIGEST_LABEL) == digest:
        log(f"{BASE_IMAGE}: up to date")
        return BASE_IMAGE
    work_dir.mkdir(parents=True, exist_ok=True)
    tarball, log_file = work_dir / "standin-base.tar", work_dir / "standin-base.log"
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
    argv += ['--aptopt=APT::Install-Recommends "false"', *(f"--dpkgopt={o}" for o in DPKG_EXCLUDES)]
    argv += [f"--essential-hook={NO_MAIN_CLUSTER_HOOK}", f"--customize-hook={APT_DOCKER_CLEAN_HOOK}"]
    if HOST_CA_BUNDLE.is_file():
        argv += [f"--customize-hook=copy-in {HOST_CA_BUNDLE} /etc/ssl/certs"]
    argv += [DEBIAN_SUITE, str(tarball), *DEBIAN_SOURCES]
    log(f"{BASE_IMAGE}: mmdebstrap {DEBIAN_SUITE} ({len(BASE_PACKAGES)} packages and their dependencies)")
    try:
        result = _run(argv, docker_env)
        log_file.write_text(result.stdout)
        if result.returncode != 0:
            raise _fail(f"mmdebstrap for {BASE_IMAGE}", result, log_file)
        changes = [*BASE_CHANGES, f"LABEL {DIGEST_LABEL}={digest}"]
        argv = ["docker", "import", *(f"--change={c}" for c in changes), str(tarball), BASE_IMAGE]
        result = _run(argv, docker_env)
        with log_file.open("a") as f:
            f.write(result.stdout)
        if result.returncode != 0:
            raise _fail(f"docker import of {BASE_IMAGE}", result, log_file)
    finally:
        tarball.unlink(missing_ok=True)
    return BASE_IMAGE


def _parent(dockerfile: Path) -> str:
    """The image the last stage starts FROM, so that a rebuilt parent rebuilds its children."""
    parents = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.upper().startswith("FROM ")]
    return parents[-1] if parents else ""


def build_standins(docker_env: dict[str, str], work_dir: Path, *, log: Log = print) -> list[str]:
    """Build the base and every stand-in that is missing or out of date; returns the upstream tags.

    `docker_env` selects the daemon (DOCKER_HOST); `work_dir` takes the base's tarball while it is
    imported, and one build log per image. Raises RuntimeError naming the image that failed.
    """
    replaced = [_image_id(docker_env, BASE_IMAGE)]
    base_ready = False
    tags: list[str] = []
    for folder_name, tag in STANDINS:
        if upstream_image(docker_env, tag, log=log):
            tags.append(tag)
            continue
        if not base_ready:
            build_base(docker_env, work_dir, log=log)
            base_ready = True
        folder = STANDINS_DIR / folder_name
        dockerfile = folder / "Dockerfile"
        digest = tree_digest(folder, _image_id(docker_env, _parent(dockerfile)))
        tags.append(tag)
        if _label(docker_env, tag, DIGEST_LABEL) == digest:
            log(f"{tag}: up to date")
            continue
        replaced.append(_image_id(docker_env, tag))
        log(f"{tag}: building from images/standins/{folder_name}")
        argv = ["docker", "build", "--network", "host", "--force-rm", "--label", f"{DIGEST_LABEL}={digest}"]
        argv += ["--tag", tag, "--file", str(dockerfile), str(folder)]
        result = _run(argv, docker_env)
        log_file = work_dir / f"standin-{folder_name}.log"
        work_dir.mkdir(parents=True, exist_ok=True)
        log_file.write_text(result.stdout)
        if result.returncode != 0:
            raise _fail(f"building {tag}", result, log_file)
    _remove_replaced(docker_env, replaced)
    return tags


def upstream_image(docker_env: Mapping[str, str], tag: str, *, log: Log = print) -> bool:
    """True when the real upstream image is here or can be pulled (a machine that reaches its registry).

    An image under that tag that carries our digest label is a stand-in, not the upstream image.
    """
    if _inspect(docker_env, tag) is not None:
        return _label(docker_env, tag, DIGEST_LABEL) is None
    if _run(["docker", "pull", "--quiet", tag], docker_env).returncode == 0:
        log(f"{tag}: pulled from its registry")
        return True
    return False


def _remove_replaced(docker_env: Mapping[str, str], image_ids: Sequence[str]) -> None:
    """Drop the images that rebuilt tags left untagged (children first), so disk use stays flat.

    Best effort: an image still tagged, or used by a container, stays (docker refuses, we move on).
    """
    for image_id in reversed(image_ids):
        data = _inspect(docker_env, image_id) if image_id else None
        if data is not None and not data.get("RepoTags"):
            _run(["docker", "image", "rm", image_id], docker_env)
