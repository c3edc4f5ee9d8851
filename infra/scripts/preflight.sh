#!/bin/sh
# Preflight for one GB10 host, run over SSH before anything is deployed to it.
# Inputs (prepended as shell assignments by infra/components/host.py):
#   REQUIRE_GPU=1|0  MIN_FREE_GB=<int>  REMOTE_DIR=<path>  GPU_PATTERN=<grep -E pattern>
#   HOST_PROFILE=<name>  PROFILE_MEM_KIB=<int, 0: no memory check>  MEM_TOLERANCE_PCT=<int>  STACK_FILE=<name>
#   MEMINFO (optional, default /proc/meminfo: where MemTotal is read)
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

# A unified-memory host (GB10) is sized from its profile: a 64 GB box planned as a 128 GB one would run out of
# memory, which on GB10 freezes the box. MemTotal is what the box has (CUDA reports the same pool).
if [ "${PROFILE_MEM_KIB:-0}" -gt 0 ]; then
    meminfo="${MEMINFO:-/proc/meminfo}"
    mem_kib=$(awk '$1 == "MemTotal:" {print $2}' "${meminfo}" 2>/dev/null)
    if [ -z "${mem_kib}" ]; then
        fail "cannot read MemTotal from ${meminfo}"
    else
        low=$((PROFILE_MEM_KIB * (100 - MEM_TOLERANCE_PCT) / 100))
        high=$((PROFILE_MEM_KIB * (100 + MEM_TOLERANCE_PCT) / 100))
        if [ "${mem_kib}" -lt "${low}" ] || [ "${mem_kib}" -gt "${high}" ]; then
            have=$(awk -v k="${mem_kib}" 'BEGIN {printf "%.1f", k / 1048576}')
            want=$(awk -v k="${PROFILE_MEM_KIB}" 'BEGIN {printf "%.1f", k / 1048576}')
            fail "this box has ${have} GiB of memory (MemTotal), but hostProfile ${HOST_PROFILE} plans for" \
                "${want} GiB (within ${MEM_TOLERANCE_PCT}%): set vllm-gb10:hostProfile in ${STACK_FILE} to" \
                "this box's profile (gb10: 128 GB, gb10-64: 64 GB)"
        fi
    fi
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
echo "preflight ok: gpu='${gpu}' free=${free_gb}GB dir=${REMOTE_DIR}${mem_kib:+ memory=${mem_kib}kB}"
