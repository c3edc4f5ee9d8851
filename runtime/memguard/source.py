"""Reading the host: MemAvailable from `<root>/meminfo` and PSI from `<root>/pressure/memory`.

`root` is the host's /proc mounted read-only into the guard (`/host/proc`); tests point it at a
directory of recorded files they rewrite. A kernel without PSI (built without CONFIG_PSI, or booted
with psi=0) has no pressure file or refuses to read it: the guard then works on MemAvailable alone
and says so (`psi` False). A file that is there but unreadable as expected is an error naming it.
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
