#!/bin/sh
# Preflight for one GB10 host, run over SSH before anything is deployed to it.
# Inputs (prepended as shell assignments by infra/components/host.py):
#   REQUIRE_GPU=1|0  MIN_FREE_GB=<int>  REMOTE_DIR=<path>  GPU_PATTERN=<grep -E pattern>
# Prints one "preflight ok: ..." line, or "preflight failed: <reason>" lines and exits 1.
set -u
failures=0
fail() { echo "preflight failed: $*" >&2; failures=$((failures + 1)); }

if [ "${REQUIRE_GPU}" = "1" ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        fail "nvidia-smi not found (install the NVIDIA driver)"
        gpu="none"
    else
        gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
        echo "${gpu}" | grep -Eq "${GPU_PATTERN}" || fail "GPU '${gpu}' does not match ${GPU_PATTERN}"
    fi
else
    gpu="not required"
fi

if ! command -v docker >/dev/null 2>&1; then
    fail "docker not found"
else
    docker compose version >/dev/null 2>&1 || fail "docker compose plugin missing"
    if [ "${REQUIRE_GPU}" = "1" ]; then
        docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
            || fail "NVIDIA container runtime not registered with docker (nvidia-ctk runtime configure)"
    fi
fi

docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
[ -d "${docker_root}" ] || docker_root=/
free_gb=$(df -Pk "${docker_root}" | awk 'NR==2 {print int($4 / 1048576)}')
[ "${free_gb}" -ge "${MIN_FREE_GB}" ] || fail "only ${free_gb} GB free under ${docker_root}, need ${MIN_FREE_GB}"

if [ ! -d "${REMOTE_DIR}" ]; then
    mkdir -p "${REMOTE_DIR}" 2>/dev/null || sudo -n install -d -o "$(id -u)" -g "$(id -g)" "${REMOTE_DIR}" \
        || fail "cannot create ${REMOTE_DIR}"
fi
[ -w "${REMOTE_DIR}" ] || fail "${REMOTE_DIR} is not writable by $(id -un)"

if [ "${failures}" -gt 0 ]; then
    exit 1
fi
echo "preflight ok: gpu='${gpu}' free=${free_gb}GB dir=${REMOTE_DIR}"
