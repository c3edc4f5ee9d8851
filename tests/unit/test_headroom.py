"""The start-time headroom check (issue 31 item 2): its decision over recorded /proc/meminfo, the figures
the stacks' rendered commands hand it, and the wrapper as a real process (it refuses naming the numbers,
or it becomes the command it was given)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.components.vllm import with_headroom
from infra.plan import Plan, build_plan
from infra.vllm_sizing import engine_args, headroom_need, size_vllm
from runtime.headroom import GIB, MEMINFO_ENV, REFUSED, MeminfoError, Need, mem_available, verdict
from runtime.kvcache import PROFILES, load_model_shape
from runtime.kvcache.catalog import catalog_config
from tests.plans import stack_plan
from tests.unit.test_config import load_with
from tests.unit.test_stella_program import OFFLINE_APART

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "meminfo" / "recorded-24g.txt"  # this machine's /proc/meminfo, as read
RECORDED_AVAILABLE = 22377680 * 1024  # its MemAvailable line: 22377680 kB
SERVER = "vllm.entrypoints.openai.api_server"
GB10_OVERHEAD = round(PROFILES["gb10"].overhead_gib * GIB)


def meminfo(tmp_path: Path, available_kib: int | None, **lines: str) -> Path:
    """The recorded file with its MemAvailable set (None: the line removed) and other lines replaced."""
    out = []
    for line in RECORDED.read_text().splitlines():
        key = line.split(":", 1)[0]
        if key == "MemAvailable":
            if available_kib is None:
                continue
            line = f"MemAvailable:   {available_kib} kB"
        line = lines.get(key, line)
        out.append(line)
    path = tmp_path / "meminfo"
    path.write_text("\n".join(out) + "\n")
    return path


# --- the decision over recorded meminfo ---------------------------------------------------------------------


def test_mem_available_reads_the_recorded_file_in_bytes() -> None:
    assert mem_available(RECORDED) == RECORDED_AVAILABLE


@pytest.mark.parametrize(
    ("available_kib", "lines", "words"),
    [
        (None, {}, "no MemAvailable line"),
        (1, {"MemAvailable": "MemAvailable:   lots kB"}, "is not '<number> kB'"),
        (1, {"MemAvailable": "MemAvailable:   1024 MB"}, "is not '<number> kB'"),
    ],
)
def test_a_meminfo_without_a_usable_mem_available_is_named(
    tmp_path: Path, available_kib: int | None, lines: dict[str, str], words: str
) -> None:
    path = meminfo(tmp_path, available_kib, **lines)
    with pytest.raises(MeminfoError, match=words) as err:
        mem_available(path)
    assert str(path) in str(err.value)


def test_an_unreadable_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeminfoError, match=f"{tmp_path / 'absent'}: cannot read the host's memory"):
        mem_available(tmp_path / "absent")


NEED = Need(weights=8 * GIB, kv=32 * GIB, overhead=6 * GIB, reserve=8 * GIB)  # 54 GiB


def test_exactly_enough_starts_and_one_byte_short_is_refused_naming_every_figure() -> None:
    assert NEED.total == 54 * GIB
    assert verdict(NEED, 54 * GIB, "stella") is None
    assert verdict(NEED, 100 * GIB, "stella") is None
    refusal = verdict(NEED, 54 * GIB - 1, "stella")
    assert refusal is not None
    assert (
        "needed: weights 8.00 GiB + KV 32.00 GiB + overhead 6.00 GiB + reserve 8.00 GiB = 54.00 GiB; "
        "available: 54.00 GiB on host stella" in refusal
    )


def test_the_reserve_counts_the_same_as_the_plan() -> None:
    """A host with room for the engine but not for the reserve is refused: the reserve is part of the need."""
    engine = NEED.weights + NEED.kv + NEED.overhead
    refusal = verdict(NEED, engine + NEED.reserve // 2, "nova")
    assert refusal is not None and "reserve 8.00 GiB" in refusal and "short by 4.00 GiB" in refusal
    assert verdict(Need(NEED.weights, NEED.kv, NEED.overhead, 0), engine, "nova") is None


# --- the figures the stacks render ---------------------------------------------------------------------------


def _headroom(command: list[str]) -> tuple[dict[str, str], list[str]]:
    """The wrapper's flags (flag -> value) and the command after `--`, from a rendered argv."""
    assert command[:3] == ["python3", "-m", "runtime.headroom"], command[:12]
    end = command.index("--")
    flags = dict(zip(command[3:end:2], command[4:end:2], strict=True))
    return flags, command[end + 1 :]


def _services(plan: Plan, host: str) -> dict[str, dict]:
    services: dict[str, dict] = yaml.safe_load(plan.files[f"{host}/docker-compose.yml"])["services"]
    return services


@pytest.mark.parametrize(
    ("stack", "servers", "weights_bytes", "reserve_gib"),
    [
        # Qwen/Qwen3-4B from the bundled catalog; the stack's default reserve (memoryReserveGib 12)
        ("stella", {"stella": ["vllm-stella"], "nova": ["vllm-nova"]}, None, 12),
        # the tiny Llama (infra/local/tiny-llama-config.json), twice a host; Pulumi.local.yaml's reserve of 1 GiB
        (
            "local",
            {"stella": ["vllm-stella", "vllm-stella-8001"], "nova": ["vllm-nova", "vllm-nova-8001"]},
            2824192,
            1,
        ),
    ],
)
def test_every_vllm_server_starts_behind_the_check_with_its_plans_figures(
    stack: str, servers: dict[str, list[str]], weights_bytes: int | None, reserve_gib: int
) -> None:
    plan = stack_plan(stack)
    expected_weights = weights_bytes or load_model_shape(catalog_config("Qwen/Qwen3-4B")).weights_bytes  # type: ignore[arg-type]
    for host, names in servers.items():
        services = _services(plan, host)
        for name in names:
            flags, command = _headroom([str(c) for c in services[name]["command"]])
            assert command[:3] == ["python3", "-m", SERVER], name
            engine = dict(itertools.pairwise(command))
            assert flags == {
                "--host-name": host,
                "--weights-bytes": str(expected_weights),
                "--kv-bytes": engine["--kv-cache-memory-bytes"],  # the KV cache the engine is told to allocate
                "--overhead-bytes": str(GB10_OVERHEAD),
                "--reserve-bytes": str(reserve_gib * GIB),
            }, name


def test_the_reserve_is_the_stacks_key() -> None:
    plan = build_plan("stella", overrides={"memoryReserveGib": "12.5"})
    flags, _ = _headroom([str(c) for c in _services(plan, "nova")["vllm-nova"]["command"]])
    assert flags["--reserve-bytes"] == str(round(12.5 * GIB))


def test_the_offline_engine_is_checked_for_the_largest_offered_model() -> None:
    llama = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama-8b"}
    # One sequence each: KV is the target's (not the whole budget), so Llama 8B's weights make it the larger need.
    plan = build_plan("stella", overrides={**OFFLINE_APART, "models": json.dumps([llama]), "maxNumSeqs": "1"})
    worker = _services(plan, "batchbox")["batch-worker"]
    flags, command = _headroom([str(c) for c in worker["command"]])
    assert command == ["python3", "-m", "runtime.batch.worker"]
    per_model = json.loads(worker["environment"]["BATCH_MODEL_VLLM_ARGS"])
    needs = {
        name: load_model_shape(catalog_config(path)).weights_bytes + per_model[name]["kv_cache_memory_bytes"]  # type: ignore[arg-type]
        for name, path in (("Qwen/Qwen3-4B", "Qwen/Qwen3-4B"), ("llama-8b", llama["model"]))
    }
    largest = max(needs, key=lambda name: needs[name])
    assert largest == "llama-8b", needs
    assert int(flags["--weights-bytes"]) + int(flags["--kv-bytes"]) == needs[largest]
    assert flags["--host-name"] == "batchbox"
    assert flags["--reserve-bytes"] == str(12 * GIB) and flags["--overhead-bytes"] == str(GB10_OVERHEAD)


def test_the_http_batch_worker_and_a_discrete_gpu_get_no_check() -> None:
    """The http worker loads no model; on a discrete GPU weights and KV are not the host's memory."""
    stella = stack_plan("stella")
    assert _services(stella, "stella")["batch-worker"]["command"] == ["python3", "-m", "runtime.batch.worker"]
    h100 = load_with(hostProfile="h100")
    kv_plan = size_vllm(h100, ROOT)
    assert headroom_need(h100, kv_plan, engine_args(h100, kv_plan)) is None
    assert with_headroom(("python3", "-m", SERVER), None, "box") == ("python3", "-m", SERVER)


def test_the_kubernetes_deployment_carries_the_check() -> None:
    plan = stack_plan("edge")
    doc = yaml.safe_load(plan.files["k8s/deployment-vllm-gb10.yaml"])
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    flags, command = _headroom([str(c) for c in [*(container.get("command") or []), *container["args"]]])
    assert SERVER in command and flags["--kv-bytes"] == dict(itertools.pairwise(command))["--kv-cache-memory-bytes"]


# --- the wrapper as a real process ---------------------------------------------------------------------------


def run_wrapper(source: Path, need: Need, *command: str) -> subprocess.CompletedProcess[str]:
    figures = ("weights", need.weights), ("kv", need.kv), ("overhead", need.overhead), ("reserve", need.reserve)
    flags = [w for name, value in figures for w in (f"--{name}-bytes", str(value))]
    return subprocess.run(
        [sys.executable, "-m", "runtime.headroom", "--host-name", "testbox", *flags, "--", *command],
        cwd=ROOT,
        env={**os.environ, MEMINFO_ENV: str(source)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_wrapper_refuses_with_exit_75_naming_the_numbers_and_never_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = meminfo(tmp_path, 20 * 1024**2)  # 20 GiB available
    need = Need(weights=8 * GIB, kv=4 * GIB, overhead=6 * GIB, reserve=3 * GIB)  # 21 GiB
    done = run_wrapper(source, need, sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert done.returncode == REFUSED, done.stderr
    assert (
        "needed: weights 8.00 GiB + KV 4.00 GiB + overhead 6.00 GiB + reserve 3.00 GiB = 21.00 GiB; "
        "available: 20.00 GiB on host testbox" in done.stderr
    )
    assert not marker.exists(), "the command ran although the check refused"


def test_the_wrapper_becomes_the_command_when_memory_suffices(tmp_path: Path) -> None:
    """Same PID (exec, not a child), the command's own output and exit code."""
    source = meminfo(tmp_path, 22 * 1024**2)
    need = Need(weights=8 * GIB, kv=4 * GIB, overhead=6 * GIB, reserve=3 * GIB)
    script = "import os, sys; print(os.getpid(), os.getppid()); sys.exit(7)"
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "runtime.headroom", "--host-name", "testbox",
         *(w for name, v in (("weights", need.weights), ("kv", need.kv), ("overhead", need.overhead),
                             ("reserve", need.reserve)) for w in (f"--{name}-bytes", str(v))),
         "--", sys.executable, "-c", script],
        cwd=ROOT, env={**os.environ, MEMINFO_ENV: str(source)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 7, err
    assert out.split() == [str(wrapper.pid), str(os.getpid())], "the command is the wrapper's process, not a child"
    assert "headroom: ok: needed weights 8.00 GiB" in err and "available 22.00 GiB on host testbox" in err


def test_the_wrapper_names_a_bad_source_and_a_missing_command(tmp_path: Path) -> None:
    need = Need(1, 1, 1, 1)
    absent = run_wrapper(tmp_path / "absent", need, "true")
    assert absent.returncode == REFUSED and f"{tmp_path / 'absent'}: cannot read" in absent.stderr
    nothing = run_wrapper(RECORDED, need)
    assert nothing.returncode == 2 and "no command to start" in nothing.stderr
