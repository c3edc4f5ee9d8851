"""Start-time headroom check: refuse to start a vLLM engine the host has no memory for (issue 31 item 2).

On a GB10 running out of unified memory freezes the whole box (no OOM kill; cgroup limits do not count
CUDA allocations there), so the plan-time arithmetic of the KV policy is not enough: page cache, other
processes or a previous engine that has not let go are invisible to it. Before the engine starts, this
reads the host's `MemAvailable` (the compose up script has just dropped the page cache) and compares it
with what the plan says the engine needs: weights + KV cache + vLLM's overhead + a reserve for the rest
of the box. Short of it, it exits 75 (EX_TEMPFAIL) naming every figure; otherwise it `exec`s the command,
which then runs as this very process (PID 1 of its container, signals and exit code its own).

    python -m runtime.headroom --host-name stella --weights-bytes N --kv-bytes N --overhead-bytes N \\
        --reserve-bytes N -- python3 -m vllm.entrypoints.openai.api_server ...

`$HEADROOM_MEMINFO` replaces /proc/meminfo as the memory source (tests only: a recorded meminfo file).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
MEMINFO_ENV = "HEADROOM_MEMINFO"  # test-only memory source
REFUSED = 75  # EX_TEMPFAIL: the host may have the memory later; nothing is wrong with the command
GIB = 1024**3


class MeminfoError(ValueError):
    """The memory source cannot be read or has no MemAvailable line; the message names the file."""


@dataclass(frozen=True)
class Need:
    """What an engine needs available on its host before it starts, in bytes."""

    weights: int
    kv: int
    overhead: int
    reserve: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead + self.reserve

    def describe(self) -> str:
        parts = (("weights", self.weights), ("KV", self.kv), ("overhead", self.overhead), ("reserve", self.reserve))
        return " + ".join(f"{name} {gib(value)}" for name, value in parts) + f" = {gib(self.total)}"


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def mem_available(path: Path) -> int:
    """MemAvailable of a meminfo file, in bytes (the kernel writes kB: KiB)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise MeminfoError(f"{path}: cannot read the host's memory: {err.strerror or err}") from None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemAvailable":
            fields = rest.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1] == "kB":
                return int(fields[0]) * 1024
            raise MeminfoError(f"{path}: MemAvailable line {line.strip()!r} is not '<number> kB'")
    raise MeminfoError(f"{path}: no MemAvailable line (Linux 3.14 or later writes one)")


def verdict(need: Need, available: int, host: str) -> str | None:
    """None when `available` covers `need`; else the refusal, every figure named."""
    if available >= need.total:
        return None
    return (
        f"headroom: refusing to start: needed: {need.describe()}; available: {gib(available)} on host {host} "
        f"(MemAvailable, short by {gib(need.total - available)}). Starting anyway could exhaust unified memory "
        "and freeze the box: free memory on the host (stop what else runs there) and start again, or lower "
        "what the plan gives vLLM (maxNumSeqs, maxModelLen, a smaller model) or the reserve (memoryReserveGib)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.headroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-name", default="", help="the host's name in the message (default: this hostname)")
    for name in ("weights", "kv", "overhead", "reserve"):
        parser.add_argument(f"--{name}-bytes", type=_bytes, required=True, metavar="N")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to exec")
    return parser


def _bytes(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of bytes")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to start: give it after --")
    need = Need(args.weights_bytes, args.kv_bytes, args.overhead_bytes, args.reserve_bytes)
    host = args.host_name or socket.gethostname()
    try:
        available = mem_available(Path(os.environ.get(MEMINFO_ENV) or MEMINFO))
    except MeminfoError as err:
        print(f"headroom: refusing to start: {err}", file=sys.stderr, flush=True)
        return REFUSED
    refusal = verdict(need, available, host)
    if refusal is not None:
        print(refusal, file=sys.stderr, flush=True)
        return REFUSED
    print(
        f"headroom: ok: needed {need.describe()}; available {gib(available)} on host {host}",
        file=sys.stderr,
        flush=True,
    )
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"headroom: cannot start {command[0]!r}: {err.strerror or err}", file=sys.stderr, flush=True)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
