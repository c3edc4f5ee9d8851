#!/bin/sh
# Preflight for one GB10 host, run over SSH before anything is deployed to it.
# Inputs (prepended as shell assignments by infra/components/host.py):
#   REQUIRE_GPU=1|0  MIN_FREE_GB=<int>  REMOTE_DIR=<path>  STACK_DIR=<path>  GPU_PATTERN=<grep -E pattern>
#   (REMOTE_DIR is this host's project directory, STACK_DIR the stack's remoteDir above it)
#   HOST_PROFILE=<name>  PROFILE_MEM_KIB=<int, 0: no memory check>  MEM_TOLERANCE_PCT=<int>  STACK_FILE=<name>
#   MEMINFO (optional, default /proc/meminfo: where MemTotal is read)
# Prints one "preflight ok: ..." line, or "preflight failed: <reason>" lines and exits 1.
# Each reason names the cause and the command that fixes it; a check that depends on one that
# failed is skipped rather than reported with a misleading cause.
set -u
failures=0
fail() { echo "preflight failed: $*" >&2; failures=$((failures + 1)); }
user=$(id -un)
group=$(id -gn)

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

docker_root=/var/lib/docker
if ! command -v docker >/dev/null 2>&1; then
    fail "docker not found"
else
    # `docker info` first: every later docker check needs the daemon, and a user who may not reach
    # its socket must be told that, not that a runtime is missing.
    if info=$(docker info --format '{{json .Runtimes}}' 2>&1); then
        if [ "${REQUIRE_GPU}" = "1" ]; then
            echo "${info}" | grep -q nvidia \
                || fail "NVIDIA container runtime not registered with docker (sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker)"
        fi
        docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
    else
        reason=$(echo "${info}" | grep -v '^WARNING' | head -n 1)
        if echo "${info}" | grep -qi "permission denied"; then
            fail "user ${user} is not in the docker group (permission denied on the docker socket): sudo usermod -aG docker ${user}, then log in again"
        elif echo "${info}" | grep -qiE "cannot connect|is the docker daemon running"; then
            fail "the Docker daemon is not running: sudo systemctl enable --now docker (docker info: ${reason})"
        else
            fail "docker info failed: ${reason}"
        fi
    fi
    docker compose version >/dev/null 2>&1 || fail "docker compose plugin missing"
fi

[ -d "${docker_root}" ] || docker_root=/
free_gb=$(df -Pk "${docker_root}" | awk 'NR==2 {print int($4 / 1048576)}')
[ "${free_gb}" -ge "${MIN_FREE_GB}" ] || fail "only ${free_gb} GB free under ${docker_root}, need ${MIN_FREE_GB}"

# The stack's remoteDir (default /opt/vllm-gb10) is normally made once by an admin, owned by the SSH
# user (README, deploy steps); with passwordless sudo the preflight makes it itself.
fix_dir="sudo install -d -o ${user} -g ${group} ${STACK_DIR} (or set remoteDir to a directory ${user} owns)"
if [ ! -d "${REMOTE_DIR}" ]; then
    mkdir -p "${REMOTE_DIR}" 2>/dev/null \
        || sudo -n install -d -o "$(id -u)" -g "$(id -g)" "${REMOTE_DIR}" 2>/dev/null \
        || fail "cannot create ${REMOTE_DIR}: ${STACK_DIR} is missing or not writable by ${user}: ${fix_dir}"
fi
if [ -d "${REMOTE_DIR}" ] && [ ! -w "${REMOTE_DIR}" ]; then
    fail "${REMOTE_DIR} is not writable by ${user}: sudo chown -R ${user}:${group} ${STACK_DIR}"
fi

if [ "${failures}" -gt 0 ]; then
    exit 1
fi
echo "preflight ok: gpu='${gpu}' free=${free_gb}GB dir=${REMOTE_DIR}${mem_kib:+ memory=${mem_kib}kB}"
