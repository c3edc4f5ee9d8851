"""`python -m runtime.ray_node ray start [ARGS]`: the `ray start` command that follows, waiting out a slow start-up.

`ray start` gives the node's raylet a fixed 30 s to register with the GCS (`raylet_start_wait_time_s = 30`
in ray/_private/node.py, Ray 2.60; no setting changes it) and a worker gives up when the head's GCS does
not answer in time. On a loaded host (a GB10 loading weights, two cores in CI) either happens, the
container exits during start-up, and compose's `up --wait` fails the whole apply (DESIGN.md), restart
policy or not. This runs `ray start` again, after `ray stop --force` clears what the failed try left,
with a growing pause, until `RAY_NODE_START_DEADLINE_S` (default 600 s) has passed. Only failures before
the node is up are retried: once `ray start` has printed that the runtime started, its exit is the node's
end and becomes this process's exit, for the restart policy to see.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

STARTED_MARKER = "Ray runtime started."  # what `ray start` prints once the node has registered
DEADLINE_ENV = "RAY_NODE_START_DEADLINE_S"
DEFAULT_DEADLINE_S = 600.0
FIRST_PAUSE_S, MAX_PAUSE_S = 2.0, 30.0


def _log(message: str) -> None:
    print(f"ray_node: {message}", file=sys.stderr, flush=True)


def run_once(command: Sequence[str]) -> tuple[int, bool]:
    """Run the `ray start` command with its output passed through; (exit code, whether the node came up)."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def forward(signum: int, _frame: FrameType | None) -> None:
        process.send_signal(signum)  # `docker stop` reaches the node, which stops cleanly

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = False
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            started = started or STARTED_MARKER in line
        return process.wait(), started
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start(
    command: Sequence[str], *, deadline_s: float = DEFAULT_DEADLINE_S, pause: Callable[[float], None] = time.sleep
) -> int:
    """`ray start …` (`command`), tried again while it fails before the node is up and the deadline allows."""
    give_up_at = time.monotonic() + deadline_s
    wait, attempt = FIRST_PAUSE_S, 1
    while True:
        code, started = run_once(command)
        if code == 0 or started:
            return code
        if time.monotonic() + wait > give_up_at:
            _log(f"`ray start` failed {attempt} time(s) before the node came up (exit {code}); giving up")
            return code
        _log(f"`ray start` failed before the node came up (exit {code}, try {attempt}); again in {wait:.0f} s")
        stop = [command[0], "stop", "--force"]
        subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        pause(wait)
        wait, attempt = min(wait * 2, MAX_PAUSE_S), attempt + 1


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    # The command stays `ray start …` as written, so what reads command lines (the policy pack) still sees it.
    if len(command) < 2 or os.path.basename(command[0]) != "ray" or command[1] != "start":
        print("usage: python -m runtime.ray_node ray start [ray start arguments]", file=sys.stderr)
        return 2
    raw = os.environ.get(DEADLINE_ENV, "")
    try:
        deadline = float(raw) if raw else DEFAULT_DEADLINE_S
    except ValueError:
        print(f"{DEADLINE_ENV}={raw!r} is not a number of seconds", file=sys.stderr)
        return 2
    return start(command, deadline_s=deadline)


if __name__ == "__main__":
    sys.exit(main())
