"""runtime.ray_node: `ray start` again when a loaded host makes it miss Ray's fixed 30 s registration.

A stand-in `ray` on disk plays `ray start` (it fails its first tries as Ray does on a slow host, then
comes up); the real `ray start` runs through the same wrapper in the offload tests' Ray head and the
local stack's Ray containers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtime import ray_node

TIMED_OUT = "Exception: The current node timed out during startup. This could happen because some of the raylet"


def stand_in_ray(tmp_path: Path, *, failures: int, after_start_exit: int = 0) -> tuple[Path, Path]:
    """A `ray` that fails `start` `failures` times, then prints the started line and exits; it records calls."""
    calls = tmp_path / "calls"
    ray = tmp_path / "ray"
    ray.write_text(
        f"""#!{sys.executable}
import sys
from pathlib import Path
calls = Path({str(calls)!r})
done = calls.read_text().splitlines() if calls.exists() else []
calls.write_text("".join(line + "\\n" for line in [*done, " ".join(sys.argv[1:])]))
if sys.argv[1] == "stop":
    sys.exit(0)
tries = sum(1 for line in done if line.startswith("start"))
if tries < {failures}:
    print({TIMED_OUT!r}, flush=True)
    sys.exit(1)
print("Ray runtime started.", flush=True)
sys.exit({after_start_exit})
"""
    )
    ray.chmod(0o755)
    return ray, calls


def test_a_start_that_times_out_is_stopped_and_tried_again_until_the_node_is_up(tmp_path: Path) -> None:
    ray, calls = stand_in_ray(tmp_path, failures=2)
    pauses: list[float] = []
    code = ray_node.start([str(ray), "start", "--block", "--address=10.0.0.1:6380"], pause=pauses.append)
    assert code == 0
    assert calls.read_text().splitlines() == [
        "start --block --address=10.0.0.1:6380",
        "stop --force",
        "start --block --address=10.0.0.1:6380",
        "stop --force",
        "start --block --address=10.0.0.1:6380",
    ]
    assert pauses == [ray_node.FIRST_PAUSE_S, ray_node.FIRST_PAUSE_S * 2]  # growing pauses


def test_a_node_that_came_up_and_then_ended_is_not_started_again(tmp_path: Path) -> None:
    """Its end is the node's end, for the container's restart policy to see, not a slow start."""
    ray, calls = stand_in_ray(tmp_path, failures=0, after_start_exit=3)
    assert ray_node.start([str(ray), "start", "--block"], pause=lambda _: None) == 3
    assert calls.read_text().splitlines() == ["start --block"]


def test_past_the_deadline_it_gives_up_with_ray_start_s_exit_code(tmp_path: Path) -> None:
    ray, calls = stand_in_ray(tmp_path, failures=100)
    assert ray_node.start([str(ray), "start"], deadline_s=0, pause=lambda _: None) == 1
    assert calls.read_text().splitlines() == ["start"]


def test_the_command_line_must_be_ray_start_so_what_reads_it_still_sees_a_ray_node(tmp_path: Path) -> None:
    for wrong in (["start", "--head"], ["python", "start"], ["ray", "stop"], []):
        done = subprocess.run(
            [sys.executable, "-m", "runtime.ray_node", *wrong], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and "usage: python -m runtime.ray_node ray start" in done.stderr, wrong
    ray, _ = stand_in_ray(tmp_path, failures=0)
    done = subprocess.run(
        [sys.executable, "-m", "runtime.ray_node", str(ray), "start", "--head"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"RAY_NODE_START_DEADLINE_S": "soon", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and "RAY_NODE_START_DEADLINE_S='soon' is not a number of seconds" in done.stderr
