"""Reading the host: MemAvailable from `<root>/meminfo` and PSI from `<root>/pressure/memory`.

`root` is the host's /proc mounted read-only into the guard (`/host/proc`); tests point it at a
directory of recorded files they rewrite. A kernel without PSI (built without CONFIG_PSI, or booted
with psi=0) has no pressure file or refuses to read it: the guard then works on MemAvailable alone
and says so (`psi` False). A file that is there but unreadable as expected is an error naming it.

`read_cgroup` reads one cgroup instead of the host (MEMGUARD_CGROUP): a guard inside a container of
its own, or watching one, sees that cgroup's memory. Available is the limit less the working set
(usage less inactive file pages, which reclaim takes first: the kubelet's working-set figure), as
MemAvailable counts reclaimable cache as available. cgroup v2: memory.max, memory.current,
memory.stat `inactive_file`, and PSI from memory.pressure (the format of /proc/pressure/memory).
cgroup v1 (the memory controller's directory): memory.limit_in_bytes, memory.usage_in_bytes,
memory.stat `total_inactive_file`, and no PSI (v1 has none per cgroup).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

from runtime.memguard.decide import Sample

_MEM_AVAILABLE = re.compile(r"^MemAvailable:\s+(\d+)\s+kB\s*$", re.M)
_PSI_LINE = re.compile(r"^(some|full)\s+avg10=(\d+(?:\.\d+)?)\s", re.M)


class SourceError(ValueError):
    """A host file is missing or not in the kernel's format; the message names the file."""


@dataclass(frozen=True)
class Reading:
    sample: Sample
    psi: bool  # False: the kernel reports no PSI, the sample's PSI figures are 0


def parse_meminfo(text: str, where: str) -> int:
    """MemAvailable in bytes."""
    match = _MEM_AVAILABLE.search(text)
    if match is None:
        raise SourceError(f"{where}: no 'MemAvailable: <n> kB' line (kernel 3.14 or later reports it)")
    return int(match.group(1)) * 1024


def parse_pressure(text: str, where: str) -> tuple[float, float]:
    """(some avg10, full avg10) in percent."""
    found = {kind: float(value) for kind, value in _PSI_LINE.findall(text)}
    if "some" not in found:
        raise SourceError(f"{where}: no 'some avg10=<n>' line (expected the kernel's PSI format)")
    return found["some"], found.get("full", 0.0)  # kernels before 5.x's full line for memory: some only


def read(root: Path) -> Reading:
    meminfo = root / "meminfo"
    try:
        available = parse_meminfo(meminfo.read_text(), str(meminfo))
    except OSError as exc:
        raise SourceError(f"{meminfo}: cannot read ({exc.strerror or exc})") from exc
    pressure = root / "pressure" / "memory"
    try:
        text = pressure.read_text()
    except FileNotFoundError:
        return Reading(Sample(available, 0.0, 0.0), psi=False)
    except OSError as exc:  # EOPNOTSUPP: PSI compiled in but disabled (psi=0)
        if exc.errno == errno.EOPNOTSUPP:
            return Reading(Sample(available, 0.0, 0.0), psi=False)
        raise SourceError(f"{pressure}: cannot read ({exc.strerror or exc})") from exc
    some, full = parse_pressure(text, str(pressure))
    return Reading(Sample(available, some, full), psi=True)


_V1_UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-rounded number (PAGE_COUNTER_MAX pages)


def _cgroup_int(path: Path) -> int | None:
    """An integer file of a cgroup; None for v2's "max" (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if text == "max":
        return None
    if not text.isdigit():
        raise SourceError(f"{path}: {text[:40]!r} is not a byte count")
    return int(text)


def _stat_field(path: Path, name: str) -> int:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    match = re.search(rf"^{name} (\d+)$", text, re.M)
    if match is None:
        raise SourceError(f"{path}: no '{name} <n>' line")
    return int(match.group(1))


def read_cgroup(cgroup: Path) -> Reading:
    """One cgroup's available memory (its limit less its working set) and, on v2, its PSI."""
    v2 = (cgroup / "memory.max").exists()
    if not v2 and not (cgroup / "memory.limit_in_bytes").exists():
        raise SourceError(
            f"{cgroup}: neither memory.max (cgroup v2) nor memory.limit_in_bytes (v1): not a memory cgroup"
        )
    limit = _cgroup_int(cgroup / ("memory.max" if v2 else "memory.limit_in_bytes"))
    if limit is None or limit >= _V1_UNLIMITED:
        raise SourceError(f"{cgroup}: no memory limit, so nothing tells what is available in it (watch /proc instead)")
    usage = _cgroup_int(cgroup / ("memory.current" if v2 else "memory.usage_in_bytes")) or 0
    inactive = _stat_field(cgroup / "memory.stat", "inactive_file" if v2 else "total_inactive_file")
    available = max(0, limit - max(0, usage - inactive))
    if not v2:
        return Reading(Sample(available, 0.0, 0.0), psi=False)
    pressure = cgroup / "memory.pressure"
    try:
        text = pressure.read_text()
    except FileNotFoundError:
        return Reading(Sample(available, 0.0, 0.0), psi=False)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return Reading(Sample(available, 0.0, 0.0), psi=False)
        raise SourceError(f"{pressure}: cannot read ({exc.strerror or exc})") from exc
    some, full = parse_pressure(text, str(pressure))
    return Reading(Sample(available, some, full), psi=True)
